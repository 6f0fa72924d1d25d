"""Device and precision paths that a CPU-only machine would otherwise never execute.

The network runs on PyTorch's ``meta`` device, where an operation that mixes in a tensor created on the default
(CPU) device raises; so code that would create tensors on the wrong device, and fail only on a user's GPU, fails
here. Mixed precision runs under CPU autocast (bfloat16), the same code path as CUDA autocast.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scripts.engine.evaluator import CooperativeEvaluator
from scripts.engine.trainer import CooperativeTrainer, PairedSlicePrepareBatch, per_part_param_groups
from scripts.inference.inferer import CoopSegInferer
from scripts.model.masking import LatentMasker
from scripts.model.networks import CoopSegNet

META = torch.device("meta")


def _batch(size: int = 32) -> dict[str, torch.Tensor]:
    """A CPU loader batch (2 augmented + 2 original slices), as the data loader delivers it."""
    generator = torch.Generator().manual_seed(0)
    return {
        "image": torch.rand(2, 1, size, size, generator=generator),
        "label": torch.randint(0, 4, (2, 1, size, size), generator=generator).float(),
        "image_orig": torch.rand(2, 1, size, size, generator=generator),
        "label_orig": torch.randint(0, 4, (2, 1, size, size), generator=generator).float(),
    }


def _trainer(net: CoopSegNet, device: torch.device | str, scheme: str = "channel", **kwargs) -> CooperativeTrainer:
    return CooperativeTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=[],
        network=net,
        optimizer=torch.optim.Adam(per_part_param_groups(net), lr=1e-3),
        epoch_length=1,
        prepare_batch=PairedSlicePrepareBatch(),
        image_masker=LatentMasker(schemes=[scheme]),
        shape_masker=LatentMasker(schemes=[scheme]),
        **kwargs,
    )


@pytest.mark.parametrize("scheme", ["dropout", "channel", "spatial"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cooperative_iteration_runs_entirely_on_the_network_device(scheme: str, channels_last: bool) -> None:
    net = CoopSegNet(width=4).to(META)
    # decollation reads scalar values (.item()), which meta tensors do not have: keep the batch as it is
    trainer = _trainer(net, META, scheme, channels_last=channels_last, decollate=False)
    output = trainer._iteration(trainer, _batch())
    tensors = {k: v for k, v in output.items() if isinstance(v, torch.Tensor)}
    assert {"loss", "hard_seg", "hard_corrupted_shape", "hard_image", "hard_seg_logits"} <= set(tensors)
    assert all(v.device.type == "meta" for v in tensors.values())
    assert output["image_scheme"] == output["shape_scheme"] == scheme
    convs = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.grad is not None and w.grad.device.type == "meta" for w in convs)


@pytest.mark.parametrize("refine", [True, False])
def test_inference_slices_run_entirely_on_the_network_device(refine: bool) -> None:
    """The fused inference copy and the per-slice computation of predictions and uncertainty maps."""
    net = CoopSegNet(width=4).to(META).eval()
    inferer = CoopSegInferer(refine=refine, retain_cpu_memory=False)
    runnable, channels_last = inferer._runnable(net)
    assert runnable is not net and next(runnable.parameters()).device.type == "meta"
    slice_fn = inferer._slice_fn(runnable, channels_last, ("uncertainty", "disagreement"))
    with torch.inference_mode():
        out = slice_fn(torch.rand(3, 1, 48, 48, device=META))
    assert {k: (v.device.type, tuple(v.shape)) for k, v in out.items()} == {
        "pred": ("meta", (3, 4, 48, 48)),
        "uncertainty": ("meta", (3, 1, 48, 48)),
        "disagreement": ("meta", (3, 1, 48, 48)),
    }


def test_mixed_precision_training_under_cpu_autocast() -> None:
    torch.manual_seed(0)
    net = CoopSegNet(width=4)
    trainer = _trainer(net, "cpu", amp=True)
    seen: list[tuple[bool, torch.dtype]] = []
    first_conv = net.image_encoder.general_encoder.inc[0]
    first_conv.register_forward_hook(lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"), o.dtype)))
    before = first_conv.weight.detach().clone()
    output = trainer._iteration(trainer, _batch())
    assert seen and all(enabled and dtype == torch.bfloat16 for enabled, dtype in seen)  # standard and hard passes
    assert np.isfinite(output[0]["loss"]) and first_conv.weight.dtype == torch.float32
    assert not torch.equal(first_conv.weight.detach(), before)


def test_mixed_precision_validation_under_cpu_autocast() -> None:
    net = CoopSegNet(width=4).eval()
    volume = {"image": torch.rand(1, 1, 32, 32, 3), "label": torch.zeros(1, 1, 32, 32, 3)}
    evaluator = CooperativeEvaluator(
        device="cpu", val_data_loader=[volume], network=net, inferer=CoopSegInferer(fast=False), amp=True
    )  # fmt: skip
    seen: list[torch.dtype] = []
    net.shape_decoder.final_conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    (output,) = evaluator._iteration(evaluator, volume)  # decollated: one item per volume
    assert seen and set(seen) == {torch.bfloat16}
    assert output["pred"].shape == output["pred_ftn"].shape == (4, 32, 32, 3)
