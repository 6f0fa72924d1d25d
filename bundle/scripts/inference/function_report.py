"""The cardiac function report of an inference run: ``function.csv``, ``function.md`` and volume-time curves.

A run's cases (:class:`FunctionCase`: a cine, an ED/ES pair or a single volume) carry the structure volumes and
function indices of :mod:`scripts.cardiac_function` and the quality score of :mod:`scripts.inference.quality`;
:func:`write_function_report` writes them as one CSV row per case (:func:`report_columns`), a markdown report with one
section per case (units in the table headers), and per cine a PNG of its LV and RV volumes per frame.
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

from ..cardiac_function import (
    INDICES,
    MYOCARDIUM_DENSITY_G_PER_ML,
    CardiacFunction,
    FunctionError,
    LabelVolumes,
    function_from_cine,
    function_from_pair,
    known_bsa,
)
from ..figures import pyplot, save_figure
from ..files import write_csv_atomic, write_text_atomic
from ..labels import LABELS, by_name
from .inputs import volume_stem

__all__ = [
    "KINDS",
    "FunctionCase",
    "function_markdown",
    "quality_text",
    "report_columns",
    "save_volume_time_plot",
    "write_function_report",
]

logger = logging.getLogger(__name__)

LV, RV = by_name("lv"), by_name("rv")


def save_volume_time_plot(
    cine: LabelVolumes, path: str | os.PathLike, function: CardiacFunction | None = None, title: str = ""
) -> Path:
    """PNG of the LV and RV blood volumes (ml) per frame of a cine, ED and ES marked when ``function`` is given."""
    frames = np.arange(cine.n_frames)
    fig, ax = pyplot().subplots(figsize=(6.0, 3.6))
    for lbl in (LV, RV):
        colour = tuple(c / 255.0 for c in lbl.color)
        ax.plot(frames, cine.ml[lbl.name], marker="o", markersize=3, color=colour, label=f"{lbl.abbreviation}")
    if function is not None and function.ed_frame is not None:
        for frame, phase, style in ((function.ed_frame, "ED", "--"), (function.es_frame, "ES", ":")):
            ax.axvline(frame, color="black", linestyle=style, linewidth=1, label=f"{phase} (frame {frame})")
    ax.locator_params(axis="x", integer=True)
    ax.set_xlabel("frame")
    ax.set_ylabel("volume (ml)")
    ax.set_title(title or cine.name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


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
            return known_bsa(self.case, self.height_cm, self.weight_kg)
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
