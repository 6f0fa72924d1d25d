"""Slice-by-slice, frame-by-frame inference of FTN + STN on short-axis volumes, with uncertainty maps.

Input ``B, F, H, W, D``: F frames (1 for a 3D stack, T for a 4D cine) as channels, D slices on the last axis,
intensities already normalised to [0, 1]. Each frame goes through MONAI's ``SliceInferer`` with all its slices in one
batch; the in-plane size is padded (zeros) to a multiple of 16 for the network and cropped back.

Outputs, per frame, on the input grid:

- ``pred``: class probabilities ``B, F * K, H, W, D`` (frame f holds channels ``f * K .. f * K + K - 1``) of the STN
  refinement ``softmax(STN(softmax(FTN(x) / T)))`` or, with ``refine=False``, of the FTN alone ``softmax(FTN(x))``;
- ``uncertainty``: ``B, F, H, W, D`` entropy of ``pred``'s probabilities divided by ``log K`` (0 certain, 1 uniform);
- ``disagreement``: ``B, F, H, W, D`` total-variation distance ``0.5 * sum_k |p_STN - p_FTN|`` between the FTN's and
  the STN's class probabilities (0 identical, 1 disjoint);
- ``prob_ftn``: ``B, F * K, H, W, D`` the FTN's class probabilities ``softmax(FTN(x))`` (laid out as ``pred``), from the
  same pass, for per-volume quality scores (:func:`scripts.inference.quality.quality_scores`).
"""

from __future__ import annotations

import copy
import math
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SliceInferer
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..cpu_memory import retain_freed_memory
from .fusion import fuse_blocks
from .quality import disagreement_map, entropy_map

__all__ = ["MAP_NAMES", "FTN_PROB", "CPU_BATCH_PIXELS", "CoopSegInferer", "fused_eval_copy"]

MAP_NAMES = ("uncertainty", "disagreement")
FTN_PROB = "prob_ftn"
"""Extra output of :meth:`CoopSegInferer.predict`: the FTN's class probabilities (not a per-voxel map to save)."""

CPU_BATCH_PIXELS = 2**19
"""On the CPU, ``sw_batch_size=0`` puts at most this many in-plane pixels (slices x padded H x W) in one network call:
a 16-channel float32 activation of that batch is 32 MiB, the largest block glibc's malloc can be told to keep for
reuse (:mod:`scripts.cpu_memory`). 10 slices of 224 x 224, 8 of 256 x 256."""


def fused_eval_copy(
    network: torch.nn.Module, channels_last: bool = True, fuse_activations: bool = True
) -> torch.nn.Module:
    """A copy of an eval-mode ``network`` for inference (no autograd): every ``Conv2d`` followed by a
    ``BatchNorm2d`` in an ``nn.Sequential`` is folded into one convolution (the same function up to float rounding,
    one pass over the activations less), ``ReLU``/``LeakyReLU`` modules work in place, the network's encoders,
    decoders and latent decoupler are optionally replaced by :mod:`scripts.inference.fusion`'s versions (activation and
    residual add inside the convolution on CPU), and the weights are optionally in channels-last memory format
    (oneDNN's preferred layout on CPU)."""
    fused = copy.deepcopy(network)
    for module in fused.modules():
        if not isinstance(module, torch.nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, norm = module._modules[first], module._modules[second]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d):
                module._modules[first] = fuse_conv_bn_eval(conv, norm)
                module._modules[second] = torch.nn.Identity()
    for module in fused.modules():  # no autograd at inference: activations may overwrite their input
        if isinstance(module, (torch.nn.ReLU, torch.nn.LeakyReLU)):
            module.inplace = True
    if fuse_activations:
        fuse_blocks(fused)
    return fused.to(memory_format=torch.channels_last) if channels_last else fused


def _state_versions(network: torch.nn.Module) -> tuple[int, ...] | None:
    """The tensors' version counters, which in-place updates (optimiser steps, ``load_state_dict``) bump; None where
    tensors have no ``_version`` (a private attribute of PyTorch's): nothing then tells a cached copy is stale."""
    try:
        return tuple(int(t._version) for t in (*network.parameters(), *network.buffers()))
    except (AttributeError, TypeError, ValueError):
        return None


def _ceil_to(n: int, divisor: int) -> int:
    return int(math.ceil(n / divisor) * divisor)


