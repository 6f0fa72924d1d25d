# Copyright (c) CoopSeg contributors.
# Licensed under the Apache License, Version 2.0.
"""Inference-only versions of the network's blocks whose convolutions carry their activation and residual add.

On the CPU each convolution here is one oneDNN primitive with its activation as a post-op
(``torch.ops.mkldnn._convolution_pointwise``) and the last convolution of a residual block adds its result into the
shortcut's output in place (the ``binary`` ``add`` variant): the separate passes over the activations for leaky ReLU,
ReLU and the residual sum, a sixth of the forward time on a 10 x 224 x 224 stack, disappear. Elsewhere (CUDA, other
dtypes, a PyTorch without the operator) the same modules run ``conv2d`` and the activation one after the other.

The modules expect BatchNorm already folded into the convolutions
(:func:`scripts.inference.inferer.fused_eval_copy`) and compute the same function as the blocks of
:mod:`scripts.model.networks` they replace, up to float rounding (tested).
``torch.ops.mkldnn._convolution_pointwise`` is a private PyTorch operator (the one TorchInductor's CPU fusion emits),
so it gets a net: it is looked up once and, if missing, never used; at its first use it must reproduce ``conv2d`` and
the activation on a small input (:func:`onednn_fusion_active`), or it is not used for the rest of the process (a
warning says so); and ``COOPSEG_ONEDNN_FUSION=0`` in the environment turns it off.
"""

from __future__ import annotations

import logging
import os
import threading

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.networks import Decoder, DualBranchEncoder, Encoder, _ResidualBlock

__all__ = [
    "ONEDNN_FUSION",
    "SWITCH",
    "ConvAct",
    "FusedResidualBlock",
    "FusedEncoder",
    "FusedDecoder",
    "fuse_blocks",
    "onednn_fusion_active",
]

logger = logging.getLogger(__name__)

SWITCH = "COOPSEG_ONEDNN_FUSION"
"""Environment variable: ``0`` (or ``false``, ``off``) keeps the fused operators unused in this process."""


def _onednn_ops() -> tuple | None:
    """``(conv + activation, conv + add in place)`` operators, or None: no oneDNN, switched off, or not in this
    PyTorch."""
    if os.environ.get(SWITCH, "1").strip().lower() in ("0", "false", "off", "no"):
        return None
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._convolution_pointwise.default, torch.ops.mkldnn._convolution_pointwise_.binary
    except (AttributeError, RuntimeError):
        return None


_OPS = _onednn_ops()
ONEDNN_FUSION = _OPS is not None
"""Whether this PyTorch has oneDNN's fused convolution operators (and they are not switched off)."""
_CHECKED: bool | None = None
"""Whether :data:`_OPS` passed the self-check (None: not checked yet)."""
_check_lock = threading.Lock()

_ACTIVATIONS = ("none", "relu", "leaky_relu")


