"""One cooperative iteration: loss terms, STN-to-FTN gradient, BN handling of the hard terms, and learning."""

from __future__ import annotations

import pytest
import torch

from scripts.engine.cooperative import add_input_noise, generate_hard_examples, hard_terms, standard_terms
from scripts.engine.trainer import HARD_TERMS, STANDARD_TERMS, PairedSlicePrepareBatch
from scripts.model.masking import LatentMasker
from scripts.model.networks import CoopSegNet


def _batch(n: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    label = torch.zeros(n, size, size, dtype=torch.long)
    c = size // 2
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((yy - c) ** 2 + (xx - c) ** 2).float().sqrt()
    label[:, r < 6] = 1
    label[:, (r >= 6) & (r < 9)] = 2
    label[:, (r >= 9) & (r < 12) & (xx < c)] = 3
    image = (torch.tensor([0.1, 0.9, 0.35, 0.8])[label] + 0.05 * torch.randn(n, size, size, generator=g)).clamp(0, 1)
    return image[:, None], label


def _ftn_grad_norm(net: CoopSegNet, loss: torch.Tensor) -> float:
    ftn_params = [p for m in (net.image_encoder, net.segmentation_decoder) for p in m.parameters()]
    grads = torch.autograd.grad(loss, ftn_params, allow_unused=True, retain_graph=True)
    return sum(float(g.abs().sum()) for g in grads if g is not None)


@pytest.mark.parametrize("separate", [False, True])
def test_stn_to_ftn_gradient(separate: bool) -> None:
    torch.manual_seed(0)
    net = CoopSegNet(width=4).train()
    image, label = _batch()
    std = standard_terms(net, image, image, label, separate_training=separate)
    assert set(std.losses) == set(STANDARD_TERMS)
    shape_grad = _ftn_grad_norm(net, std.losses["shape"])
    assert (shape_grad == 0) == separate
    # the GT-shape term never reaches the FTN; the segmentation term always does
    assert _ftn_grad_norm(net, std.losses["gt_shape"]) == 0
    assert _ftn_grad_norm(net, std.losses["seg"]) > 0


def test_hard_terms_reference_bn_semantics() -> None:
    torch.manual_seed(0)
    net = CoopSegNet(width=4).train()
    image, label = _batch()
    std = standard_terms(net, add_input_noise(image), image, label)
    hard = generate_hard_examples(net, std.z_image, std.z_shape, image, label, LatentMasker(), LatentMasker())
    assert hard.hard_image.shape == image.shape and not hard.hard_image.requires_grad
    assert hard.hard_seg_logits.shape == (4, 4, 32, 32) and not hard.hard_seg_logits.requires_grad
    assert 0 < hard.hard_image.min() and hard.hard_image.max() < 1
    running = {k: v.clone() for k, v in net.state_dict().items() if "running_mean" in k}
    losses = hard_terms(net, hard, image, label, reference_bn=True)
    assert set(losses) == set(HARD_TERMS)
    total = sum(losses.values())
    total.backward()
    for name in ("image_encoder", "segmentation_decoder", "shape_encoder", "shape_decoder"):
        part = getattr(net, name)
        for m in part.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                assert m.weight.grad is None and m.weight.requires_grad, f"{name} BN affine trained by hard terms"
            if isinstance(m, torch.nn.Conv2d):
                assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0
    image_decoder_bn = [m for m in net.image_decoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.weight.grad is not None for m in image_decoder_bn)
    state = net.state_dict()
    for k, v in running.items():
        assert torch.equal(v, state[k]) != k.startswith("image_decoder"), k


def test_hard_terms_uniform_bn_when_not_reference() -> None:
    torch.manual_seed(0)
    net = CoopSegNet(width=4).train()
    image, label = _batch()
    std = standard_terms(net, image, image, label)
    hard = generate_hard_examples(net, std.z_image, std.z_shape, image, label, LatentMasker(), LatentMasker())
    running = {k: v.clone() for k, v in net.state_dict().items() if "running_mean" in k}
    sum(hard_terms(net, hard, image, label, reference_bn=False).values()).backward()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert sum(m.weight.grad is not None for m in bns) > 0.9 * len(bns)  # H's last BN feeds only z_shape paths too
    state = net.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in running.items())


def test_prepare_batch_appends_original_pair() -> None:
    batch = {
        "image": torch.rand(2, 1, 8, 8), "label": torch.randint(0, 4, (2, 1, 8, 8)).float(),
        "image_orig": torch.rand(2, 1, 8, 8), "label_orig": torch.randint(0, 4, (2, 1, 8, 8)).float(),
    }
    image, label = PairedSlicePrepareBatch(True)(batch, "cpu")
    assert image.shape == (4, 1, 8, 8) and label.shape == (4, 8, 8) and label.dtype == torch.long
    torch.testing.assert_close(image[2:], batch["image_orig"])
    torch.testing.assert_close(label[:2], batch["label"][:, 0].long())
    image, label = PairedSlicePrepareBatch(False)(batch, "cpu")
    assert image.shape == (2, 1, 8, 8)