class CoopSegInferer(Inferer):
    """FTN + STN on every slice of every frame (see the module docstring for shapes and outputs).

    Args:
        refine: ``pred`` is STN-refined (the paper's prediction) or, if False, the FTN's alone.
        divisor: in-plane sizes are padded to a multiple of this (the network downsamples 16 x).
        spatial_dim: the slice axis among the 3 spatial axes (2: the last, as short-axis stacks are stored).
        sw_batch_size: slices per network call; 0 means all slices of a frame at once on a GPU and, on the CPU, as
            many as fit :data:`CPU_BATCH_PIXELS` (at least one).
        fast: for an ``nn.Module`` in eval mode, run a cached :func:`fused_eval_copy` of it (BatchNorm folded into
            the convolutions, channels-last, activations and residual adds inside oneDNN convolutions on the CPU);
            the copy is rebuilt when the network's weights change (seen through the tensors' private version
            counters; where PyTorch has none, the copy is rebuilt at every call). TorchScript modules and modules in
            training mode run as they are. ``--inferer#fast False`` turns all of this off.
        retain_cpu_memory: when running on the CPU, call :func:`scripts.cpu_memory.retain_freed_memory` (once per
            process) so activation memory is reused instead of page-faulted in again at every call; measured 2x
            faster on a 10 x 224 x 224 stack. The process keeps its peak memory.

    The network must provide ``segment(x)`` (FTN logits) and ``refine_logits(logits)`` (STN), as
    :class:`scripts.model.networks.CoopSegNet` and its TorchScript export do; a plain module that only has
    ``forward`` is used as is for ``pred`` (no maps).
    """

    def __init__(
        self,
        refine: bool = True,
        divisor: int = 16,
        spatial_dim: int = 2,
        sw_batch_size: int = 0,
        fast: bool = True,
        retain_cpu_memory: bool = True,
    ) -> None:
        super().__init__()
        if divisor < 1 or spatial_dim not in (0, 1, 2) or sw_batch_size < 0:
            raise ValueError(
                f"need divisor >= 1, spatial_dim in 0..2, sw_batch_size >= 0; got {divisor}, "
                f"{spatial_dim}, {sw_batch_size}."
            )
        self.refine = refine
        self.divisor = divisor
        self.spatial_dim = spatial_dim
        self.sw_batch_size = sw_batch_size
        self.fast = fast
        self.retain_cpu_memory = retain_cpu_memory
        self._fused: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def _runnable(self, network: Callable[..., Any]) -> tuple[Callable[..., Any], bool]:
        """``(module to run, channels_last)``: the cached fused copy of ``network`` when ``fast`` applies."""
        eligible = (
            self.fast
            and isinstance(network, torch.nn.Module)
            and not isinstance(network, torch.jit.ScriptModule)
            and not network.training
        )
        if not eligible:
            return network, False
        versions = _state_versions(network)
        if versions is None:  # no way to tell whether a cached copy is stale: never cache
            return fused_eval_copy(network), True
        with self._lock:
            cached = self._fused.get(network)
            if cached is None or cached[0] != versions:
                cached = (versions, fused_eval_copy(network))
                self._fused[network] = cached
        return cached[1], True

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """``B, F, H, W, D`` -> class probabilities ``B, F * K, H, W, D`` (the ``pred`` output)."""
        return self.predict(inputs, network)["pred"]

    def predict(
        self, inputs: torch.Tensor, network: Callable[..., Any], maps: Sequence[str] = ()
    ) -> dict[str, torch.Tensor]:
        """``{"pred": ..., **maps}`` for ``inputs`` ``B, F, H, W, D``; ``maps`` is a subset of :data:`MAP_NAMES` and
        :data:`FTN_PROB`."""
        unknown = set(maps) - {*MAP_NAMES, FTN_PROB}
        if unknown:
            raise ValueError(f"unknown maps {sorted(unknown)}; available: {(*MAP_NAMES, FTN_PROB)}.")
        if inputs.ndim != 5:
            raise ValueError(f"expected inputs B, F, H, W, D; got shape {tuple(inputs.shape)}.")
        if maps and not (hasattr(network, "segment") and hasattr(network, "refine_logits")):
            raise TypeError("uncertainty and disagreement maps need a network with segment() and refine_logits().")
        roi_size = [_ceil_to(s, self.divisor) for i, s in enumerate(inputs.shape[2:]) if i != self.spatial_dim]
        on_cpu = inputs.device.type == "cpu"
        if on_cpu and self.retain_cpu_memory:
            retain_freed_memory()
        slicer = SliceInferer(
            roi_size=roi_size,
            spatial_dim=self.spatial_dim,
            sw_batch_size=self._slices_per_call(inputs.shape[2 + self.spatial_dim], roi_size, on_cpu),
            progress=False,
        )
        slice_fn = self._slice_fn(*self._runnable(network), tuple(maps))
        frames: list[dict[str, torch.Tensor]] = []
        with torch.inference_mode():
            for f in range(inputs.shape[1]):
                frames.append(slicer(inputs[:, f : f + 1], slice_fn))
        # inference tensors cannot be modified later (e.g. by Invertd); cat makes ordinary ones
        return {key: torch.cat([fr[key] for fr in frames], dim=1) for key in frames[0]}

    def _slices_per_call(self, n_slices: int, roi_size: Sequence[int], on_cpu: bool) -> int:
        if self.sw_batch_size:
            return self.sw_batch_size
        if not on_cpu:
            return n_slices
        return max(1, min(n_slices, CPU_BATCH_PIXELS // (roi_size[0] * roi_size[1])))

    def _slice_fn(
        self, network: Callable[..., Any], channels_last: bool, maps: tuple[str, ...]
    ) -> Callable[[torch.Tensor], dict]:
        has_parts = hasattr(network, "segment") and hasattr(network, "refine_logits")

        def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if not has_parts:
                return {"pred": torch.softmax(network(x).float(), dim=1)}
            ftn = network.segment(x)
            need_stn = self.refine or "disagreement" in maps
            need_ftn = not self.refine or "disagreement" in maps or FTN_PROB in maps
            stn = network.refine_logits(ftn) if need_stn else None
            p_ftn = torch.softmax(ftn.float(), dim=1) if need_ftn else None
            p_stn = torch.softmax(stn.float(), dim=1) if stn is not None else None
            pred = p_stn if self.refine else p_ftn
            out = {"pred": pred}
            if "uncertainty" in maps:
                out["uncertainty"] = entropy_map(pred)
            if "disagreement" in maps:
                out["disagreement"] = disagreement_map(p_stn, p_ftn)
            if FTN_PROB in maps:
                out[FTN_PROB] = p_ftn
            return out

        return run
