"""Cardiac function indices from segmentations: ventricular volumes, stroke volumes, ejection fractions, LV mass.

Label maps hold the codes of :mod:`scripts.labels` (LV blood pool, LV myocardium, RV blood pool). Arrays are
``H, W, D`` (one volume, slices on the last axis) or ``H, W, D, F`` (a cine, frames last), with a ``4 x 4``
voxel-index-to-mm affine. Units: volumes in ml (voxel volume ``|det(affine[:3, :3])|`` mm^3 / 1000), LV mass in g
(myocardium volume at ED x 1.05 g/ml), ejection fraction in percent, body surface area (BSA) in m^2 (Mosteller),
indexed values per m^2 of BSA. Cine frames are counted from 0; in a cine, ED and ES are the frames with the largest
and the smallest LV blood volume.

The inference workflow's function report (:mod:`scripts.inference.function_report`), the evaluation's agreement
statistics (:mod:`scripts.evaluation.agreement`) and the MONAI Label app all compute the indices here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .labels import LABELS, by_name

__all__ = [
    "GRID_ATOL_MM",
    "INDICES",
    "MYOCARDIUM_DENSITY_G_PER_ML",
    "CardiacFunction",
    "FunctionError",
    "Index",
    "LabelVolumes",
    "body_surface_area",
    "ed_es_frames",
    "function_from_cine",
    "function_from_pair",
    "known_bsa",
    "measure_volumes",
    "voxel_volume_ml",
]

LV, MYO, RV = by_name("lv"), by_name("myocardium"), by_name("rv")
MYOCARDIUM_DENSITY_G_PER_ML = 1.05
GRID_ATOL_MM = 1e-3
"""ED and ES labels are on the same grid when their shapes are equal and their affines agree to this (mm)."""


class FunctionError(ValueError):
    """A case whose segmentation gives no meaningful function indices; the message names the case and the problem."""


@dataclass(frozen=True)
class Index:
    """One function index: its CSV column ``key``, its table ``heading`` and its ``unit``; ``indexed`` says whether
    a per-m^2 value (column ``<key>_m2``) is reported."""

    key: str
    heading: str
    unit: str
    indexed: bool


def _ventricle(lbl: Any) -> tuple[Index, ...]:
    a, n = lbl.abbreviation, lbl.name
    return (
        Index(f"{n}_edv_ml", f"{a} EDV", "ml", True),
        Index(f"{n}_esv_ml", f"{a} ESV", "ml", True),
        Index(f"{n}_sv_ml", f"{a} SV", "ml", True),
        Index(f"{n}_ef_pct", f"{a} EF", "%", False),
    )


INDICES: tuple[Index, ...] = (
    *_ventricle(LV),
    Index(f"{LV.name}_mass_g", f"{LV.abbreviation} mass", "g", True),
    *_ventricle(RV),
)
"""Every index of :meth:`CardiacFunction.indices`, in report order."""


def voxel_volume_ml(affine: Any) -> float:
    """Volume of one voxel in ml: ``|det(affine[:3, :3])|`` mm^3 / 1000 for a ``4 x 4`` voxel-to-mm affine."""
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"expected a 4 x 4 affine, got shape {matrix.shape}.")
    return abs(float(np.linalg.det(matrix[:3, :3]))) / 1000.0


@dataclass(frozen=True, eq=False)
class LabelVolumes:
    """Per-frame structure volumes of one label map.

    Attributes:
        name: what was measured (an input path or a case name).
        shape: the spatial grid ``H, W, D``.
        affine: its ``4 x 4`` voxel-to-mm affine.
        ml: ``{label name: (F,) volumes in ml}``, one value per frame (F = 1 for a 3D volume).
    """

    name: str
    shape: tuple[int, ...]
    affine: np.ndarray
    ml: dict[str, np.ndarray]

    @property
    def n_frames(self) -> int:
        return len(self.ml[LV.name])

    def frame(self, index: int) -> dict[str, float]:
        """``{label name: ml}`` of one frame."""
        return {name: float(values[index]) for name, values in self.ml.items()}


def measure_volumes(label: Any, affine: Any, name: str = "") -> LabelVolumes:
    """Structure volumes (ml) of a label map ``H, W, D`` or ``H, W, D, F`` (numpy or CPU tensor) on ``affine``."""
    array = np.asarray(label)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise FunctionError(f"{name or 'label'}: expected an H, W, D or H, W, D, F label map, got shape {array.shape}.")
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise FunctionError(f"{name or 'label'}: label values are not integer codes.")
        array = rounded.astype(np.int64)
    if array.size and int(array.min()) < 0:
        raise FunctionError(f"{name or 'label'}: negative label values.")
    n_codes = max(lbl.code for lbl in LABELS) + 1
    counts = np.stack([np.bincount(array[..., f].ravel(), minlength=n_codes)[:n_codes] for f in range(array.shape[-1])])
    voxel = voxel_volume_ml(affine)
    ml = {lbl.name: counts[:, lbl.code].astype(np.float64) * voxel for lbl in LABELS}
    return LabelVolumes(name, tuple(int(s) for s in array.shape[:3]), np.asarray(affine, dtype=np.float64), ml)


def body_surface_area(height_cm: float, weight_kg: float) -> float:
    """Mosteller's body surface area in m^2: ``sqrt(height_cm * weight_kg / 3600)``."""
    if not (math.isfinite(height_cm) and math.isfinite(weight_kg) and height_cm > 0 and weight_kg > 0):
        raise FunctionError(f"height {height_cm} cm and weight {weight_kg} kg must be positive numbers.")
    return math.sqrt(height_cm * weight_kg / 3600.0)


