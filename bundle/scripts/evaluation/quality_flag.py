"""How well a per-volume quality score flags failed segmentations: its AUROC and a flag threshold.

A volume (patient x frame) counts as failed when the mean Dice of its FTN+STN prediction (LV, MYO, RV averaged) is
below ``failure_dice`` (0.7). The score is ``disagreement_score`` (FTN-STN disagreement, higher = more likely wrong,
:mod:`scripts.inference.quality`) unless another key is given.

The threshold is chosen on a calibration half of the subjects by Youden's J (the largest sensitivity + specificity
- 1; a volume is flagged when its score exceeds the threshold) and assessed on the other half, so the reported
sensitivity and specificity are not measured on the volumes that set the threshold. Subjects are split, not volumes,
so the ED and ES frames and every shifted copy of one subject (artefact copies name theirs in ``source_subject``)
fall on the same side. The result is what
``inference.json``'s ``quality_threshold`` is set from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_roc_auc

from ..figures import pyplot, save_figure

__all__ = [
    "FAILURE_DICE",
    "quality_flag_analysis",
    "quality_flag_markdown",
    "quality_flag_plot",
    "split_by_subject",
    "youden_threshold",
]

FAILURE_DICE = 0.7


def youden_threshold(failed: np.ndarray, score: np.ndarray) -> float:
    """The score threshold (flag ``score > t``) with the largest sensitivity + specificity - 1.

    Cuts are tried between consecutive observed scores and the threshold is the midpoint of the best cut, so ``>``
    and ``>=`` flag the same observed volumes; among equal J the highest cut wins (fewest flags). Both classes must
    be present.
    """
    failed, score = np.asarray(failed, dtype=bool), np.asarray(score, dtype=float)
    if failed.all() or not failed.any():
        raise ValueError("a threshold needs both failed and successful volumes")
    levels = np.unique(score)[::-1]  # descending; the cut below levels[i] flags every score >= levels[i]
    below = np.append(levels[1:], levels[-1] - max(1e-6, 1e-6 * abs(levels[-1])))
    cuts = 0.5 * (levels + below)
    flagged = score[None, :] > cuts[:, None]
    sensitivity = flagged[:, failed].mean(axis=1)
    specificity = (~flagged[:, ~failed]).mean(axis=1)
    return float(cuts[int(np.argmax(sensitivity + specificity - 1.0))])


def _auroc(failed: np.ndarray, score: np.ndarray) -> float:
    scores, labels = torch.as_tensor(score, dtype=torch.float64), torch.as_tensor(failed, dtype=torch.long)
    return float(compute_roc_auc(scores, labels))


def quality_flag_analysis(
    rows: Sequence[Mapping[str, Any]],
    score_key: str = "disagreement_score",
    failure_dice: float = FAILURE_DICE,
) -> dict[str, Any]:
    """AUROC of ``score_key`` for volumes with FTN+STN ``dice_mean`` below ``failure_dice``, and a flag threshold.

    Args:
        rows: per-volume rows (``output``, ``subject`` or ``image``, ``dice_mean``, ``score_key``), as the evaluation's
            ``volumes.csv`` holds them; only ``output == "ftn_stn"`` rows with a finite score and Dice are used.

    Returns:
        ``{"score": key, "failure_dice": d, "n_volumes": n, "all" | "calibration" | "held_out": {"n", "failures",
        "auroc"}, "threshold": t}``; ``held_out`` also has ``sensitivity`` and ``specificity`` at ``t``. AUROC and
        threshold are absent where a part lacks failed or successful volumes.
    """
    data = _scored(rows, score_key)
    out: dict[str, Any] = {"score": score_key, "failure_dice": failure_dice, "n_volumes": len(data)}
    calibration, held_out = split_by_subject(data)
    parts = {"all": data, "calibration": calibration, "held_out": held_out}
    for name, part in parts.items():
        failed = np.array([float(r["dice_mean"]) < failure_dice for r in part], dtype=bool)
        score = np.array([float(r[score_key]) for r in part], dtype=float)
        out[name] = {"n": len(part), "failures": int(failed.sum())}
        if not 0 < failed.sum() < len(part):
            continue
        out[name]["auroc"] = _auroc(failed, score)
        if name == "calibration":
            out["threshold"] = youden_threshold(failed, score)
        if name == "held_out" and "threshold" in out:
            flagged = score > out["threshold"]
            out[name]["sensitivity"] = float(flagged[failed].mean())
            out[name]["specificity"] = float((~flagged[~failed]).mean())
    return out


def split_by_subject(rows: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """Rows of every other subject (sorted) for calibration, the rest held out; a subject's frames and copies stay
    together."""
    subject_of = [_subject(r, i) for i, r in enumerate(rows)]
    calibration = set(sorted(set(subject_of))[::2])
    chosen = [s in calibration for s in subject_of]
    return [r for r, c in zip(rows, chosen, strict=True) if c], [r for r, c in zip(rows, chosen, strict=True) if not c]


def _scored(rows: Sequence[Mapping[str, Any]], score_key: str) -> list[Mapping[str, Any]]:
    """The FTN+STN rows with a finite score and Dice."""
    return [
        r for r in rows if r.get("output") == "ftn_stn" and _finite(r.get(score_key)) and _finite(r.get("dice_mean"))
    ]


def _subject(row: Mapping[str, Any], index: int) -> str:
    """The subject a volume was made from: ``source_subject`` (artefact copies), else ``subject``, else ``image``,
    else its position (rows without any are their own subject)."""
    for key in ("source_subject", "subject", "image"):
        if row.get(key) not in (None, ""):
            return str(row[key])
    return f"#{index}"


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def quality_flag_markdown(analysis: Mapping[str, Any], what: str = "the evaluated model") -> list[str]:
    """Markdown lines stating the AUROC, the threshold and its held-out sensitivity and specificity."""
    every, held = analysis.get("all", {}), analysis.get("held_out", {})
    nan = float("nan")
    return [
        f"FTN-STN disagreement score of {what} against failed segmentations (mean Dice < "
        f"{analysis['failure_dice']:g}): AUROC {every.get('auroc', nan):.3f} over {every.get('n', 0)} volumes "
        f"({every.get('failures', 0)} failed). Flag threshold chosen on half of the subjects (Youden's J): "
        f"{analysis.get('threshold', nan):.4f}; on the other half AUROC {held.get('auroc', nan):.3f}, sensitivity "
        f"{held.get('sensitivity', nan):.2f}, specificity {held.get('specificity', nan):.2f}.",
    ]


def quality_flag_plot(rows: Sequence[Mapping[str, Any]], analysis: Mapping[str, Any], path: str | Path) -> Path:
    """Scatter of score against FTN+STN mean Dice, with the failure line and the threshold, written to ``path``."""
    key = analysis["score"]
    data = _scored(rows, key)
    fig, ax = pyplot().subplots(figsize=(5, 4))
    ax.scatter([float(r[key]) for r in data], [float(r["dice_mean"]) for r in data], s=6, alpha=0.5)
    ax.axhline(analysis["failure_dice"], color="red", lw=0.8, label=f"Dice {analysis['failure_dice']:g}")
    if "threshold" in analysis:
        ax.axvline(analysis["threshold"], color="black", lw=0.8, ls="--", label="flag threshold")
    ax.set_xlabel("FTN-STN disagreement score" if key == "disagreement_score" else key)
    ax.set_ylabel("mean Dice (FTN+STN)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
