"""Latent-code masking: the three schemes that turn a clean latent code into a hard one (docs/method.md section 3).

A code is ``B, C, h, w`` (C = 128 channels at h x w = H/16 x W/16 for the reference network). Schemes:

* ``dropout``: random channel dropout, ``F.dropout2d`` with a fixed p (reference: 0.5). The reference keeps
  ``F.dropout2d``'s training-mode rescaling of the surviving channels by ``1 / (1 - p)`` [quirk]; ``dropout_rescale``
  switches it off.
* ``channel``: gradient-targeted channel-wise mask. Score ``s[b, c] = mean_{h,w} dL/dz``.
* ``spatial``: gradient-targeted spatial-wise mask. Score ``s[b, hw] = mean_c dL/dz``.

For the targeted schemes, ``L`` is a task loss of the decoded code (MSE against the clean image for the image code,
pixel cross-entropy against the label for the shape code). The scores are the *signed* mean gradients; per sample the
``k = int(L * p)`` highest are masked, with ``p ~ U[0, max_threshold)`` drawn once per call. Masked entries are
multiplied by ``U[0, 0.5)`` (soft, drawn per entry) or 0 (hard); the rest by 1. The decoder used for the gradient is
frozen, and by default its BatchNorm running statistics are left untouched. Every masked code is detached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .norm_context import frozen_parameters, untracked_batchnorm

__all__ = [
    "MASK_SCHEMES",
    "TARGETED_SCHEMES",
    "channel_dropout",
    "latent_gradient",
    "targeted_mask",
    "LatentMasker",
]

MASK_SCHEMES = ("dropout", "channel", "spatial")
TARGETED_SCHEMES = ("channel", "spatial")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def channel_dropout(code: torch.Tensor, p: float = 0.5, rescale: bool = True) -> torch.Tensor:
    """Zero whole channels per sample with probability ``p``; survivors are scaled by ``1 / (1 - p)`` if ``rescale``.

    Returns a detached ``B, C, h, w`` tensor.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p must be in [0, 1), got {p}.")
    code = code.detach()
    if rescale:
        return F.dropout2d(code, p=p, training=True)
    keep = (torch.rand(code.shape[0], code.shape[1], 1, 1, device=code.device) >= p).to(code.dtype)
    return code * keep


def latent_gradient(
    code: torch.Tensor, decoder: nn.Module, target: torch.Tensor, loss_fn: LossFn, update_bn_stats: bool = False
) -> torch.Tensor:
    """``dL/dz`` of ``loss_fn(decoder(z), target)`` at ``z = code`` (detached from its producer), ``B, C, h, w``.

    The decoder's parameters are frozen, so no parameter gradient is computed. Its BatchNorm layers normalise with
    batch statistics in train mode; ``update_bn_stats=True`` lets this forward pass update their running statistics,
    as the reference does [quirk].
    """
    leaf = code.detach().requires_grad_(True)
    with torch.enable_grad(), frozen_parameters(decoder):
        if update_bn_stats:
            loss = loss_fn(decoder(leaf), target)
        else:
            with untracked_batchnorm(decoder):
                loss = loss_fn(decoder(leaf), target)
        (grad,) = torch.autograd.grad(loss, leaf)
    return grad


def targeted_mask(
    grad: torch.Tensor, mode: str, fraction: float, soft: bool = True, soft_max: float = 0.5
) -> torch.Tensor:
    """Multiplicative mask from a latent gradient ``B, C, h, w``.

    Args:
        grad: the gradient of the task loss with respect to the code.
        mode: ``"channel"`` (mask shape ``B, C, 1, 1``) or ``"spatial"`` (mask shape ``B, 1, h, w``).
        fraction: p; exactly ``int(L * p)`` entries per sample are masked (L = C or h * w), those with the highest
            signed mean gradient.
        soft: masked entries get ``U[0, soft_max)`` (independently per entry and sample) instead of 0.
        soft_max: upper bound of the soft mask values (reference 0.5).
    """
    if mode == "channel":
        scores = grad.mean(dim=(2, 3))
    elif mode == "spatial":
        scores = grad.mean(dim=1).flatten(1)
    else:
        raise ValueError(f"mode must be 'channel' or 'spatial', got {mode!r}.")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}.")
    length = scores.shape[1]
    k = int(length * fraction)
    mask = torch.ones_like(scores)
    if k > 0:
        top = scores.topk(k, dim=1).indices
        fill = torch.rand(top.shape, device=grad.device, dtype=grad.dtype) * soft_max if soft else torch.zeros(
            top.shape, device=grad.device, dtype=grad.dtype
        )
        mask.scatter_(1, top, fill)
    if mode == "channel":
        return mask[:, :, None, None]
    return mask.view(grad.shape[0], 1, grad.shape[2], grad.shape[3])