def _known(value: float | None) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def known_bsa(case: str, height_cm: float | None, weight_kg: float | None) -> float | None:
    """The body surface area of ``case`` (:func:`body_surface_area`), None when height or weight is unknown (None or
    NaN); raises :class:`FunctionError` naming the case for a non-positive value."""
    if not (_known(height_cm) and _known(weight_kg)):
        return None
    try:
        return body_surface_area(float(height_cm), float(weight_kg))
    except FunctionError as e:
        raise FunctionError(f"{case}: {e}") from None


@dataclass(frozen=True)
class CardiacFunction:
    """Function indices of one case: volumes in ml, LV mass in g, BSA in m^2 (None: height or weight unknown);
    ``ed_frame``/``es_frame`` are the cine frames (from 0) used, None for an ED/ES pair."""

    case: str
    lv_edv_ml: float
    lv_esv_ml: float
    rv_edv_ml: float
    rv_esv_ml: float
    lv_mass_g: float
    bsa_m2: float | None = None
    ed_frame: int | None = None
    es_frame: int | None = None

    @property
    def lv_sv_ml(self) -> float:
        return self.lv_edv_ml - self.lv_esv_ml

    @property
    def rv_sv_ml(self) -> float:
        return self.rv_edv_ml - self.rv_esv_ml

    @property
    def lv_ef_pct(self) -> float:
        return 100.0 * self.lv_sv_ml / self.lv_edv_ml if self.lv_edv_ml > 0 else math.nan

    @property
    def rv_ef_pct(self) -> float:
        return 100.0 * self.rv_sv_ml / self.rv_edv_ml if self.rv_edv_ml > 0 else math.nan

    def indices(self) -> dict[str, float]:
        """``{column: value}`` of :data:`INDICES`, then, with a BSA, the indexed values (``<column>_m2``)."""
        values = {index.key: float(getattr(self, index.key)) for index in INDICES}
        if self.bsa_m2:
            values |= {f"{i.key}_m2": values[i.key] / self.bsa_m2 for i in INDICES if i.indexed}
        return values