def _self_check(ops: tuple) -> bool:
    """Whether ``ops`` compute what ``conv2d``, leaky ReLU and the residual add compute, on a small input."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 7, generator=generator)
    weight, bias = torch.randn(4, 3, 3, 3, generator=generator), torch.randn(4, generator=generator)
    other = torch.randn(2, 4, 9, 7, generator=generator)
    args = ([1, 1], [1, 1], [1, 1], 1)  # padding, stride, dilation, groups
    last = torch.channels_last
    with torch.inference_mode():
        conv = F.conv2d(x, weight, bias, padding=1)
        expected = (F.leaky_relu(conv, 0.2), F.leaky_relu(conv, 0.2), other + conv)
        try:  # a private operator may fail in any way
            got = (
                ops[0](x, weight, bias, *args, "leaky_relu", [0.2], ""),
                ops[0](x.contiguous(memory_format=last), weight.contiguous(memory_format=last), bias, *args,
                       "leaky_relu", [0.2], ""),
                ops[1](other.clone(), x, weight, bias, *args, "add", None, None, [], None),
            )  # fmt: skip
        except Exception as e:
            logger.warning("oneDNN fused convolution unusable (%s: %s); using conv2d.", type(e).__name__, e)
            return False
    names = ("conv + leaky ReLU", "conv + leaky ReLU, channels-last", "conv + add")
    for name, a, b in zip(names, got, expected, strict=True):
        if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-4):
            difference = float((a - b).abs().max()) if a.shape == b.shape else float("nan")
            logger.warning(
                "oneDNN fused %s disagrees with conv2d (largest difference %.3g): using conv2d for this process.",
                name,
                difference,
            )
            return False
    return True


def onednn_fusion_active() -> bool:
    """Whether the fused operators are used: present, not switched off (:data:`SWITCH`), and their self-check at
    first use passed (run once per process)."""
    global _CHECKED
    if _OPS is None:
        return False
    if _CHECKED is None:
        with _check_lock:
            if _CHECKED is None:
                _CHECKED = _self_check(_OPS)
    return _CHECKED


def _use_onednn(x: torch.Tensor) -> bool:
    return (
        _OPS is not None
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and onednn_fusion_active()
    )


class ConvAct(nn.Module):
    """A ``Conv2d`` followed by ``activation`` (``"none"``, ``"relu"`` or ``"leaky_relu"`` with ``negative_slope``).

    Holds the convolution's own weight and bias tensors (no copy). ``B, Cin, H, W -> B, Cout, H', W'``.
    """

    def __init__(self, conv: nn.Conv2d, activation: str = "none", negative_slope: float = 0.2) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}.")
        if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise ValueError(f"ConvAct needs a zero-padded Conv2d with numeric padding, got {conv}.")
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.activation = activation
        self.negative_slope = float(negative_slope)
        self._scalars = [self.negative_slope] if activation == "leaky_relu" else []

    def conv(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution alone."""
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def activate_(self, y: torch.Tensor) -> torch.Tensor:
        """The activation, in place."""
        if self.activation == "relu":
            return torch.relu_(y)
        if self.activation == "leaky_relu":
            return F.leaky_relu_(y, self.negative_slope)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_onednn(x):
            return _OPS[0](
                x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
                self.activation, self._scalars, "",
            )  # fmt: skip
        return self.activate_(self.conv(x))

    def add_into_(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``activation(other + conv(x))``, written into ``other``."""
        if _use_onednn(x) and other.dtype == torch.float32 and other.is_contiguous(memory_format=_layout(x)):
            out = _OPS[1](
                other, x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
                "add", None, None, [], None,
            )  # fmt: skip
        else:
            out = other.add_(self.conv(x))
        return self.activate_(out)


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def _conv_act(seq: nn.Sequential, index: int, activation: str, slope: float = 0.2) -> ConvAct:
    conv = seq[index]
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"expected a Conv2d at position {index} of {seq}.")
    for later in list(seq)[index + 1 :]:
        if isinstance(later, nn.BatchNorm2d):
            raise ValueError("fold BatchNorm into the convolutions first (scripts.inference.inferer.fused_eval_copy).")
    return ConvAct(conv, activation, slope)


class FusedResidualBlock(nn.Module):
    """:class:`scripts.model.networks._ResidualBlock` for inference: ``LReLU(shortcut(x) + branch(x))`` after
    ``resample``."""

    def __init__(self, block: _ResidualBlock) -> None:
        super().__init__()
        resample = block.resample
        self.resample = ConvAct(resample) if type(resample) is nn.Conv2d else resample
        self.shortcut = ConvAct(block.shortcut)
        self.first = _conv_act(block.branch, 0, "leaky_relu", block.branch[2].negative_slope)
        self.last = _conv_act(block.branch, 3, "leaky_relu", block.act.negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resample(x)
        return self.last.add_into_(self.first(x), self.shortcut(x))


class FusedEncoder(nn.Module):
    """:class:`scripts.model.networks.Encoder` for inference: ``B, Cin, H, W -> B, 8w, H/16, W/16``."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.inc_first = _conv_act(encoder.inc, 0, "leaky_relu", encoder.inc[2].negative_slope)
        self.inc_last = _conv_act(encoder.inc, 3, "leaky_relu", encoder.inc_act.negative_slope)
        blocks = (encoder.down1, encoder.down2, encoder.down3, encoder.down4)
        self.down = nn.Sequential(*(FusedResidualBlock(b) for b in blocks))
        self.final = _conv_act(encoder.final_conv, 0, "relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.down(self.inc_last(self.inc_first(x))))


class FusedDecoder(nn.Module):
    """:class:`scripts.model.networks.Decoder` for inference: ``B, 8w, h, w -> B, Cout, 16h, 16w``."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.up = nn.Sequential(*(FusedResidualBlock(b) for b in (decoder.up1, decoder.up2, decoder.up3, decoder.up4)))
        self.final = ConvAct(decoder.final_conv)
        self.sigmoid_output = decoder.sigmoid_output

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.final(self.up(z))
        return torch.sigmoid(out) if self.sigmoid_output else out


class _FusedDecoupler(nn.Module):
    """The latent decoupler H (Conv-BN-LReLU-Conv-BN-ReLU) as two fused convolutions."""

    def __init__(self, decoupler: nn.Sequential) -> None:
        super().__init__()
        pair, relu = decoupler[0], decoupler[1]
        if not isinstance(pair, nn.Sequential) or not isinstance(relu, nn.ReLU):
            raise TypeError(f"unexpected latent decoupler {decoupler}.")
        self.first = _conv_act(pair, 0, "leaky_relu", pair[2].negative_slope)
        self.last = _conv_act(pair, 3, "relu")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.last(self.first(z))


def fuse_blocks(network: nn.Module) -> nn.Module:
    """Replace, in place, every :class:`~scripts.model.networks.Encoder`, :class:`~scripts.model.networks.Decoder`
    and latent decoupler inside ``network`` (BatchNorm already folded) by its fused inference version; returns
    ``network``."""
    for module in list(network.modules()):
        if isinstance(module, DualBranchEncoder) and not isinstance(module.code_decoupler, _FusedDecoupler):
            module.code_decoupler = _FusedDecoupler(module.code_decoupler)
        for name, child in list(module.named_children()):
            if isinstance(child, Encoder):
                setattr(module, name, FusedEncoder(child))
            elif isinstance(child, Decoder):
                setattr(module, name, FusedDecoder(child))
    return network
