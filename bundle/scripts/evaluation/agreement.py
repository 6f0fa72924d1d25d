"""Agreement of function indices from predicted and reference segmentations, as the ACDC challenge's clinical
metrics: Pearson correlation, bias (mean of predicted - reference), 95 % limits of agreement (bias +- 1.96 SD of the
differences, sample SD), and Bland-Altman plots.

Inputs are cases of one test set: ``(subject, predicted CardiacFunction, reference CardiacFunction)``; indices are
those of :data:`AGREEMENT_INDICES` (volumes in ml, EF in %, LV mass in g).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..cardiac_function import INDICES, CardiacFunction, FunctionError, LabelVolumes, function_from_pair
from ..figures import pyplot, save_figure
from ..files import write_csv_atomic, write_text_atomic

__all__ = [
    "AGREEMENT_INDICES",
    "Agreement",
    "agreement",
    "agreement_rows",
    "bland_altman_plot",
    "function_pairs",
    "write_agreement_report",
]

logger = logging.getLogger(__name__)

AGREEMENT_INDICES = tuple(
    i for i in INDICES if i.key.endswith(("_edv_ml", "_esv_ml", "_ef_pct", "_mass_g"))
)  # LV EDV, ESV, EF, mass; RV EDV, ESV, EF
LOA_Z = 1.96

Case = tuple[str, CardiacFunction, CardiacFunction]


@dataclass(frozen=True)
class Agreement:
    """Agreement of ``n`` paired values: ``pearson_r``, ``bias`` (mean predicted - reference), ``sd`` (sample SD of
    the differences) and the limits of agreement; NaN where undefined (n < 2, or a constant series for r)."""

    n: int
    pearson_r: float
    bias: float
    sd: float

    @property
    def loa_lower(self) -> float:
        return self.bias - LOA_Z * self.sd

    @property
    def loa_upper(self) -> float:
        return self.bias + LOA_Z * self.sd


def agreement(predicted: Sequence[float], reference: Sequence[float]) -> Agreement:
    """:class:`Agreement` of paired values (pairs with a NaN are dropped)."""
    p, r = np.asarray(predicted, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if p.shape != r.shape or p.ndim != 1:
        raise ValueError(f"expected two 1D series of equal length, got shapes {p.shape} and {r.shape}.")
    keep = np.isfinite(p) & np.isfinite(r)
    p, r = p[keep], r[keep]
    n = int(p.size)
    diff = p - r
    bias = float(diff.mean()) if n else math.nan
    sd = float(diff.std(ddof=1)) if n > 1 else math.nan
    pearson = math.nan
    if n > 1 and p.std() > 0 and r.std() > 0:
        pearson = float(np.corrcoef(p, r)[0, 1])
    return Agreement(n, pearson, bias, sd)


def function_pairs(
    items: Sequence[tuple[Mapping[str, Any], LabelVolumes, LabelVolumes]], test_set: str = ""
) -> tuple[list[Case], list[str]]:
    """``(cases, notes)`` from per-volume ``(entry fields, predicted volumes, reference volumes)``.

    Volumes pair by the entry's ``subject`` when the subject has exactly one ``frame`` ``ED`` and one ``ES`` (any
    case); ``height_cm``/``weight_kg`` of the ED entry index the values. A subject whose reference labels give no
    indices (:class:`FunctionError`) is excluded; an implausible prediction (an ED volume not larger than the ES
    volume, an empty LV) is kept as it is (``strict=False``), since leaving it out would hide the network's
    failures. ``notes`` says, per subject, what was excluded or kept and why.
    """
    by_subject: dict[str, dict[str, list[tuple[Mapping[str, Any], LabelVolumes, LabelVolumes]]]] = {}
    for item in items:
        fields = item[0]
        frame = str(fields.get("frame", "")).upper()
        if fields.get("subject") is not None and frame in ("ED", "ES"):
            by_subject.setdefault(str(fields["subject"]), {"ED": [], "ES": []})[frame].append(item)
    cases, notes = [], []
    prefix = f"{test_set}/" if test_set else ""
    for subject, phases in by_subject.items():
        if len(phases["ED"]) != 1 or len(phases["ES"]) != 1:
            notes.append(f"excluded: {prefix}{subject}: {len(phases['ED'])} ED and {len(phases['ES'])} ES volumes")
            continue
        (fields, pred_ed, ref_ed), (_, pred_es, ref_es) = phases["ED"][0], phases["ES"][0]
        size = (fields.get("height_cm"), fields.get("weight_kg"))
        try:
            reference = function_from_pair(ref_ed, ref_es, f"{prefix}{subject} (reference)", *size)
            predicted = function_from_pair(pred_ed, pred_es, f"{prefix}{subject} (prediction)", *size, strict=False)
        except FunctionError as e:
            notes.append(f"excluded: {e}")
            continue
        try:
            function_from_pair(pred_ed, pred_es, f"{prefix}{subject} (prediction)", *size)
        except FunctionError as e:
            notes.append(f"kept, implausible: {e}")
        cases.append((subject, predicted, reference))
    return cases, notes


def _series(cases: Sequence[Case], key: str) -> tuple[np.ndarray, np.ndarray]:
    predicted = np.array([c[1].indices()[key] for c in cases], dtype=np.float64)
    return predicted, np.array([c[2].indices()[key] for c in cases], dtype=np.float64)


def agreement_rows(cases: Sequence[Case], test_set: str = "") -> list[dict[str, Any]]:
    """One row per index of :data:`AGREEMENT_INDICES`: ``test_set, index, name, unit, n, pearson_r, bias, sd,
    loa_lower, loa_upper, mean_predicted, mean_reference`` (values in the index's unit)."""
    rows = []
    for index in AGREEMENT_INDICES:
        predicted, reference = _series(cases, index.key)
        stats = agreement(predicted, reference)
        rows.append(
            {
                "test_set": test_set,
                "index": index.key,
                "name": index.heading,
                "unit": index.unit,
                "n": stats.n,
                "pearson_r": stats.pearson_r,
                "bias": stats.bias,
                "sd": stats.sd,
                "loa_lower": stats.loa_lower,
                "loa_upper": stats.loa_upper,
                "mean_predicted": float(predicted.mean()) if stats.n else math.nan,
                "mean_reference": float(reference.mean()) if stats.n else math.nan,
            }
        )
    return rows


def bland_altman_plot(cases: Sequence[Case], path: str | os.PathLike, title: str = "") -> Path:
    """One Bland-Altman panel per index: difference (predicted - reference) against the mean of the two, with the
    bias and the limits of agreement as lines; written as a PNG."""
    plt = pyplot()
    columns = 4
    rows = math.ceil(len(AGREEMENT_INDICES) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.0 * rows), squeeze=False)
    for ax, index in zip(axes.ravel(), AGREEMENT_INDICES, strict=False):
        predicted, reference = _series(cases, index.key)
        stats = agreement(predicted, reference)
        ax.scatter((predicted + reference) / 2, predicted - reference, s=12, color="tab:blue")
        for value, style in ((stats.bias, "-"), (stats.loa_lower, "--"), (stats.loa_upper, "--")):
            if math.isfinite(value):
                ax.axhline(value, color="black", linestyle=style, linewidth=1)
        ax.set_title(f"{index.heading} (n = {stats.n})", fontsize=9)
        ax.set_xlabel(f"mean ({index.unit})", fontsize=8)
        ax.set_ylabel(f"predicted - reference ({index.unit})", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(AGREEMENT_INDICES) :]:
        ax.axis("off")
    fig.suptitle(title)
    return save_figure(fig, path)


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _markdown(results: Mapping[str, Sequence[Case]], rows: Sequence[Mapping[str, Any]], notes: Mapping) -> str:
    lines = [
        "# Function indices: prediction (FTN+STN) vs reference",
        "",
        "Per test set and index, over the subjects with an ED and an ES volume: Pearson r, bias (mean of predicted - "
        f"reference) and 95 % limits of agreement (bias ± {LOA_Z} SD of the differences), as the ACDC challenge's "
        "clinical metrics. Volumes in ml, EF in %, LV mass in g (myocardium at ED x 1.05 g/ml); computed on the "
        "evaluation grid (resampled, cropped or padded as for the Dice).",
        "",
    ]
    header = "| Index (unit) | n | Pearson r | Bias | SD of differences | Limits of agreement | Mean predicted | " \
        "Mean reference |"  # fmt: skip
    for name in results:
        lines += [f"## {name}", "", header, "|" + "---|" * 8]
        for row in (r for r in rows if r["test_set"] == name):
            cells = [
                f"{row['name']} ({row['unit']})",
                str(row["n"]),
                _fmt(row["pearson_r"], 3),
                _fmt(row["bias"]),
                _fmt(row["sd"]),
                f"{_fmt(row['loa_lower'])} to {_fmt(row['loa_upper'])}",
                _fmt(row["mean_predicted"]),
                _fmt(row["mean_reference"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"![Bland-Altman plots, {name}]({_plot_name(name)})", ""]
        if notes.get(name):
            lines += ["Notes:", "", *(f"- {note}" for note in notes[name]), ""]
    return "\n".join(lines)


def _plot_name(test_set: str) -> str:
    return f"function_bland_altman_{re.sub(r'[^A-Za-z0-9_.-]+', '_', test_set)}.png"


def write_agreement_report(
    results: Mapping[str, Sequence[Case]],
    out_dir: str | os.PathLike,
    notes: Mapping[str, Sequence[str]] | None = None,
) -> list[Path]:
    """``function_agreement.csv`` (:func:`agreement_rows` of every test set), ``function_agreement.md`` (a table
    per test set and its ``notes``: subjects excluded or kept with implausible predictions), ``function_cases.csv``
    (each subject's predicted and reference indices) and ``function_bland_altman_<test set>.png``, written
    atomically into ``out_dir``."""
    out_dir, notes = Path(out_dir), dict(notes or {})
    rows = [row for name, cases in results.items() for row in agreement_rows(cases, name)]
    columns = list(rows[0]) if rows else ["test_set", "index"]
    written = [write_csv_atomic(out_dir / "function_agreement.csv", rows, columns)]
    written.append(write_text_atomic(out_dir / "function_agreement.md", _markdown(results, rows, notes)))
    per_case = [
        {"test_set": name, "subject": subject, "source": source, **function.indices()}
        for name, cases in results.items()
        for subject, *functions in cases
        for source, function in zip(("prediction", "reference"), functions, strict=True)
    ]
    case_columns = ["test_set", "subject", "source", *(i.key for i in INDICES)]
    written.append(write_csv_atomic(out_dir / "function_cases.csv", per_case, case_columns))
    for name, cases in results.items():
        written.append(bland_altman_plot(cases, out_dir / _plot_name(name), f"{name}: prediction vs reference"))
    return written
