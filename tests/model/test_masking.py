"""Semantics of the three latent masking schemes (bundle/docs/method.md section 3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scripts.model.masking import LatentMasker, channel_dropout, latent_gradient, targeted_mask
from scripts.model.networks import CoopSegNet


@pytest.fixture(scope="module")
def setup() -> dict:
    torch.manual_seed(0)
    net = CoopSegNet(width=8).train()
    image = torch.rand(3, 1, 64, 64)
    label = torch.randint(0, 4, (3, 64, 64))
    with torch.no_grad():
        z_image, z_shape = net.encode(image)
    return {"net": net, "image": image, "label": label, "z_image": z_image + 0.1, "z_shape": z_shape + 0.1}


def _bn_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


def test_targeted_channel_mask_masks_top_k_signed_mean_gradient() -> None:
    grad = torch.randn(4, 128, 6, 6)
    torch.manual_seed(1)
    mask = targeted_mask(grad, "channel", fraction=0.3, soft=True)
    assert mask.shape == (4, 128, 1, 1)
    k = int(128 * 0.3)
    scores = grad.mean(dim=(2, 3))
    for b in range(4):
        masked = (mask[b, :, 0, 0] < 1).nonzero().flatten()
        assert len(masked) == k
        assert set(masked.tolist()) == set(scores[b].topk(k).indices.tolist())
    values = mask[mask < 1]
    assert values.min() >= 0 and values.max() < 0.5 and values.unique().numel() > 1


def test_targeted_spatial_mask_and_hard_values() -> None:
    grad = torch.randn(2, 128, 12, 12)
    mask = targeted_mask(grad, "spatial", fraction=0.49, soft=False)
    assert mask.shape == (2, 1, 12, 12)
    scores = grad.mean(dim=1).flatten(1)
    k = int(144 * 0.49)
    for b in range(2):
        flat = mask[b].flatten()
        assert int((flat == 0).sum()) == k and int((flat == 1).sum()) == 144 - k
        assert set((flat == 0).nonzero().flatten().tolist()) == set(scores[b].topk(k).indices.tolist())
    # Signed, not absolute: a large negative gradient is never chosen over positive ones.
    grad = torch.zeros(1, 4, 2, 2)
    grad[0, 0] = -100.0
    grad[0, 1] = 1.0
    mask = targeted_mask(grad, "channel", fraction=0.25, soft=False)
    assert mask[0, :, 0, 0].tolist() == [1.0, 0.0, 1.0, 1.0]


def test_zero_fraction_masks_nothing() -> None:
    grad = torch.randn(2, 128, 4, 4)
    for mode in ("channel", "spatial"):
        assert torch.equal(targeted_mask(grad, mode, 0.0), torch.ones_like(targeted_mask(grad, mode, 0.0)))
    masker = LatentMasker(max_threshold=0.0)
    code = torch.rand(2, 8, 4, 4)
    decoder = torch.nn.Conv2d(8, 1, 1)
    for scheme in ("channel", "spatial"):
        masked, _ = masker(code, decoder, torch.rand(2, 1, 4, 4), F.mse_loss, scheme=scheme)
        torch.testing.assert_close(masked, code)


def test_channel_dropout_reference_rescale() -> None:
    torch.manual_seed(0)
    code = torch.rand(16, 128, 4, 4) + 0.5
    out = channel_dropout(code, p=0.5, rescale=True)
    ratio = (out / code)[:, :, 0, 0]
    kept = ratio > 0
    assert torch.allclose(ratio[kept], torch.full_like(ratio[kept], 2.0))
    assert 0.4 < kept.float().mean() < 0.6
    # whole channels are dropped
    assert torch.equal((out == 0).all(dim=(2, 3)), (out == 0).any(dim=(2, 3)))
    no_rescale = channel_dropout(code, p=0.5, rescale=False)
    ratio = (no_rescale / code)[:, :, 0, 0]
    assert set(ratio.unique().tolist()) <= {0.0, 1.0}


def test_fraction_is_drawn_below_max_threshold() -> None:
    torch.manual_seed(0)
    masker = LatentMasker(max_threshold=0.5)
    draws = [masker.draw_fraction() for _ in range(500)]
    assert min(draws) >= 0 and max(draws) < 0.5 and max(draws) > 0.4
    assert LatentMasker(random_threshold=False, max_threshold=0.3).draw_fraction() == 0.3
    schemes = [masker.draw_scheme() for _ in range(600)]
    for scheme in ("dropout", "channel", "spatial"):
        assert 150 < schemes.count(scheme) < 250


@pytest.mark.parametrize("scheme", ["dropout", "channel", "spatial"])
def test_masked_codes_are_detached_and_decoders_untouched(setup: dict, scheme: str) -> None:
    net, image = setup["net"], setup["image"]
    z_image = setup["z_image"].clone().requires_grad_(True)
    before_params = {k: v.clone() for k, v in net.image_decoder.state_dict().items()}
    flags = [p.requires_grad for p in net.image_decoder.parameters()]
    masked, used = LatentMasker()(z_image, net.image_decoder, image, F.mse_loss, scheme=scheme)
    assert used == scheme
    assert not masked.requires_grad and masked.grad_fn is None
    assert all(p.grad is None for p in net.image_decoder.parameters())
    assert [p.requires_grad for p in net.image_decoder.parameters()] == flags
    after = net.image_decoder.state_dict()
    for k, v in before_params.items():
        assert torch.equal(v, after[k]), f"{k} changed during generation"
    if scheme != "dropout":
        assert (masked <= z_image.detach() + 1e-6).all()
        assert (masked < z_image.detach()).any()


def test_bn_running_stats_untouched_by_default_and_updated_by_quirk(setup: dict) -> None:
    net, label = setup["net"], setup["label"]
    before = _bn_state(net.segmentation_decoder)
    latent_gradient(setup["z_shape"], net.segmentation_decoder, label, F.cross_entropy)
    for k, v in _bn_state(net.segmentation_decoder).items():
        assert torch.equal(v, before[k])
    latent_gradient(setup["z_shape"], net.segmentation_decoder, label, F.cross_entropy, update_bn_stats=True)
    changed = [k for k, v in _bn_state(net.segmentation_decoder).items() if not torch.equal(v, before[k])]
    assert changed


def test_gradient_matches_autograd_of_the_task_loss(setup: dict) -> None:
    net, label = setup["net"], setup["label"]
    z = setup["z_shape"]
    grad = latent_gradient(z, net.segmentation_decoder, label, F.cross_entropy)
    leaf = z.clone().requires_grad_(True)
    dec = net.segmentation_decoder
    saved = [m.track_running_stats for m in dec.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in dec.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.track_running_stats = False
    (expected,) = torch.autograd.grad(F.cross_entropy(dec(leaf), label), leaf)
    for m, flag in zip([m for m in dec.modules() if isinstance(m, torch.nn.BatchNorm2d)], saved, strict=True):
        m.track_running_stats = flag
    torch.testing.assert_close(grad, expected)


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="schemes"):
        LatentMasker(schemes=["blur"])
    with pytest.raises(ValueError, match="mode"):
        targeted_mask(torch.zeros(1, 2, 2, 2), "pixel", 0.1)
    with pytest.raises(ValueError, match="dropout p"):
        channel_dropout(torch.zeros(1, 2, 2, 2), p=1.0)
