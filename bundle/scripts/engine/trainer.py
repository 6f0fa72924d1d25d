"""The cooperative trainer: a MONAI ``Trainer`` whose iteration is the method's (docs/method.md section 4).

One iteration (``CooperativeTrainer._iteration``):

1. ``x``: a batch of 2D slices ``B, 1, H, W`` in [0, 1] (augmented copies, then the un-augmented originals, see
   :class:`PairedSlicePrepareBatch`); ``y``: ``B, H, W`` label codes (0 BG, 1 LV, 2 MYO, 3 RV).
2. The FTN reads ``clamp(x + sigma * N(0, 1), 0, 1)``; the four standard terms are computed.
3. With ``latent_da`` the FTN's codes are masked and decoded into a hard image and a hard segmentation, and the four
   hard terms are added. ``latent_da=False`` is the paper's standard-training baseline, from the same code.
4. The gradient of the sum, accumulated by back-propagating the standard part before generating the hard examples
   and the hard part after (they share no graph), then one optimiser step over all five parts.

The reference steps five Adam optimisers, one per part, with identical settings. Adam's update is per parameter, so
a single Adam over all parameters (one param group per part, see :func:`per_part_param_groups`) is the same
optimisation; it keeps MONAI's single ``optimizer`` convention.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.metrics import Average
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.utils.enums import CommonKeys as Keys
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..cpu_memory import retain_freed_memory
from ..model.masking import LatentMasker
from ..model.networks import CoopSegNet
from .cooperative import (
    HardExamples,
    LatentGradients,
    StandardPass,
    add_input_noise,
    generate_hard_examples,
    hard_terms,
    standard_terms,
)

__all__ = [
    "STANDARD_TERMS",
    "HARD_TERMS",
    "CooperativeStep",
    "inner_network",
    "unwrap_network",
    "CooperativeTrainer",
    "PairedSlicePrepareBatch",
    "enabled_handlers",
    "per_part_param_groups",
    "loss_terms",
]

STANDARD_TERMS = ("seg", "recon", "gt_shape", "shape")
HARD_TERMS = ("hard_seg", "hard_recon", "hard_shape", "hard_corrupted_shape")


def enabled_handlers(handlers: Sequence | None) -> list | None:
    """``handlers`` without the ``None`` entries that config items disabled on this process leave (the rank-0-only
    handlers of a multi-process run, ``"_disabled_": "@is_not_rank0"``)."""
    return None if handlers is None else [h for h in handlers if h is not None]


def per_part_param_groups(network: torch.nn.Module) -> list[dict[str, Any]]:
    """One optimiser param group per reference part (``image_encoder`` ... ``shape_decoder``)."""
    net = getattr(network, "module", network)
    return [{"params": list(part.parameters()), "name": name} for name, part in net.parts().items()]


def loss_terms(output: list[dict[str, Any]]) -> dict[str, float]:
    """``output_transform`` for Stats/TensorBoard handlers: every loss term of an iteration as a float.

    The trainer's output is decollated like MONAI's ``SupervisedTrainer``'s (one dict per sample, the loss terms
    repeated in each), so MONAI's handlers and ``from_engine(["loss"], first=True)`` read it as they read any trainer's.
    """
    return {k: float(v) for k, v in output[0].items() if k == Keys.LOSS or k in STANDARD_TERMS or k in HARD_TERMS}


def _term_average(key: str) -> Average:
    """Epoch mean of one loss term of the trainer's output (written to ``engine.state.metrics``)."""
    return Average(output_transform=lambda output: output[0][key])


