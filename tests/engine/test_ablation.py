"""The switches of the STN's hard-example learning (an ablation; the reference behaviour is the default): hard terms
left out of the objective, and an STN trained on the standard terms only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from conftest import BUNDLE_ROOT
from scripts.engine.cooperative import add_input_noise, generate_hard_examples, hard_terms, standard_terms
from scripts.engine.trainer import HARD_TERMS, STANDARD_TERMS, CooperativeTrainer, PairedSlicePrepareBatch
from scripts.model.masking import LatentMasker
from scripts.model.networks import CoopSegNet


def batch(n: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``n, 1, size, size`` of an LV, myocardium and RV disc, and their labels ``n, size, size``."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((yy - size // 2) ** 2 + (xx - size // 2) ** 2).float().sqrt()
    label = torch.zeros(n, size, size, dtype=torch.long)
    label[:, r < 6], label[:, (r >= 6) & (r < 9)] = 1, 2
    label[:, (r >= 9) & (r < 12) & (xx < size // 2)] = 3
    image = (torch.tensor([0.1, 0.9, 0.35, 0.8])[label] + 0.05 * torch.randn(n, size, size, generator=g)).clamp(0, 1)
    return image[:, None], label


def _hard(net: CoopSegNet) -> tuple:
    image, label = batch()
    std = standard_terms(net, add_input_noise(image), image, label)
    masker = LatentMasker(schemes=["dropout"])
    return generate_hard_examples(net, std.z_image, std.z_shape, image, label, masker, masker), image, label


def _grads(net: CoopSegNet, loss: torch.Tensor) -> dict[str, torch.Tensor | None]:
    params = dict(net.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True, retain_graph=True)
    return dict(zip(params, grads, strict=True))


def test_an_stn_trained_on_standard_terms_only_still_passes_hard_shape_to_the_ftn() -> None:
    torch.manual_seed(0)
    net = CoopSegNet(width=4).train()
    hard, image, label = _hard(net)
    reference = hard_terms(net, hard, image, label)
    frozen = hard_terms(net, hard, image, label, train_stn=False)
    for term in HARD_TERMS:
        torch.testing.assert_close(frozen[term], reference[term])  # the same values
    assert not frozen["hard_corrupted_shape"].requires_grad  # the STN alone on a detached input: nothing to train
    with_stn, without = _grads(net, reference["hard_shape"]), _grads(net, frozen["hard_shape"])
    stn = [n for n in without if n.startswith(("shape_encoder", "shape_decoder"))]
    assert all(without[n] is None for n in stn) and any(with_stn[n] is not None for n in stn)
    for name in set(without) - set(stn):  # the FTN's gradient through the STN is unchanged
        assert (without[name] is None) == (with_stn[name] is None), name
        if without[name] is not None:
            torch.testing.assert_close(without[name], with_stn[name], msg=name)
    assert any(g is not None and g.abs().sum() > 0 for n, g in without.items() if n.startswith("image_encoder"))
    assert all(p.requires_grad for p in net.parameters())  # the flags are restored


@pytest.mark.parametrize(("terms_off", "train_stn"), [(("hard_corrupted_shape",), True), (("hard_shape",), True),
                                                      ((), False)])  # fmt: skip
def test_the_trainer_optimises_only_the_terms_left_on(terms_off: tuple[str, ...], train_stn: bool) -> None:
    """One iteration's gradient equals the summed gradient of the terms left on (with the STN frozen in the hard
    terms when it trains on the standard terms only); the terms left out are still logged, outside ``loss``."""
    torch.manual_seed(0)
    net = CoopSegNet(width=4)
    masker = LatentMasker(schemes=["channel"])
    trainer = CooperativeTrainer(
        device="cpu", max_epochs=1, train_data_loader=[], network=net, optimizer=torch.optim.SGD(net.parameters(),
        lr=0.0), image_masker=masker, shape_masker=masker, prepare_batch=PairedSlicePrepareBatch(False),
        epoch_length=1, decollate=False, hard_terms_off=terms_off, stn_hard_training=train_stn,
    )  # fmt: skip
    image, label = batch()
    torch.manual_seed(1)
    output = trainer._iteration(trainer, {"image": image, "label": label[:, None].float()})
    split = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    net.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    schemes = masker.draw_scheme(), masker.draw_scheme()
    std = standard_terms(net, add_input_noise(image), image, label)
    hard = generate_hard_examples(net, std.z_image, std.z_shape, image, label, masker, masker, *schemes)
    hard_losses = hard_terms(net, hard, image, label, train_stn=train_stn)
    kept = {**std.losses, **{k: v for k, v in hard_losses.items() if k not in terms_off}}
    sum(kept.values()).backward()
    summed = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert split.keys() == summed.keys()
    for name, grad in summed.items():
        torch.testing.assert_close(split[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert set(output) >= set(STANDARD_TERMS) | set(HARD_TERMS)  # every term logged
    assert float(output["loss"]) == pytest.approx(float(sum(v.detach() for v in kept.values())), rel=1e-5)
    with pytest.raises(ValueError, match="unknown terms"):
        CooperativeTrainer(device="cpu", max_epochs=1, train_data_loader=[], network=net, optimizer=trainer.optimizer,
                           hard_terms_off=["hard_stn"])  # fmt: skip


def test_train_json_passes_the_switches_to_the_trainer_and_keeps_the_reference_by_default(tmp_path: Path) -> None:
    def trainer(**overrides: object) -> CooperativeTrainer:
        workflow = ConfigWorkflow(
            config_file=str(BUNDLE_ROOT / "configs" / "train.json"), workflow_type="train",
            synthetic_cache_dir=str(tmp_path / "cache"), ckpt_dir=str(tmp_path / "models"),
            output_dir=str(tmp_path / "logs"), width=4, synthetic_split={"training": 1, "validation": 1, "test": 1},
            **overrides,
        )  # fmt: skip
        workflow.initialize()
        return workflow.parser.get_parsed_content("train#trainer")

    default = trainer()
    assert default.hard_terms_off == frozenset() and default.stn_hard_training
    ablated = trainer(hard_terms_off=["hard_corrupted_shape"], stn_hard_training=False)
    assert ablated.hard_terms_off == {"hard_corrupted_shape"} and not ablated.stn_hard_training