class LatentMasker:
    """Draws one masking scheme per call and returns the detached masked code.

    Args:
        schemes: the schemes drawn from, uniformly (reference: all three).
        max_threshold: the targeted schemes mask a fraction ``p ~ U[0, max_threshold)`` (reference 0.5).
        random_threshold: draw p as above; if False, p = max_threshold.
        soft: soft masks with values ``U[0, soft_max)``; if False masked entries are zeroed.
        soft_max: the upper bound of the soft mask values (reference 0.5).
        dropout_p: the dropout scheme's channel drop probability (reference: max_threshold, fixed, not random).
        dropout_rescale: keep ``F.dropout2d``'s ``1 / (1 - p)`` rescaling of surviving channels [quirk].
        update_bn_stats: let the gradient forward update the decoder's BN running statistics [quirk]; the default
            leaves them untouched during generation.
    """

    def __init__(
        self,
        schemes: Sequence[str] = MASK_SCHEMES,
        max_threshold: float = 0.5,
        random_threshold: bool = True,
        soft: bool = True,
        soft_max: float = 0.5,
        dropout_p: float = 0.5,
        dropout_rescale: bool = True,
        update_bn_stats: bool = False,
    ) -> None:
        unknown = [s for s in schemes if s not in MASK_SCHEMES]
        if not schemes or unknown:
            raise ValueError(f"schemes must be a non-empty subset of {MASK_SCHEMES}, got {list(schemes)}.")
        if not 0.0 <= max_threshold <= 1.0:
            raise ValueError(f"max_threshold must be in [0, 1], got {max_threshold}.")
        if not 0.0 <= dropout_p < 1.0:
            raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}.")
        self.schemes = tuple(schemes)
        self.max_threshold = float(max_threshold)
        self.random_threshold = random_threshold
        self.soft = soft
        self.soft_max = float(soft_max)
        self.dropout_p = float(dropout_p)
        self.dropout_rescale = dropout_rescale
        self.update_bn_stats = update_bn_stats

    @property
    def reuses_gradients(self) -> bool:
        """Whether a gradient from the standard pass may replace :func:`latent_gradient`'s own decoder pass.

        The standard pass decodes the same code with the same decoder in the same BatchNorm mode, so its gradient
        with respect to the decoder input is the same; only the reference's quirk of updating the decoder's running
        statistics during that extra pass (``update_bn_stats``) needs the pass itself.
        """
        return not self.update_bn_stats

    def draw_scheme(self) -> str:
        """One scheme, uniformly (torch's global generator, so ``set_determinism`` makes it repeatable)."""
        return self.schemes[int(torch.randint(len(self.schemes), ()).item())]

    def draw_fraction(self) -> float:
        """p for the targeted schemes: ``U[0, max_threshold)`` or ``max_threshold``."""
        if self.random_threshold:
            return float(torch.rand(()).item()) * self.max_threshold
        return self.max_threshold

    def __call__(
        self,
        code: torch.Tensor,
        decoder: nn.Module,
        target: torch.Tensor,
        loss_fn: LossFn,
        scheme: str | None = None,
        grad: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, str]:
        """Mask ``code`` (``B, C, h, w``) with ``scheme`` (drawn if None); returns ``(masked_code, scheme)``.

        ``decoder``, ``target`` and ``loss_fn`` define the task loss whose gradient targets the mask; they are not
        used by ``dropout``. ``grad``, when given, is that gradient already computed (up to a positive factor, which
        does not change the ranking), e.g. from the standard pass of the same batch (:attr:`reuses_gradients`).
        """
        scheme = self.draw_scheme() if scheme is None else scheme
        if scheme == "dropout":
            return channel_dropout(code, self.dropout_p, self.dropout_rescale), scheme
        if scheme not in TARGETED_SCHEMES:
            raise ValueError(f"unknown masking scheme {scheme!r}; expected one of {MASK_SCHEMES}.")
        if grad is None:
            grad = latent_gradient(code, decoder, target, loss_fn, update_bn_stats=self.update_bn_stats)
        mask = targeted_mask(grad, scheme, self.draw_fraction(), soft=self.soft, soft_max=self.soft_max)
        return (code.detach() * mask).detach(), scheme