@pytest.mark.parametrize("latent_da", [True, False])
def test_a_few_iterations_lower_the_loss(latent_da: bool) -> None:
    torch.manual_seed(0)
    net = CoopSegNet(width=4).train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    image, label = _batch(n=4, size=32)
    masker = LatentMasker()

    def objective() -> torch.Tensor:
        std = standard_terms(net, add_input_noise(image), image, label)
        losses = dict(std.losses)
        if latent_da:
            hard = generate_hard_examples(net, std.z_image, std.z_shape, image, label, masker, masker)
            losses.update(hard_terms(net, hard, image, label))
        return sum(losses.values())

    history = []
    for _ in range(25):
        opt.zero_grad()
        loss = objective()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    assert sum(history[-5:]) / 5 < 0.7 * sum(history[:5]) / 5


@pytest.mark.parametrize(("image_scheme", "shape_scheme"), [("channel", "spatial"), ("spatial", "channel"),
                                                            ("dropout", "dropout")])  # fmt: skip
def test_trainer_iteration_gradient_equals_one_summed_backward(image_scheme: str, shape_scheme: str) -> None:
    """The trainer back-propagates the standard and hard parts separately and takes the targeted masks' gradients
    from the standard pass; the gradient must be the summed one of the plain computation, in which each mask gets
    its gradient from its own decoder pass (so the masks, and the hard examples, are the same)."""
    from scripts.engine.trainer import CooperativeTrainer

    torch.manual_seed(0)
    net = CoopSegNet(width=4)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    image_masker, shape_masker = LatentMasker(schemes=[image_scheme]), LatentMasker(schemes=[shape_scheme])
    trainer = CooperativeTrainer(
        device="cpu", max_epochs=1, train_data_loader=[], network=net, optimizer=optimizer, image_masker=image_masker,
        shape_masker=shape_masker, prepare_batch=PairedSlicePrepareBatch(False), epoch_length=1, decollate=False,
    )
    image, label = _batch()
    torch.manual_seed(1)
    output = trainer._iteration(trainer, {"image": image, "label": label[:, None].float()})
    split = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    net.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    schemes = image_masker.draw_scheme(), shape_masker.draw_scheme()
    std = standard_terms(net, add_input_noise(image), image, label)
    hard = generate_hard_examples(net, std.z_image, std.z_shape, image, label, image_masker, shape_masker, *schemes)
    torch.testing.assert_close(hard.hard_image, output["hard_image"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hard.hard_seg_logits, output["hard_seg_logits"], rtol=1e-5, atol=1e-5)
    losses = {**std.losses, **hard_terms(net, hard, image, label)}
    sum(losses.values()).backward()
    summed = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert split.keys() == summed.keys()
    for name, grad in summed.items():
        torch.testing.assert_close(split[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    expected_loss = float(sum(v.detach() for v in losses.values()))
    assert float(output["loss"]) == pytest.approx(expected_loss, rel=1e-5, abs=1e-6)
    assert set(output) >= set(STANDARD_TERMS) | set(HARD_TERMS) | {"hard_image", "hard_seg_logits"}


def test_channels_last_iteration_matches_contiguous() -> None:
    """``channels_last=True`` converts the weights to NHWC and computes the contiguous run's losses and gradients.

    Compared in float64: this small network's float32 gradients carry about 1 % rounding error in either layout (both
    are that far from the float64 result), which would hide a real layout bug below a loose tolerance.
    """
    import copy

    from scripts.engine.trainer import CooperativeTrainer

    def double_batch(batch: dict, device: object = None, non_blocking: bool = False, **kwargs: object) -> tuple:
        return batch["image"].double(), batch["label"][:, 0].long()

    torch.manual_seed(0)
    nets = {"contiguous": CoopSegNet(width=4).double(), "channels_last": None}
    nets["channels_last"] = copy.deepcopy(nets["contiguous"])
    image, label = _batch()
    outputs, grads = {}, {}
    for layout, net in nets.items():
        # targeted masks on both codes: the ranking of the latent gradient must agree too
        image_masker, shape_masker = LatentMasker(schemes=["channel"]), LatentMasker(schemes=["spatial"])
        trainer = CooperativeTrainer(
            device="cpu", max_epochs=1, train_data_loader=[], network=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.0), image_masker=image_masker, shape_masker=shape_masker,
            prepare_batch=double_batch, epoch_length=1, channels_last=layout == "channels_last", decollate=False,
        )  # fmt: skip
        torch.manual_seed(1)
        outputs[layout] = trainer._iteration(trainer, {"image": image, "label": label[:, None].float()})
        grads[layout] = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    conv = next(m for m in nets["channels_last"].modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    for term in STANDARD_TERMS + HARD_TERMS + ("hard_image", "hard_seg_logits"):
        torch.testing.assert_close(outputs["channels_last"][term], outputs["contiguous"][term], rtol=1e-9, atol=1e-9)
    assert grads["channels_last"].keys() == grads["contiguous"].keys()
    for name, grad in grads["contiguous"].items():
        torch.testing.assert_close(grads["channels_last"][name], grad, rtol=1e-7, atol=1e-9, msg=name)

