"""Loss primitives of the cooperative training objective (docs/method.md section 4.1).

Label maps are ``B, H, W`` integer tensors with codes 0 background, 1 LV, 2 MYO, 3 RV; logits are ``B, K, H, W``;
images are ``B, 1, H, W`` in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pixel_cross_entropy", "reconstruction_loss"]


def pixel_cross_entropy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean pixel cross-entropy over ``B * H * W``, all classes unweighted, background included."""
    return F.cross_entropy(logits, label)


def reconstruction_loss(reconstruction: torch.Tensor, image: torch.Tensor, weight: float = 0.5) -> torch.Tensor:
    """``weight * MSE`` (mean over all elements); the reference weight is 0.5 and the target the clean image."""
    return weight * F.mse_loss(reconstruction, image)
