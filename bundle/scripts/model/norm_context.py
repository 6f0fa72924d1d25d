"""Context managers that control what a forward pass may change in a module's parameters and BatchNorm statistics.

Used by latent masking (frozen decoders, untouched running statistics) and by the hard-example losses, which in the
reference run inside ``_disable_tracking_bn_stats`` (docs/method.md sections 3.5 and 4.1).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch.nn as nn

__all__ = ["frozen_parameters", "untracked_batchnorm"]


def _batchnorms(modules: tuple[nn.Module, ...]) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for module in modules for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def _requires_grad(params: list[nn.Parameter], flag: bool) -> Iterator[None]:
    previous = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(flag)
    try:
        yield
    finally:
        for p, old in zip(params, previous, strict=True):
            p.requires_grad_(old)


@contextmanager
def frozen_parameters(*modules: nn.Module) -> Iterator[None]:
    """Within the block, no parameter of ``modules`` requires grad; the previous flags are restored on exit."""
    with _requires_grad([p for module in modules for p in module.parameters()], False):
        yield


@contextmanager
def untracked_batchnorm(*modules: nn.Module, freeze_affine: bool = False) -> Iterator[None]:
    """Within the block, BatchNorm layers of ``modules`` use batch statistics without updating their running ones.

    In train mode a BatchNorm with ``track_running_stats=False`` normalises with the batch statistics and leaves
    ``running_mean``, ``running_var`` and ``num_batches_tracked`` untouched. With ``freeze_affine`` the BN gamma and
    beta also stop requiring grad, so losses computed from this forward pass never reach them (the reference's
    behaviour for the hard-example losses). Everything is restored on exit.
    """
    norms = _batchnorms(modules)
    previous_tracking = [m.track_running_stats for m in norms]
    affine = [p for m in norms for p in (m.weight, m.bias) if p is not None] if freeze_affine else []
    for m in norms:
        m.track_running_stats = False
    try:
        with _requires_grad(affine, False):
            yield
    finally:
        for m, flag in zip(norms, previous_tracking, strict=True):
            m.track_running_stats = flag
