"""Evaluation outputs: the per-volume CSV, markdown tables shaped like the paper's, box plots, multi-seed summaries.

Rows are dicts, one per volume and output, as :class:`scripts.evaluation.evaluate.VolumeMetricsCollector` makes
them: ``test_set``, ``output`` (``ftn_stn`` = STN(FTN(x)), the paper's prediction; ``ftn`` = FTN alone;
``ftn_stn_post`` = FTN + STN with the label clean-up), the entry's fields (``subject``, ``frame``, ``vendor`` ...) and
the metrics of :data:`scripts.evaluation.metrics.METRIC_KEYS` (``dice_lv`` ... ``far_all``, HD95 in mm, far false
positives as fractions of the predicted voxels).
A test set's score is the mean over its volumes; an average over test sets is the mean of the set scores, as the
paper's AVG columns are.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..figures import pyplot, save_figure
from ..files import write_csv_atomic, write_json_atomic, write_text_atomic
from ..labels import LABELS
from .metrics import METRIC_KEYS
from .quality_flag import quality_flag_analysis, quality_flag_markdown, quality_flag_plot

__all__ = [
    "OUTPUT_LABELS",
    "box_plot",
    "class_table",
    "fmt",
    "paper_table",
    "read_csv",
    "seed_summary",
    "seed_table",
    "set_means",
    "write_csv",
    "write_evaluation_report",
]

CLASS_LIST = ", ".join(lbl.abbreviation for lbl in LABELS)
OUTPUT_LABELS = {"ftn": "FTN", "ftn_stn": "FTN+STN", "ftn_stn_post": "FTN+STN+post"}
LEADING_COLUMNS = ("model", "method", "seed", "test_set", "subject", "frame", "output")


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """All rows as CSV (columns: identifiers, entry fields, metrics), written atomically."""
    columns: list[str] = [c for c in LEADING_COLUMNS if any(c in r for r in rows)]
    for row in rows:
        columns += [k for k in row if k not in columns and k not in METRIC_KEYS]
    columns += [m for m in METRIC_KEYS if any(m in r for r in rows)]
    return write_csv_atomic(path, rows, columns)


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV from :func:`write_csv`, metric columns as floats (empty or 'nan' -> NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for m in METRIC_KEYS:
            if m in row:
                row[m] = float(row[m]) if row[m] not in ("", None) else float("nan")
    return rows


def _nanmean(values: Iterable[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def set_means(
    rows: Sequence[Mapping[str, Any]], metric: str = "dice_mean", output: str = "ftn_stn", by: str = "test_set"
) -> dict[str, float]:
    """``{test set: mean of metric over its volumes}`` for one output (NaN values skipped)."""
    groups: dict[str, list[float]] = {}
    for r in rows:
        if r["output"] == output:
            groups.setdefault(str(r[by]), []).append(float(r[metric]))
    return {k: _nanmean(v) for k, v in groups.items()}


def fmt(value: float, spread: float | None = None, digits: int = 3) -> str:
    """``0.812`` or ``0.812 ± 0.014``; NaN -> ``n/a``."""
    if value is None or math.isnan(value):
        return "n/a"
    text = f"{value:.{digits}f}"
    if spread is not None and not math.isnan(spread):
        text += f" ± {spread:.{digits}f}"
    return text


def paper_table(
    rows: Sequence[Mapping[str, Any]],
    test_sets: Sequence[str],
    row_key: str = "model",
    row_order: Sequence[str] | None = None,
    row_labels: Mapping[str, str] | None = None,
) -> str:
    """The paper's table (its Table 1): one row per model, mean Dice per test set (FTN, as the paper's columns are),
    then AVG (FTN) and AVG (FTN+STN) over the test sets."""
    names = list(row_order or dict.fromkeys(str(r[row_key]) for r in rows))
    header = ["Method", *test_sets, "AVG (FTN)", "AVG (FTN+STN)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        subset = [r for r in rows if str(r[row_key]) == name]
        ftn = set_means(subset, output="ftn")
        ftn_stn = set_means(subset, output="ftn_stn")
        cells = [fmt(ftn.get(s, float("nan"))) for s in test_sets]
        cells += [
            fmt(_nanmean(ftn.get(s, float("nan")) for s in test_sets)),
            fmt(_nanmean(ftn_stn.get(s, float("nan")) for s in test_sets)),
        ]
        label = (row_labels or {}).get(name, name)
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def _metric_cell(values: Sequence[float], metric: str, spread: bool = True) -> str:
    """Mean (± sd) of a metric over volumes: Dice to 3 digits, HD95 in mm to 1, far false positives in %."""
    arr = np.array([float(v) for v in values], dtype=float)
    arr = arr[~np.isnan(arr)]
    if not arr.size:
        return "n/a"
    if metric.startswith("far"):
        scale, digits, unit = 100.0, 1, " %"
    else:
        scale, digits, unit = 1.0, 3 if metric.startswith("dice") else 1, ""
    return fmt(float(arr.mean()) * scale, float(arr.std()) * scale if spread else None, digits) + unit


def class_table(rows: Sequence[Mapping[str, Any]], test_sets: Sequence[str], output: str = "ftn_stn") -> str:
    """Per test set: Dice, HD95 (mm) and far false positives (%) per class, mean ± standard deviation over volumes,
    for one output."""
    header = ["Test set", "volumes"] + [f"Dice {lbl.abbreviation}" for lbl in LABELS] + ["Dice mean"]
    header += [f"HD95 {lbl.abbreviation}" for lbl in LABELS] + ["HD95 mean"]
    header += [f"far {lbl.abbreviation}" for lbl in LABELS] + ["far all"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in test_sets:
        subset = [r for r in rows if r["test_set"] == name and r["output"] == output]
        cells = [name, str(len(subset))]
        cells += [_metric_cell([r[metric] for r in subset if metric in r], metric) for metric in METRIC_KEYS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def output_table(rows: Sequence[Mapping[str, Any]], test_sets: Sequence[str], outputs: Sequence[str]) -> str:
    """Per test set, the outputs side by side: mean Dice, mean HD95 (mm) and far false positives (% of predicted
    voxels, all structures) over volumes."""
    header = ["Test set"]
    for metric in ("Dice", "HD95", "far"):
        header += [f"{metric} {OUTPUT_LABELS.get(o, o)}" for o in outputs]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in test_sets:
        cells = [name]
        for metric in ("dice_mean", "hd95_mean", "far_all"):
            for output in outputs:
                values = [r[metric] for r in rows if r["test_set"] == name and r["output"] == output and metric in r]
                cells.append(_metric_cell(values, metric, spread=False))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def box_plot(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    path: str | Path,
    test_sets: Sequence[str],
    group_key: str = "output",
    groups: Mapping[str, str] | None = None,
    output: str | None = None,
    title: str = "",
    ylabel: str = "",
) -> Path:
    """Grouped box plot of a per-volume ``metric``: one position per test set, one box per group.

    ``groups`` maps group values to legend labels (default: every value of ``group_key``); ``output`` keeps only
    rows of that output (``ftn_stn`` or ``ftn``).
    """
    plt = pyplot()
    if output is not None:
        rows = [r for r in rows if r["output"] == output]
    groups = dict(groups or {str(v): str(v) for v in dict.fromkeys(r[group_key] for r in rows)})
    n = len(groups)
    width = 0.8 / max(n, 1)
    colours = plt.get_cmap("tab10").colors
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(test_sets) * max(n, 1) + 2), 4.2))
    for j, (value, label) in enumerate(groups.items()):
        data, positions = [], []
        for i, name in enumerate(test_sets):
            values = [float(r[metric]) for r in rows if r["test_set"] == name and str(r[group_key]) == value]
            values = [v for v in values if not math.isnan(v)]
            if values:
                data.append(values)
                positions.append(i + (j - (n - 1) / 2) * width)
        if not data:
            continue
        parts = ax.boxplot(
            data,
            positions=positions,
            widths=width * 0.9,
            patch_artist=True,
            showfliers=True,
            flierprops={"markersize": 2},
            medianprops={"color": "black"},
        )
        for box in parts["boxes"]:
            box.set_facecolor(colours[j % len(colours)])
            box.set_alpha(0.7)
        ax.plot([], [], color=colours[j % len(colours)], linewidth=8, alpha=0.7, label=label)
    ax.set_xticks(range(len(test_sets)))
    ax.set_xticklabels(test_sets, rotation=30, ha="right")
    ax.set_ylabel(ylabel or metric)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_evaluation_report(
    rows: Sequence[Mapping[str, Any]], out_dir: str | Path, test_sets: Sequence[str]
) -> list[Path]:
    """``volumes.csv``, ``results.md`` (paper-shaped table + per-class tables), ``summary.json``,
    ``dice_boxplot.png`` and ``hd95_boxplot.png`` for one evaluated model; where the rows carry the FTN-STN
    disagreement score, also how well it flags failed volumes (AUROC, a threshold, ``quality_flag.png``)."""

    out_dir = Path(out_dir)
    written = [write_csv(rows, out_dir / "volumes.csv")]
    test_sets = list(test_sets)
    outputs = [o for o in OUTPUT_LABELS if any(r["output"] == o for r in rows)]
    parts = [
        "# Evaluation",
        "",
        "Mean Dice per 3D volume (patient x frame), averaged over the volumes of each test "
        "set; columns show the FTN, as the paper's table does, and the averages over test sets with and without "
        "the STN.",
        "",
        paper_table(rows, test_sets),
        "",
        "## Outputs side by side",
        "",
        "Mean over volumes of the mean Dice and HD95 (mm) over LV, MYO and RV, and of the far false positives (the "
        "predicted voxels more than 20 mm from the same structure in the reference, % of all predicted voxels).",
        "",
        output_table(rows, test_sets, outputs),
        "",
    ]
    for output in reversed(outputs):
        parts += [
            f"## {OUTPUT_LABELS[output]}: per class (mean ± sd over volumes; HD95 in mm; far false positives in %)",
            "",
            class_table(rows, test_sets, output),
            "",
        ]
    vendor_rows = [r for r in rows if r.get("vendor")]
    if vendor_rows:
        parts += [
            "## Per vendor (FTN+STN)",
            "",
            class_table(
                [{**r, "test_set": f"{r['test_set']} / {r['vendor']}"} for r in vendor_rows],
                sorted({f"{r['test_set']} / {r['vendor']}" for r in vendor_rows}),
            ),
            "",
        ]
    quality = quality_flag_analysis(rows)
    if "auroc" in quality["all"]:
        parts += ["## Quality flag", "", *quality_flag_markdown(quality, f"this model over {', '.join(test_sets)}"),
                  "", "![quality flag](quality_flag.png)", ""]  # fmt: skip
        written.append(quality_flag_plot(rows, quality, out_dir / "quality_flag.png"))
    written.append(write_text_atomic(out_dir / "results.md", "\n".join(parts)))
    summary = {
        output: {
            "per_set": set_means(rows, output=output),
            "average": _nanmean(set_means(rows, output=output).get(s, float("nan")) for s in test_sets),
        }
        for output in outputs
    }
    summary["quality_flag"] = quality
    written.append(write_json_atomic(out_dir / "summary.json", summary))
    groups = {o: OUTPUT_LABELS[o] for o in outputs}
    written.append(
        box_plot(
            rows,
            "dice_mean",
            out_dir / "dice_boxplot.png",
            test_sets,
            groups=groups,
            title=f"Dice per volume (mean of {CLASS_LIST})",
            ylabel="Dice",
        )
    )
    written.append(
        box_plot(
            rows,
            "hd95_mean",
            out_dir / "hd95_boxplot.png",
            test_sets,
            groups=groups,
            title=f"HD95 per volume (mean of {CLASS_LIST})",
            ylabel="HD95 (mm)",
        )
    )
    return written


def _seed_set_means(
    rows: Sequence[Mapping[str, Any]], group_key: str, metric: str, output: str
) -> dict[tuple[str, str, str], float]:
    """``{(group, seed, test set): mean over volumes}``."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        if r["output"] == output:
            groups.setdefault((str(r[group_key]), str(r["seed"]), str(r["test_set"])), []).append(float(r[metric]))
    return {k: _nanmean(v) for k, v in groups.items()}