def _function(
    case: str,
    ed: Mapping[str, float],
    es: Mapping[str, float],
    bsa_m2: float | None,
    ed_frame: int | None = None,
    es_frame: int | None = None,
    strict: bool = True,
) -> CardiacFunction:
    where = "" if ed_frame is None else f" (frames {ed_frame} and {es_frame})"
    for lbl in (LV, RV):
        if strict and not ed[lbl.name] > es[lbl.name]:
            raise FunctionError(
                f"{case}: the {lbl.abbreviation} volume at ED ({ed[lbl.name]:.1f} ml) is not larger than at ES "
                f"({es[lbl.name]:.1f} ml){where}; ED and ES swapped, or a failed segmentation."
            )
    return CardiacFunction(
        case=case,
        lv_edv_ml=ed[LV.name],
        lv_esv_ml=es[LV.name],
        rv_edv_ml=ed[RV.name],
        rv_esv_ml=es[RV.name],
        lv_mass_g=ed[MYO.name] * MYOCARDIUM_DENSITY_G_PER_ML,
        bsa_m2=bsa_m2,
        ed_frame=ed_frame,
        es_frame=es_frame,
    )


def _grid(volumes: LabelVolumes) -> str:
    spacing = np.linalg.norm(volumes.affine[:3, :3], axis=0)
    return f"{volumes.name or 'label'}: shape {volumes.shape}, spacing {'x'.join(f'{s:.4g}' for s in spacing)} mm"


def function_from_pair(
    ed: LabelVolumes,
    es: LabelVolumes,
    case: str,
    height_cm: float | None = None,
    weight_kg: float | None = None,
    strict: bool = True,
) -> CardiacFunction:
    """Indices from an ED and an ES 3D label (:func:`measure_volumes`) on the same grid; BSA-indexed when height and
    weight are known. Raises :class:`FunctionError` for labels on different grids, an empty LV, or an ED volume not
    larger than the ES volume (LV or RV). ``strict=False`` keeps implausible values instead (the last two checks
    are skipped; an EF with an empty ED volume is NaN), as agreement statistics of predictions need."""
    for phase, volumes in (("ED", ed), ("ES", es)):
        if volumes.n_frames != 1:
            raise FunctionError(f"{case}: the {phase} label has {volumes.n_frames} frames; expected one 3D volume.")
    same_grid = ed.shape == es.shape and np.allclose(ed.affine, es.affine, rtol=0.0, atol=GRID_ATOL_MM)
    if not same_grid:
        raise FunctionError(f"{case}: the ED and ES labels are on different grids ({_grid(ed)}; {_grid(es)}).")
    empty = [phase for phase, volumes in (("ED", ed), ("ES", es)) if volumes.ml[LV.name][0] <= 0]
    if empty and strict:
        raise FunctionError(f"{case}: the {LV.abbreviation} blood pool is empty at {' and '.join(empty)}.")
    return _function(case, ed.frame(0), es.frame(0), known_bsa(case, height_cm, weight_kg), strict=strict)


def ed_es_frames(lv_ml: Sequence[float]) -> tuple[int, int]:
    """``(ED, ES)`` frame indices (from 0): the largest and the smallest LV blood volume (the first of ties)."""
    values = np.asarray(lv_ml, dtype=np.float64)
    return int(np.argmax(values)), int(np.argmin(values))


def function_from_cine(
    cine: LabelVolumes, case: str, height_cm: float | None = None, weight_kg: float | None = None
) -> CardiacFunction:
    """Indices from a cine label (:func:`measure_volumes` of ``H, W, D, F``), ED and ES found by LV blood volume.

    Raises :class:`FunctionError` when the cine has fewer than 2 frames, the LV is empty in some frames (listed), or
    an ED volume is not larger than the ES volume."""
    if cine.n_frames < 2:
        raise FunctionError(f"{case}: a cine needs at least 2 frames, got {cine.n_frames}.")
    lv = cine.ml[LV.name]
    empty = np.flatnonzero(lv <= 0).tolist()
    if empty:
        raise FunctionError(
            f"{case}: the {LV.abbreviation} blood pool is empty in frame(s) {', '.join(map(str, empty))} of "
            f"{cine.n_frames} (counted from 0)."
        )
    ed, es = ed_es_frames(lv)
    return _function(case, cine.frame(ed), cine.frame(es), known_bsa(case, height_cm, weight_kg), ed, es)