class PairedSlicePrepareBatch:
    """Batch preparation for 2D slice batches: ``(images B, 1, H, W, labels B, H, W long)`` on ``device``.

    With ``keep_original_pair`` the un-augmented originals (``image_orig``/``label_orig``) are appended after the
    augmented slices, so a loader batch of n slices trains on 2n (the reference's 10 + 10).
    """

    def __init__(self, keep_original_pair: bool = True, image_key: str = "image", label_key: str = "label") -> None:
        self.keep_original_pair = keep_original_pair
        self.image_key = image_key
        self.label_key = label_key

    def __call__(
        self, batchdata: dict[str, torch.Tensor], device: torch.device | str | None = None, non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [batchdata[self.image_key]], [batchdata[self.label_key]]
        if self.keep_original_pair:
            images.append(batchdata[f"{self.image_key}_orig"])
            labels.append(batchdata[f"{self.label_key}_orig"])
        image = torch.cat([torch.as_tensor(i) for i in images]).float()
        label = torch.cat([torch.as_tensor(lbl) for lbl in labels])
        if label.ndim == image.ndim:  # B, 1, H, W -> B, H, W
            label = label[:, 0]
        return (
            image.to(device=device, non_blocking=non_blocking),
            label.round().long().to(device=device, non_blocking=non_blocking),
        )


class CooperativeStep(torch.nn.Module):
    """The two differentiable parts of an iteration as ``forward`` calls of one module, for DistributedDataParallel.

    DDP all-reduces gradients only for computations that run through its own ``forward``; the cooperative terms call
    several sub-networks of :class:`~scripts.model.networks.CoopSegNet` directly. Wrapped as
    ``DistributedDataParallel(CooperativeStep(network), find_unused_parameters=True)`` (``multi_gpu_train.json``),
    each part is one DDP forward followed by its own backward, and each backward averages the accumulated gradients
    over the ranks (the hard-term BN affine parameters the reference freezes are DDP's "unused" parameters). The
    wrapper holds the same parameters as ``network``, so checkpoints and the optimiser keep using ``network``.

    ``forward("standard", image=noisy, clean_image=x, label=y, ...)`` returns the fields of
    :class:`~scripts.engine.cooperative.StandardPass` (see :func:`scripts.engine.cooperative.standard_terms`);
    ``forward("hard", clean_image=x, label=y, hard_image=..., hard_seg_logits=..., ...)`` returns the hard-term dict
    (:func:`scripts.engine.cooperative.hard_terms`).
    """

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        if not isinstance(network, CoopSegNet):
            raise TypeError(f"CooperativeStep wraps a CoopSegNet, got {type(network).__name__}.")
        self.network = network

    def forward(
        self,
        part: str,
        clean_image: torch.Tensor,
        label: torch.Tensor,
        image: torch.Tensor | None = None,
        hard_image: torch.Tensor | None = None,
        hard_seg_logits: torch.Tensor | None = None,
        separate_training: bool = False,
        recon_weight: float = 0.5,
        reference_bn: bool = True,
        schemes: tuple[str | None, str | None] | None = None,
        train_stn: bool = True,
        terms_off: Sequence[str] = (),
    ) -> Any:
        if part == "standard":
            std = standard_terms(self.network, image, clean_image, label, separate_training, recon_weight)
            if schemes is not None:
                # inside forward, where the gradients of the decoder inputs are reachable (DDP wraps the outputs)
                std.gradients = LatentGradients(std, *schemes)
            return (std.losses, std.z_image, std.z_shape, std.seg_logits, std.image_code_in, std.shape_code_in,
                    std.gradients)  # fmt: skip
        if part == "hard":
            hard = HardExamples(hard_image, hard_seg_logits, "", "")
            losses = hard_terms(self.network, hard, clean_image, label, separate_training, recon_weight, reference_bn,
                                train_stn)
            # terms left out are returned detached, so DDP does not wait for gradients they would have given
            return {k: v.detach() if k in terms_off else v for k, v in losses.items()}
        raise ValueError(f"part must be 'standard' or 'hard', got {part!r}.")


def inner_network(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``network``: itself, or unwrapped from DDP and/or :class:`CooperativeStep`."""
    net = network.module if isinstance(network, DistributedDataParallel) else network
    return net.network if isinstance(net, CooperativeStep) else net


def unwrap_network(network: torch.nn.Module) -> CoopSegNet:
    """The :class:`CoopSegNet` inside ``network`` (itself, or wrapped in DDP and/or :class:`CooperativeStep`)."""
    net = inner_network(network)
    if not isinstance(net, CoopSegNet):
        raise TypeError(f"network must be a CoopSegNet (or wrap one), got {type(network).__name__}.")
    return net


class CooperativeTrainer(Trainer):
    """Cooperative training (``latent_da=True``) or the standard-training baseline (``latent_da=False``).

    Args:
        device: where the network runs.
        max_epochs: epochs to train.
        train_data_loader: yields slice batches (see :class:`PairedSlicePrepareBatch`).
        network: a :class:`~scripts.model.networks.CoopSegNet`, or for multi-process training
            ``DistributedDataParallel(CooperativeStep(net), find_unused_parameters=True)`` (see
            :class:`CooperativeStep`; a DDP around the bare network would not synchronise gradients and is refused).
        optimizer: one optimiser over all five parts (see :func:`per_part_param_groups`).
        latent_da: generate hard examples by latent masking and add the four hard terms.
        image_masker: masker for the image code z_image (None: z_image is decoded unmasked).
        shape_masker: masker for the shape code z_shape (None: z_shape is decoded unmasked).
        input_noise_sigma: sigma of the Gaussian noise on the FTN input (reference 0.05).
        recon_weight: weight of the MSE reconstruction terms (reference 0.5).
        separate_training: detach FTN logits before the STN, blocking the STN-to-FTN gradient (reference False).
        reference_bn: BatchNorm handling of the hard terms as in the reference [quirk]; see
            :func:`scripts.engine.cooperative.hard_terms`.
        hard_terms_off: hard terms left out of the objective (an ablation; the reference optimises all four of
            :data:`HARD_TERMS`). They are still computed and logged, detached.
        stn_hard_training: whether the hard terms train the STN's parameters (the reference: True); False trains the
            STN on the standard terms only (see :func:`scripts.engine.cooperative.hard_terms`'s ``train_stn``).
        prepare_batch: returns ``(images, labels)`` on the device.
        train_handlers: ignite/MONAI handlers (checkpointing, stats, validation); ``None`` entries are skipped.
        amp: mixed precision on CUDA.
        epoch_length: iterations per epoch (default: the loader's length).
        channels_last: keep the network's weights and the input batch in channels-last (NHWC) memory layout; the
            results are the same up to float rounding, and oneDNN's NHWC convolutions are faster on CPU (about 1.3x
            per iteration at 96 x 96, batch 6 + 6).
        retain_cpu_memory: on a CPU device, make glibc's malloc keep freed activation memory for reuse
            (:func:`scripts.cpu_memory.retain_freed_memory`, once per process): otherwise every iteration page-faults
            its activations in again (40,000-60,000 faults per iteration at 96 x 96, batch 6 + 6).
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: DataLoader,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        latent_da: bool = True,
        image_masker: LatentMasker | None = None,
        shape_masker: LatentMasker | None = None,
        input_noise_sigma: float = 0.05,
        recon_weight: float = 0.5,
        separate_training: bool = False,
        reference_bn: bool = True,
        hard_terms_off: Sequence[str] = (),
        stn_hard_training: bool = True,
        prepare_batch: Callable = default_prepare_batch,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        epoch_length: int | None = None,
        channels_last: bool = False,
        retain_cpu_memory: bool = False,
        **kwargs: Any,
    ) -> None:
        if isinstance(network, DistributedDataParallel) and not isinstance(network.module, CooperativeStep):
            raise TypeError(
                "DistributedDataParallel must wrap scripts.engine.trainer.CooperativeStep(network), not the bare "
                "network: the cooperative terms call sub-networks directly, which bypasses DDP's gradient all-reduce "
                "(see configs/multi_gpu_train.json)."
            )
        net = unwrap_network(network)
        unknown = sorted(set(hard_terms_off) - set(HARD_TERMS))
        if unknown:
            raise ValueError(f"hard_terms_off: unknown terms {unknown}; expected some of {list(HARD_TERMS)}.")
        terms = ("loss",) + STANDARD_TERMS + (HARD_TERMS if latent_da else ())
        averages = {f"train_{t}": _term_average(t) for t in terms}
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            prepare_batch=prepare_batch,
            key_metric={"train_loss": averages.pop("train_loss")},
            additional_metrics=averages,
            metric_cmp_fn=lambda current, best: current < best,
            handlers=enabled_handlers(train_handlers),
            amp=amp,
            **kwargs,
        )
        self.network = network
        # the module whose forward computes the loss terms: the DDP wrapper, or a plain CooperativeStep in one process
        self.step = network if isinstance(network, DistributedDataParallel) else CooperativeStep(net)
        self.optimizer = optimizer
        self.latent_da = latent_da
        self.image_masker = image_masker if image_masker is not None else (LatentMasker() if latent_da else None)
        self.shape_masker = shape_masker if shape_masker is not None else (LatentMasker() if latent_da else None)
        self.input_noise_sigma = input_noise_sigma
        self.channels_last = channels_last
        if channels_last and not isinstance(network, DistributedDataParallel):
            # (a DDP-wrapped network must be converted before wrapping, as train.json's "network" does)
            net.to(memory_format=torch.channels_last)
        if retain_cpu_memory and torch.device(device).type == "cpu":
            retain_freed_memory()
        self.recon_weight = recon_weight
        self.separate_training = separate_training
        self.reference_bn = reference_bn
        self.hard_terms_off = frozenset(hard_terms_off)
        self.stn_hard_training = stn_hard_training

    @staticmethod
    def _forward(engine: CooperativeTrainer, compute: Callable[[], Any]) -> Any:
        if engine.amp:
            with torch.autocast(torch.device(engine.state.device).type):
                return compute()
        return compute()

    @staticmethod
    def _backward(engine: CooperativeTrainer, loss: torch.Tensor) -> None:
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
        else:
            loss.backward()

    def _iteration(self, engine: CooperativeTrainer, batchdata: dict[str, torch.Tensor]) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        image, label = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        if engine.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        net = unwrap_network(engine.network)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        options = {"separate_training": engine.separate_training, "recon_weight": engine.recon_weight}
        # The standard and hard terms share no graph (hard examples are detached), so each part is back-propagated
        # as soon as it is computed: the same summed gradient, with half the activations alive at once. Under DDP
        # each backward averages the gradients accumulated so far over the ranks, so the sum stays exact.
        image_scheme = engine.image_masker.draw_scheme() if engine.latent_da and engine.image_masker else None
        shape_scheme = engine.shape_masker.draw_scheme() if engine.latent_da and engine.shape_masker else None
        reuse = engine.latent_da and all(m is None or m.reuses_gradients for m in (engine.image_masker,
                                                                                   engine.shape_masker))
        std = StandardPass(*self._forward(engine, lambda: engine.step(
            "standard", image, label, image=add_input_noise(image, engine.input_noise_sigma),
            schemes=(image_scheme, shape_scheme) if reuse else None, **options,
        )))
        losses = dict(std.losses)
        self._backward(engine, torch.stack(list(std.losses.values())).sum())
        hard = None
        if engine.latent_da:
            # masking and decoding use frozen decoders and no parameter gradient: outside the DDP forward
            hard = self._forward(engine, lambda: generate_hard_examples(
                net, std.z_image, std.z_shape, image, label, engine.image_masker, engine.shape_masker,
                image_scheme, shape_scheme, std.gradients,
            ))
            hard_losses = self._forward(engine, lambda: engine.step(
                "hard", image, label, hard_image=hard.hard_image, hard_seg_logits=hard.hard_seg_logits,
                reference_bn=engine.reference_bn, train_stn=engine.stn_hard_training,
                terms_off=tuple(engine.hard_terms_off), **options,
            ))
            losses.update(hard_losses)
            trained = [v for k, v in hard_losses.items() if k not in engine.hard_terms_off and v.requires_grad]
            if trained:
                self._backward(engine, torch.stack(trained).sum())
        loss = torch.stack([v.detach() for k, v in losses.items() if k not in engine.hard_terms_off]).sum()
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if engine.amp and engine.scaler is not None:
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            engine.optimizer.step()
        output: dict[str, Any] = {Keys.IMAGE: image, Keys.LABEL: label, Keys.PRED: std.seg_logits.detach(),
                                  Keys.LOSS: loss.detach()}
        output.update({k: v.detach() for k, v in losses.items()})
        if hard is not None:
            output.update(hard_image=hard.hard_image, hard_seg_logits=hard.hard_seg_logits,
                          image_scheme=hard.image_scheme, shape_scheme=hard.shape_scheme)
        engine.state.output = output
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # decollates the output, one dict per sample
        return engine.state.output
