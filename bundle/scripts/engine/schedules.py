"""Learning-rate policies for the bundle's training budgets, built from MONAI's and PyTorch's schedulers.

The reference trains with a constant learning rate (Adam, 1e-4, 600 epochs; docs/method.md section 4.2), which
``"constant"`` reproduces. The default CPU budget of a few hundred iterations instead uses ``"one_cycle"``: MONAI's
``WarmupCosineSchedule``, a linear warm-up from 10 % to the configured rate over the first ``warmup_fraction`` of the
iterations, then a half cosine down to ``final_factor`` of it at the last iteration, which lands a short run on a
settled solution instead of wherever the last noisy step of a constant rate left it (a deliberate deviation).
"""

from __future__ import annotations

import torch
from monai.optimizers import WarmupCosineSchedule

__all__ = ["LR_POLICIES", "budget_lr_scheduler"]

LR_POLICIES = ("constant", "one_cycle")


def budget_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    policy: str = "one_cycle",
    warmup_fraction: float = 0.15,
    final_factor: float = 0.01,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-iteration scheduler of ``policy`` over ``total_steps`` optimiser steps.

    Step it once per training iteration (``LrScheduleHandler(epoch_level=False)``). Its state (``state_dict``) is
    part of the resumable training checkpoint.
    """
    if policy not in LR_POLICIES:
        raise ValueError(f"unknown lr policy {policy!r}, expected one of {LR_POLICIES}.")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}.")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
    if policy == "constant":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    base_lr = max(group["lr"] for group in optimizer.param_groups)
    return WarmupCosineSchedule(
        optimizer,
        warmup_steps=max(1, int(round(warmup_fraction * total_steps))),
        t_total=max(1, total_steps - 1),
        end_lr=final_factor * base_lr,
        warmup_multiplier=0.1,
    )
