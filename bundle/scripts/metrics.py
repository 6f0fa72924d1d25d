"""Output transforms that adapt MONAI metric handlers to this bundle's outputs.

Evaluator outputs are decollated lists of dicts; after post-processing ``pred``, ``pred_ftn`` and ``label`` are
one-hot ``K, H, W, D`` tensors (class codes 0 background, 1 LV, 2 MYO, 3 RV).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["CLASS_NAMES", "class_pair"]

CLASS_NAMES = {1: "lv", 2: "myo", 3: "rv"}


def class_pair(class_index: int, pred_key: str = "pred", label_key: str = "label") -> Callable:
    """``output_transform`` giving ``(preds, labels)`` restricted to channels ``[0, class_index]``.

    With ``include_background=False`` a Dice metric then scores that single class.
    """

    def transform(output: Sequence[dict[str, Any]] | dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        items = output if isinstance(output, (list, tuple)) else [output]
        channels = [0, class_index]
        return [i[pred_key][channels] for i in items], [i[label_key][channels] for i in items]

    return transform
