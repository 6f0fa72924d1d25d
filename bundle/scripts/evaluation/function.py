"""Cardiac function indices from segmentations: ventricular volumes, stroke volumes, ejection fractions, LV mass.

Label maps hold the codes of :mod:`scripts.labels` (LV blood pool, LV myocardium, RV blood pool). Arrays are
``H, W, D`` (one volume, slices on the last axis) or ``H, W, D, F`` (a cine, frames last), with a ``4 x 4``
voxel-index-to-mm affine. Units: volumes in ml (voxel volume ``|det(affine[:3, :3])|`` mm^3 / 1000), LV mass in g
(myocardium volume at ED x 1.05 g/ml), ejection fraction in percent, body surface area (BSA) in m^2 (Mosteller),
indexed values per m^2 of BSA. Cine frames are counted from 0; in a cine, ED and ES are the frames with the largest
and the smallest LV blood volume.

Below the indices: the volume-time curve of a cine and the function report (:class:`FunctionCase` rows written as
``function.csv`` and ``function.md``), which the inference workflow writes for its cases.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..labels import LABELS, by_name

__all__ = [
    "GRID_ATOL_MM",
    "INDICES",
    "KINDS",
    "MYOCARDIUM_DENSITY_G_PER_ML",
    "CardiacFunction",
    "FunctionCase",
    "FunctionError",
    "Index",
    "LabelVolumes",
    "body_surface_area",
    "ed_es_frames",
    "function_from_cine",
    "function_from_pair",
    "function_markdown",
    "measure_volumes",
    "quality_text",
    "report_columns",
    "save_volume_time_plot",
    "voxel_volume_ml",
    "write_function_report",
]

logger = logging.getLogger(__name__)

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


def _bsa(case: str, height_cm: float | None, weight_kg: float | None) -> float | None:
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
    return _function(case, ed.frame(0), es.frame(0), _bsa(case, height_cm, weight_kg), strict=strict)


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
    return _function(case, cine.frame(ed), cine.frame(es), _bsa(case, height_cm, weight_kg), ed, es)


def save_volume_time_plot(
    cine: LabelVolumes, path: str | os.PathLike, function: CardiacFunction | None = None, title: str = ""
) -> Path:
    """PNG of the LV and RV blood volumes (ml) per frame of a cine, ED and ES marked when ``function`` is given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from .report import save_figure

    frames = np.arange(cine.n_frames)
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for lbl in (LV, RV):
        colour = tuple(c / 255.0 for c in lbl.color)
        ax.plot(frames, cine.ml[lbl.name], marker="o", markersize=3, color=colour, label=f"{lbl.abbreviation}")
    if function is not None and function.ed_frame is not None:
        for frame, phase, style in ((function.ed_frame, "ED", "--"), (function.es_frame, "ES", ":")):
            ax.axvline(frame, color="black", linestyle=style, linewidth=1, label=f"{phase} (frame {frame})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("frame")
    ax.set_ylabel("volume (ml)")
    ax.set_title(title or cine.name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# --- the function report ------------------------------------------------------------------------------------------
KINDS = {"cine": "cine", "pair": "ED/ES pair", "volume": "single volume"}
"""Case kinds: one 4D label; an ED and an ES 3D label; one 3D label (volumes only)."""
_TABLE = (("EDV", "edv_ml", "ml"), ("ESV", "esv_ml", "ml"), ("SV", "sv_ml", "ml"), ("EF", "ef_pct", "%"),
          ("Mass", "mass_g", "g"))  # fmt: skip


@dataclass
class FunctionCase:
    """One case of a function report.

    Attributes:
        case: its name.
        kind: a key of :data:`KINDS`.
        volumes: the labels measured: the cine, the ED then the ES label, or the single volume.
        height_cm, weight_kg: subject information (None: unknown).
        function: the indices (None for a single volume, or when ``error`` says why not); see :meth:`compute`.
        error: why a cine or pair has no indices.
        quality_score: the worst FTN-STN disagreement score of its volumes and frames (None: not available).
        quality_flag: whether ``quality_score`` is above the threshold (None: no score or no threshold).
    """

    case: str
    kind: str
    volumes: tuple[LabelVolumes, ...]
    height_cm: float | None = None
    weight_kg: float | None = None
    function: CardiacFunction | None = None
    error: str = ""
    quality_score: float | None = None
    quality_flag: bool | None = None

    def compute(self) -> FunctionCase:
        """Fill ``function`` for a cine or a pair, or ``error`` with the :class:`FunctionError` message."""
        try:
            if self.kind == "cine":
                self.function = function_from_cine(self.volumes[0], self.case, self.height_cm, self.weight_kg)
            elif self.kind == "pair":
                ed, es = self.volumes
                self.function = function_from_pair(ed, es, self.case, self.height_cm, self.weight_kg)
        except FunctionError as e:
            self.function, self.error = None, str(e)
            logger.warning("no function indices: %s", e)
        return self

    @property
    def status(self) -> str:
        return "ok" if self.function else "error" if self.error else "volumes only"

    @property
    def bsa_m2(self) -> float | None:
        try:
            return _bsa(self.case, self.height_cm, self.weight_kg)
        except FunctionError:
            return None

    def row(self) -> dict[str, Any]:
        """The CSV row (columns of :func:`report_columns`)."""
        row: dict[str, Any] = {
            "case": self.case,
            "kind": self.kind,
            "status": self.status,
            "inputs": "; ".join(Path(v.name).name for v in self.volumes),
            "height_cm": self.height_cm,
            "weight_kg": self.weight_kg,
            "bsa_m2": self.bsa_m2,
            "disagreement_score": self.quality_score,
            "quality_flag": self.quality_flag,
            "error": self.error,
        }
        if self.function:
            row |= {"ed_frame": self.function.ed_frame, "es_frame": self.function.es_frame}
            row |= self.function.indices()
        if self.kind == "volume" and self.volumes[0].n_frames == 1:
            row |= {f"{name}_ml": ml for name, ml in self.volumes[0].frame(0).items()}
        return row


def report_columns() -> list[str]:
    """CSV columns of the function report: identification, subject, indices, indexed indices, volumes, quality."""
    columns = ["case", "kind", "status", "inputs", "ed_frame", "es_frame", "height_cm", "weight_kg", "bsa_m2"]
    columns += [i.key for i in INDICES] + [f"{i.key}_m2" for i in INDICES if i.indexed]
    columns += [f"{lbl.name}_ml" for lbl in LABELS]
    return columns + ["disagreement_score", "quality_flag", "error"]


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _function_tables(function: CardiacFunction) -> list[str]:
    values = function.indices()
    header = ["Structure", *(f"{name} ({unit})" for name, _, unit in _TABLE)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for lbl in (LV, RV):
        cells = [_num(values.get(f"{lbl.name}_{suffix}")) for _, suffix, _ in _TABLE]
        lines.append("| " + " | ".join([lbl.abbreviation, *cells]) + " |")
    if function.bsa_m2:
        table = [t for t in _TABLE if t[1] != "ef_pct"]
        header = ["Structure", *(f"{name} ({unit}/m²)" for name, _, unit in table)]
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for lbl in (LV, RV):
            cells = [_num(values.get(f"{lbl.name}_{suffix}_m2")) for _, suffix, _ in table]
            lines.append("| " + " | ".join([lbl.abbreviation, *cells]) + " |")
    return lines


def _volume_table(volumes: Sequence[LabelVolumes]) -> list[str]:
    header = ["Input", "Frame", *(f"{lbl.abbreviation} (ml)" for lbl in LABELS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for v in volumes:
        for f in range(v.n_frames):
            cells = [_num(ml) for ml in v.frame(f).values()]
            lines.append("| " + " | ".join([Path(v.name).name, str(f), *cells]) + " |")
    return lines


def quality_text(case: FunctionCase, threshold: float | None, unavailable: str = "") -> str:
    """The quality line of a case: its score and whether it is flagged, or why there is no score."""
    if case.quality_score is None:
        return f"not available{f' ({unavailable})' if unavailable else ''}"
    score = f"FTN-STN disagreement score {case.quality_score:.3f}"
    if case.quality_flag:
        return f"**QUALITY FLAG**: {score} > threshold {threshold:g}; check the segmentation"
    return score + (f" (flagged above {threshold:g})" if threshold is not None else "")


def _case_section(case: FunctionCase, threshold: float | None, unavailable: str, plot: str | None) -> list[str]:
    title = f"## {case.case}: {KINDS.get(case.kind, case.kind)}" + (" (QUALITY FLAG)" if case.quality_flag else "")
    lines = [title, "", f"- Inputs: {', '.join(Path(v.name).name for v in case.volumes)}"]
    if case.function and case.function.ed_frame is not None:
        lines.append(f"- ED frame {case.function.ed_frame}, ES frame {case.function.es_frame} (counted from 0)")
    bsa = case.bsa_m2
    if bsa:
        lines.append(f"- Height {case.height_cm:g} cm, weight {case.weight_kg:g} kg, BSA {bsa:.2f} m² (Mosteller)")
    else:
        lines.append("- Height and weight not given: no indexed values")
    lines.append(f"- Quality: {quality_text(case, threshold, unavailable)}")
    if case.error:
        lines.append(f"- No function indices: {case.error}")
    lines.append("")
    lines += _function_tables(case.function) if case.function else _volume_table(case.volumes)
    if plot:
        lines += ["", f"![{case.case}: LV and RV volume per frame]({plot})"]
    return lines + [""]


def function_markdown(
    cases: Sequence[FunctionCase],
    quality_threshold: float | None = None,
    quality_unavailable: str = "",
    plots: Mapping[str, str] | None = None,
) -> str:
    """The markdown report: a summary, then one section per case with its table (units in the headers)."""
    counts = ", ".join(f"{sum(c.kind == k for c in cases)} {name}(s)" for k, name in KINDS.items())
    flagged = [c.case for c in cases if c.quality_flag]
    lines = [
        "# Cardiac function",
        "",
        f"{len(cases)} case(s): {counts}. Volumes in ml, LV mass in g (myocardium at ED x "
        f"{MYOCARDIUM_DENSITY_G_PER_ML} g/ml), EF in %, indexed values per m² of body surface area (Mosteller). "
        "In a cine, ED and ES are the frames with the largest and the smallest LV blood volume.",
        "",
    ]
    if quality_threshold is not None:
        lines.append(f"Quality: cases whose FTN-STN disagreement score exceeds {quality_threshold:g} are flagged.")
    lines += [f"Flagged cases: {', '.join(flagged) if flagged else 'none'}.", ""]
    for case in cases:
        lines += _case_section(case, quality_threshold, quality_unavailable, (plots or {}).get(case.case))
    return "\n".join(lines)


def write_function_report(
    cases: Sequence[FunctionCase],
    out_dir: str | os.PathLike,
    quality_threshold: float | None = None,
    quality_unavailable: str = "",
    plots: bool = True,
) -> list[Path]:
    """``function.csv`` (one row per case, :func:`report_columns`), ``function.md`` and, with ``plots``,
    ``<cine stem>_volume_time.png`` per cine, written atomically into ``out_dir`` (existing reports are replaced).

    ``quality_unavailable`` says why cases have no quality score (shown in the report)."""
    from ..files import write_csv_atomic, write_text_atomic
    from ..inference.inputs import volume_stem

    out_dir = Path(out_dir)
    written, plot_names = [], {}
    if plots:
        for case in cases:
            if case.kind == "cine":
                name = f"{volume_stem(case.volumes[0].name)}_volume_time.png"
                written.append(save_volume_time_plot(case.volumes[0], out_dir / name, case.function, case.case))
                plot_names[case.case] = name
    rows = [case.row() for case in cases]
    written.insert(0, write_csv_atomic(out_dir / "function.csv", rows, report_columns()))
    markdown = function_markdown(cases, quality_threshold, quality_unavailable, plot_names)
    written.insert(1, write_text_atomic(out_dir / "function.md", markdown))
    return written
