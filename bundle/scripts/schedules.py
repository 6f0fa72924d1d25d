# Copyright (c) CoopSeg contributors.
# Licensed under the Apache License, Version 2.0.
"""Learning-rate policies for the bundle's training budgets.

The reference trains with a constant learning rate (Adam, 1e-4, 600 epochs; method.md 4.2), which ``"constant"``
reproduces. The default CPU budget of a few hundred iterations instead uses ``"one_cycle"``: a short linear warm-up to
the configured learning rate, then a cosine decay to a small fraction of it, which lands the short run on a settled
solution instead of wherever the last noisy step of a constant rate left it (a deliberate, documented deviation).
"""

from __future__ import annotations

import math

import torch

__all__ = ["LR_POLICIES", "lr_factor", "budget_lr_scheduler"]

LR_POLICIES = ("constant", "one_cycle")


def lr_factor(
    step: int, total_steps: int, policy: str, warmup_fraction: float = 0.15, final_factor: float = 0.01
) -> float:
    """Multiplier of the base learning rate before optimiser step ``step`` (0-based) of ``total_steps``.

    ``one_cycle``: linear from 0.1 to 1 over the first ``warmup_fraction`` of the steps, then a half cosine from 1
    down to ``final_factor`` at the last step. ``constant``: always 1.
    """
    if policy == "constant":
        return 1.0
    if policy != "one_cycle":
        raise ValueError(f"unknown lr policy {policy!r}, expected one of {LR_POLICIES}.")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
    warmup = max(1, int(round(warmup_fraction * total_steps)))
    if step < warmup:
        return 0.1 + 0.9 * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - 1 - warmup))
    return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def budget_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    policy: str = "one_cycle",
    warmup_fraction: float = 0.15,
    final_factor: float = 0.01,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration ``LambdaLR`` applying :func:`lr_factor` to every param group's base learning rate.

    Step it once per training iteration (``LrScheduleHandler(epoch_level=False)``).
    """
    if policy not in LR_POLICIES:
        raise ValueError(f"unknown lr policy {policy!r}, expected one of {LR_POLICIES}.")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}.")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, policy, warmup_fraction, final_factor)
    )
