"""Per-volume quality scores: how much the FTN and the STN disagree, as a warning that a mask is likely wrong.

The STN is a shape prior: where the FTN's segmentation is implausible, the STN's refinement moves away from it. The
per-voxel disagreement ``0.5 * sum_k |p_STN - p_FTN|`` (0 identical, 1 disjoint) is averaged over the voxels that
either network labels as foreground, so the score does not shrink with the field of view. The normalised entropy of
the refined prediction is reported beside it. A volume is flagged when its disagreement score exceeds a threshold
chosen on validation data (see the model card): :func:`is_flagged`, the one rule of the inference log, the function
report and the MONAI Label app. A cine is as good as its worst frame (:func:`worst_frame`).

Tensors are ``N, K, ...`` class probabilities (channel 0 background).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "QUALITY_KEYS",
    "disagreement_map",
    "entropy_map",
    "frame_quality_scores",
    "is_flagged",
    "quality_scores",
    "worst_frame",
]

QUALITY_KEYS = ("disagreement_score", "entropy_score")


def entropy_map(prob: torch.Tensor) -> torch.Tensor:
    """``N, K, ...`` probabilities -> ``N, 1, ...`` entropy normalised by ``log K`` to [0, 1]."""
    ent = -(prob * torch.log(prob.clamp_min(1e-12))).sum(dim=1, keepdim=True)
    return ent / math.log(prob.shape[1])


def disagreement_map(prob_a: torch.Tensor, prob_b: torch.Tensor) -> torch.Tensor:
    """``N, K, ...`` twice -> ``N, 1, ...`` total-variation distance in [0, 1]."""
    return 0.5 * (prob_a - prob_b).abs().sum(dim=1, keepdim=True)


def quality_scores(prob_ftn: torch.Tensor, prob_stn: torch.Tensor) -> dict[str, float]:
    """``{"disagreement_score", "entropy_score"}`` of one volume (``1, K, ...`` probabilities of FTN and FTN + STN).

    Both are means over the voxels labelled foreground by either prediction (argmax > 0); 0.0 when neither network
    finds any foreground.
    """
    if prob_ftn.shape != prob_stn.shape:
        raise ValueError(f"FTN and STN probabilities differ in shape: {tuple(prob_ftn.shape)} {tuple(prob_stn.shape)}")
    foreground = (prob_ftn.argmax(dim=1, keepdim=True) > 0) | (prob_stn.argmax(dim=1, keepdim=True) > 0)
    count = int(foreground.sum())
    if count == 0:
        return {"disagreement_score": 0.0, "entropy_score": 0.0}
    disagreement = disagreement_map(prob_stn.float(), prob_ftn.float())
    entropy = entropy_map(prob_stn.float())
    return {
        "disagreement_score": float(disagreement[foreground].sum()) / count,
        "entropy_score": float(entropy[foreground].sum()) / count,
    }


def _foreground_box(prob_ftn: torch.Tensor, prob_stn: torch.Tensor) -> tuple[slice, ...]:
    """Spatial slices of the bounding box of the voxels that either ``1, K, ...`` prediction labels foreground
    (argmax > 0, computed as max over the foreground channels > background, several times faster on the CPU); one
    voxel when there is none."""
    foreground = (prob_ftn[0, 1:].amax(0) > prob_ftn[0, 0]) | (prob_stn[0, 1:].amax(0) > prob_stn[0, 0])
    box = []
    for axis in range(foreground.ndim):
        others = tuple(a for a in range(foreground.ndim) if a != axis)
        found = torch.nonzero(foreground.to(torch.uint8).amax(dim=others) if others else foreground).flatten()
        if found.numel() == 0:
            return (slice(0, 1),) * foreground.ndim
        box.append(slice(int(found[0]), int(found[-1]) + 1))
    return tuple(box)


def frame_quality_scores(prob_ftn: torch.Tensor, prob_stn: torch.Tensor, n_frames: int) -> dict[str, torch.Tensor]:
    """``{"disagreement_score": B, F, "entropy_score": B, F}`` (:func:`scripts.inference.quality.quality_scores` of
    each frame of each item) from FTN and FTN + STN class probabilities ``B, F * K, H, W, D``.

    The scores are means over foreground voxels, so each frame is scored on the bounding box of its foreground: the
    same values, computed on a fraction of the field of view."""
    k = prob_ftn.shape[1] // n_frames
    rows = []
    for b in range(prob_ftn.shape[0]):
        row = []
        for f in range(n_frames):
            ftn, stn = prob_ftn[b : b + 1, f * k : (f + 1) * k], prob_stn[b : b + 1, f * k : (f + 1) * k]
            crop = (slice(None), slice(None), *_foreground_box(ftn, stn))
            row.append(quality_scores(ftn[crop], stn[crop]))
        rows.append(row)
    return {key: torch.tensor([[s[key] for s in row] for row in rows], dtype=torch.float64) for key in QUALITY_KEYS}


def worst_frame(scores: Sequence[float] | None) -> tuple[int, float] | None:
    """``(frame, score)`` of the highest disagreement score among a volume's frames (the first of ties); None for no
    scores."""
    if not scores:
        return None
    values = [float(s) for s in scores]
    frame = max(range(len(values)), key=values.__getitem__)
    return frame, values[frame]


def is_flagged(score: float | None, threshold: float | None) -> bool | None:
    """The quality flag: whether ``score`` exceeds ``threshold``; None without a score or without a threshold."""
    return None if score is None or threshold is None else float(score) > float(threshold)