def _stats(values: Sequence[float]) -> dict[str, float]:
    arr = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return {"mean": float("nan"), "sd": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    sd = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "sd": sd, "min": float(arr.min()), "max": float(arr.max()), "n": int(arr.size)}


def seed_summary(
    rows: Sequence[Mapping[str, Any]],
    test_sets: Sequence[str],
    in_domain: str,
    groups: Sequence[str],
    group_key: str = "method",
    metric: str = "dice_mean",
    output: str = "ftn_stn",
) -> dict[str, Any]:
    """Per group and seed: every test set's mean, the in-domain score and the average over the shifted sets; then
    mean, sd (over seeds), min and max of each, and the paired per-seed differences of each group to ``groups[0]``.
    """
    means = _seed_set_means(rows, group_key, metric, output)
    shifted = [s for s in test_sets if s != in_domain]
    out: dict[str, Any] = {"metric": metric, "output": output, "in_domain": in_domain, "shifted": shifted, "groups": {}}
    per_seed: dict[str, dict[str, dict[str, float]]] = {}
    for group in groups:
        seeds = sorted({k[1] for k in means if k[0] == group}, key=lambda s: (len(s), s))
        scores = {}
        for seed in seeds:
            sets = {s: means.get((group, seed, s), float("nan")) for s in test_sets}
            scores[seed] = {
                **sets,
                "in_domain": sets.get(in_domain, float("nan")),
                "shifted_avg": _nanmean(sets[s] for s in shifted),
                "all_avg": _nanmean(sets.values()),
            }
        per_seed[group] = scores
        keys = [*test_sets, "in_domain", "shifted_avg", "all_avg"]
        out["groups"][group] = {"per_seed": scores, **{k: _stats([v[k] for v in scores.values()]) for k in keys}}
    base = groups[0]
    for group in groups[1:]:
        common = [s for s in per_seed[group] if s in per_seed[base]]
        deltas = {
            k: _stats([per_seed[group][s][k] - per_seed[base][s][k] for s in common])
            for k in ("in_domain", "shifted_avg", "all_avg", *test_sets)
        }
        out["groups"][group]["delta_vs_" + base] = {**deltas, "seeds": common}
    return out


def seed_table(
    summary: Mapping[str, Any], test_sets: Sequence[str], labels: Mapping[str, str] | None = None, digits: int = 3
) -> str:
    """Markdown: one row per group, mean ± sd over seeds per test set, in-domain, shifted average, all average;
    then a row per compared group with the paired per-seed difference."""
    header = ["Method", *test_sets, "in-domain", "AVG shifted", "AVG all"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = [*test_sets, "in_domain", "shifted_avg", "all_avg"]
    for group, stats in summary["groups"].items():
        name = (labels or {}).get(group, group)
        lines.append("| " + " | ".join([name] + [fmt(stats[k]["mean"], stats[k]["sd"], digits) for k in keys]) + " |")
    for group, stats in summary["groups"].items():
        for key, delta in stats.items():
            if key.startswith("delta_vs_"):
                base = key[len("delta_vs_") :]
                name = f"Δ {(labels or {}).get(group, group)} − {(labels or {}).get(base, base)}"
                cells = [f"{delta[k]['mean']:+.{digits}f} ± {delta[k]['sd']:.{digits}f}" for k in keys]
                lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)
