"""What an inference reports next to its mask: structure volumes, cardiac function of a cine, and the quality score.

All from what the inference produced (the label on the input grid and the per-frame FTN-STN disagreement of the same
network pass), with the bundle's own code: ``scripts.cardiac_function`` for volumes and function indices,
``scripts.inference.quality`` for the scores (``frame_quality_scores``), the worst frame and the flag rule, and the
bundle's ``quality_threshold``. The values go into MONAI Label's result ``params`` (JSON), which a client such as
3D Slicer receives with the mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle_code import bundle_module


def _number(value: float, digits: int = 2) -> float | None:
    """A JSON-safe rounded number (None for NaN or infinity)."""
    return round(float(value), digits) if math.isfinite(float(value)) else None


def volumes_ml(volumes: Any) -> dict[str, float | list[float | None] | None]:
    """``{label name: ml}`` for a 3D label, ``{label name: [ml per frame]}`` for a cine."""
    if volumes.n_frames == 1:
        return {name: _number(values[0]) for name, values in volumes.ml.items()}
    return {name: [_number(v) for v in values] for name, values in volumes.ml.items()}


def cardiac_function(function: Any, volumes: Any, case: str) -> dict[str, Any]:
    """``{"function": indices and ED/ES frames}`` of a cine, or ``{"function": None, "function_message": why}``."""
    try:
        result = function.function_from_cine(volumes, case)
    except function.FunctionError as e:
        return {"function": None, "function_message": f"no function indices: {e}"}
    indices: dict[str, Any] = {key: _number(value) for key, value in result.indices().items()}
    indices.update(ed_frame=result.ed_frame, es_frame=result.es_frame)
    return {"function": indices}


def quality(
    rule: Any, scores: dict[str, Sequence[float]] | None, threshold: float | None, reason: str
) -> dict[str, Any]:
    """The worst frame's FTN-STN disagreement, its frame, every frame's score and the flag, by the bundle's ``rule``
    (``scripts.inference.quality``: ``worst_frame``, ``is_flagged``).

    ``scores``: per-frame ``disagreement_score`` and ``entropy_score``; None when the model has no score
    (``reason`` says why).
    """
    if not scores:
        return {"disagreement_score": None, "flag": None, "threshold": threshold, "message": reason}
    frames = [float(s) for s in scores["disagreement_score"]]
    worst, score = rule.worst_frame(frames)
    result: dict[str, Any] = {
        "disagreement_score": _number(score, 4),
        "entropy_score": _number(scores["entropy_score"][worst], 4),
        "threshold": threshold,
        "flag": rule.is_flagged(score, threshold),
    }
    if len(frames) > 1:
        result.update(frame=worst, frame_scores=[_number(s, 4) for s in frames])
    return result


def result_params(
    bundle: Path,
    label: np.ndarray,
    affine: np.ndarray,
    case: str,
    scores: dict[str, Sequence[float]] | None,
    threshold: float | None,
    no_score_reason: str = "",
) -> dict[str, Any]:
    """The result params of one inference: ``volumes_ml``, for a cine ``function`` (or ``function_message``), and
    ``quality``. ``label`` is ``H, W, D`` or ``F, H, W, D`` (frames first, as the inference returns a cine)."""
    function = bundle_module(bundle, "cardiac_function")
    codes = np.asarray(label)
    codes = np.moveaxis(codes, 0, -1) if codes.ndim == 4 else codes
    volumes = function.measure_volumes(codes, affine, name=case)
    params: dict[str, Any] = {"volumes_ml": volumes_ml(volumes)}
    if volumes.n_frames > 1:
        params.update(cardiac_function(function, volumes, case))
    params["quality"] = quality(bundle_module(bundle, "inference.quality"), scores, threshold, no_score_reason)
    return params
