"""The experiment's report, rebuilt from the ledger alone: tables per budget, learning curves, paired differences with
bootstrap intervals, what the curves show (:mod:`.verdict`), the same comparison for each run's model selected by
validation, and how well the quality score flags failed segmentations.

Written to ``docs/results/<tag>/``: ``report.md``, ``learning_curves.png``, ``differences.png``,
``quality_flag.png`` and ``summary.json`` (every number of the tables).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scripts.evaluation.quality_flag import quality_flag_analysis, quality_flag_markdown, quality_flag_plot
from scripts.evaluation.report import fmt
from scripts.figures import pyplot, save_figure
from scripts.files import write_json_atomic, write_text_atomic

from .ledger import Ledger
from .stats import ScoreTable, Trend, bootstrap_difference, bootstrap_trend, score_table, seed_differences
from .verdict import criterion, criterion_sentence, trend_markdown, verdict_markdown

__all__ = ["COMPARISONS", "write_report"]

COMPARISONS = (("cooperative", "standard"), ("cooperative", "augmented"), ("augmented", "standard"))
LABELS = {"standard": "standard", "augmented": "augmented", "cooperative": "cooperative"}
COLORS = {"standard": "tab:blue", "augmented": "tab:orange", "cooperative": "tab:green"}
COMPARISON_COLORS = {"cooperative-standard": "tab:green", "cooperative-augmented": "tab:purple",
                     "augmented-standard": "tab:orange"}  # fmt: skip


def _per_budget(rows: list[dict[str, Any]], budgets: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    return {b: [r for r in rows if r["iteration"] == b] for b in budgets}


def _group_average(summary: Mapping[str, float], groups: Mapping[str, str], group: str) -> float:
    members = [d for d, g in groups.items() if g == group and d in summary]
    return float(np.nanmean([summary[d] for d in members])) if members else math.nan


def _arm_stats(
    table: ScoreTable, arm: str, in_domain: str, shifted: Sequence[str], groups: Mapping[str, str]
) -> dict[str, dict[str, float]]:
    """Per summary column: mean, sd and range over seeds."""
    per_seed = []
    for seed in table.seeds(arm):
        summary = table.summary(arm, seed, in_domain, shifted)
        for group in sorted(set(groups.values()) - {"source"}):
            summary[f"group:{group}"] = _group_average(summary, groups, group)
        per_seed.append(summary)
    out = {}
    for key in per_seed[0] if per_seed else []:
        values = np.array([s[key] for s in per_seed], dtype=float)
        out[key] = {"mean": float(np.nanmean(values)), "sd": float(np.nanstd(values, ddof=1)) if len(values) > 1
                    else None, "min": float(np.nanmin(values)), "max": float(np.nanmax(values)), "n": len(values)}
    return out


def _compare(
    rows: list[dict[str, Any]], arms: Sequence[str], in_domain: str, shifted: Sequence[str], groups: Mapping[str, str]
) -> tuple[ScoreTable, dict[str, dict[str, Any]], dict[str, Any]]:
    """One set of models (one budget, or the validation-selected ones): the Dice table, each arm's statistics (HD95
    under ``hd95:<key>``) and the paired differences of :data:`COMPARISONS` with their intervals and per seed."""
    dice = score_table(rows, "dice_mean")
    hd95 = score_table(rows, "hd95_mean")
    stats: dict[str, dict[str, Any]] = {}
    for arm in (a for a in arms if a in dice.values):
        stats[arm] = _arm_stats(dice, arm, in_domain, shifted, groups)
        for key, value in _arm_stats(hd95, arm, in_domain, shifted, groups).items():
            stats[arm][f"hd95:{key}"] = value
    differences: dict[str, Any] = {}
    for a, b in COMPARISONS:
        if a in dice.values and b in dice.values and set(dice.seeds(a)) & set(dice.seeds(b)):
            boot = bootstrap_difference(dice, a, b, in_domain, shifted)
            per_seed = seed_differences(dice, a, b, in_domain, shifted)
            differences[f"{a}-{b}"] = {
                **{k: vars(v) for k, v in boot.items()},
                "per_seed": {str(s): {"in_domain": d["in_domain"], "shifted_avg": d["shifted_avg"]}
                             for s, d in per_seed.items()},  # fmt: skip
            }
    return dice, stats, differences


def _iteration_axis(ax: Any, budgets: Sequence[int]) -> None:
    """Iterations on a log2 axis, ticked at the budgets: doublings are equal steps and trend lines are straight."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=2)
    ax.set_xticks(list(budgets), [f"{b:,}" for b in budgets])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("training iterations (log scale)")


def _plot_curves(
    stats: dict[int, dict[str, dict[str, Any]]], arms: Sequence[str], budgets: Sequence[int], path: Path
) -> Path:
    plt = pyplot()
    panels = (("in_domain", "Dice", "In-domain Dice (FTN+STN)"), ("shifted_avg", "Dice", "Shifted average Dice"),
              ("hd95:in_domain", "HD95 (mm)", "In-domain HD95"), ("hd95:shifted_avg", "HD95 (mm)", "Shifted HD95"))
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, (key, ylabel, title) in zip(axes, panels, strict=True):
        for arm in arms:
            pts = [(b, stats[b][arm][key]) for b in budgets if arm in stats[b] and key in stats[b][arm]]
            if not pts:
                continue
            x = [b for b, _ in pts]
            mean = np.array([s["mean"] for _, s in pts])
            ax.plot(x, mean, "-o", color=COLORS.get(arm), label=LABELS.get(arm, arm), ms=4)
            ax.fill_between(x, [s["min"] for _, s in pts], [s["max"] for _, s in pts], color=COLORS.get(arm),
                            alpha=0.15)  # fmt: skip
        _iteration_axis(ax, budgets)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Mean over seeds (line) and range over seeds (band)", fontsize=9)
    return save_figure(fig, path)


def _plot_differences(
    differences: dict[int, dict[str, Any]], trends: Mapping[str, Trend | None], budgets: Sequence[int], path: Path
) -> Path:
    """Paired differences with their intervals; on the shifted panel, each trend line dashed."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, key in zip(axes, ("shifted_avg", "in_domain"), strict=True):
        for a, b in COMPARISONS:
            name = f"{a}-{b}"
            pts = [(x, differences[x][name][key]) for x in budgets if name in differences.get(x, {})]
            if not pts:
                continue
            xs = [x for x, _ in pts]
            ax.plot(xs, [d["mean"] for _, d in pts], "-o", ms=4, label=f"{a} - {b}", color=COMPARISON_COLORS.get(name))
            ax.fill_between(xs, [d["low"] for _, d in pts], [d["high"] for _, d in pts], alpha=0.15,
                            color=COMPARISON_COLORS.get(name))  # fmt: skip
            trend = trends.get(name)
            if key == "shifted_avg" and trend is not None:
                ends = np.array([trend.budgets[0], trend.budgets[-1]])  # a straight line on the log2 axis
                ax.plot(ends, trend.at(ends), "--", lw=1, color=COMPARISON_COLORS.get(name))
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(f"Paired Dice difference, {key.replace('_', ' ')} (95% bootstrap interval)", fontsize=10)
        _iteration_axis(ax, budgets)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Dashed: the trend line (least squares in log2 iterations)", fontsize=9)
    return save_figure(fig, path)


def write_report(
    ledger: Ledger,
    out_dir: Path,
    eval_key: str,
    in_domain: str,
    shifted: Sequence[str],
    groups: Mapping[str, str],
    arms: Sequence[str],
    budgets: Sequence[int],
    context: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Every output of the report (see the module docstring); returns the written paths."""
    context = dict(context or {})
    rows = list(ledger.rows(eval_key))
    if not rows:
        raise SystemExit(f"the ledger {ledger.root} holds no results for evaluation {eval_key} yet.")
    budgets = [b for b in budgets if any(r["iteration"] == b for r in rows)]
    by_budget = _per_budget(rows, budgets)
    stats: dict[int, dict[str, dict[str, Any]]] = {}
    differences: dict[int, dict[str, Any]] = {}
    tables: dict[int, ScoreTable] = {}
    for budget in budgets:
        tables[budget], stats[budget], differences[budget] = _compare(
            by_budget[budget], arms, in_domain, shifted, groups
        )
    selected = _selected(ledger, eval_key, arms, in_domain, shifted, groups)
    trends = {f"{a}-{b}": bootstrap_trend(tables, a, b, shifted) for a, b in COMPARISONS}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        _plot_curves(stats, arms, budgets, out_dir / "learning_curves.png"),
        _plot_differences(differences, trends, budgets, out_dir / "differences.png"),
    ]
    last = budgets[-1]
    cooperative_rows = [r for r in by_budget[last] if r["arm"] == "cooperative"]
    quality = quality_flag_analysis(cooperative_rows) if cooperative_rows else {}
    if quality.get("n_volumes"):
        written.append(quality_flag_plot(cooperative_rows, quality, out_dir / "quality_flag.png"))
    summary = {"context": context, "budgets": budgets, "in_domain": in_domain, "shifted": list(shifted),
               "groups": dict(groups), "stats": stats, "differences": differences, "criterion": criterion(differences),
               "trends": {k: vars(t) for k, t in trends.items() if t is not None}, "quality_flag": quality,
               "selected": selected, "runs": ledger.records()}  # fmt: skip
    written.append(write_json_atomic(out_dir / "summary.json", summary))
    text = _markdown(
        stats, differences, trends, tables[last], quality, in_domain, shifted, groups, arms, budgets, context, selected
    )
    written.append(write_text_atomic(out_dir / "report.md", text))
    return written


def _selected(
    ledger: Ledger,
    eval_key: str,
    arms: Sequence[str],
    in_domain: str,
    shifted: Sequence[str],
    groups: Mapping[str, str],
) -> dict[str, Any]:
    """The comparison of the validation-selected models (empty when the ledger holds none): ``stats``,
    ``differences``, ``criterion`` and, per arm and seed, the iteration and validation Dice of the model."""
    rows = list(ledger.rows(eval_key, selected=True))
    if not rows:
        return {}
    table, stats, differences = _compare(rows, arms, in_domain, shifted, groups)
    chosen: dict[str, dict[str, Any]] = {}
    for record in ledger.records():
        if record.get("selected") and int(record["seed"]) in table.seeds(record["arm"]):
            chosen.setdefault(record["arm"], {})[str(record["seed"])] = record["selected"]
    return {"stats": stats, "differences": differences, "criterion": criterion({0: differences}), "chosen": chosen}


def _selected_markdown(selected: Mapping[str, Any], arms: Sequence[str], in_domain: str, shifted: Sequence[str],
                       groups: Mapping[str, str], context: Mapping[str, Any]) -> list[str]:  # fmt: skip
    """The report's section on the models selected by validation (lines of Markdown)."""
    stats, differences, chosen = selected["stats"], selected["differences"], selected["chosen"]
    interval = (context.get("overrides") or {}).get("val_interval")
    every = f" (validated every {interval} epochs)" if interval else ""
    lines = ["## The model each run selected by validation", "",
             "Besides the model at each budget, every run keeps the model with the best validation Dice of FTN+STN "
             f"on the source domain's validation subjects{every}: the reference implementation's model selection, "
             "the same rule for every arm, never looking at a test set. Evaluated like the budgets' models.", "",
             "| arm | seeds | selected at (iterations, per seed) | validation Dice | in-domain | shifted avg | "
             "HD95 in-domain (mm) | HD95 shifted (mm) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for arm in (a for a in arms if a in stats):
        s, picks = stats[arm], chosen.get(arm, {})
        at = ", ".join(str(picks[k]["iteration"]) for k in sorted(picks, key=int)) or "-"
        val = [picks[k]["val_dice"] for k in picks]
        val_text = fmt(float(np.mean(val)), float(np.std(val, ddof=1)) if len(val) > 1 else None) if val else "-"
        cells = [arm, str(s["in_domain"]["n"]), at, val_text, fmt(s["in_domain"]["mean"], s["in_domain"]["sd"]),
                 fmt(s["shifted_avg"]["mean"], s["shifted_avg"]["sd"]),
                 fmt(s["hd95:in_domain"]["mean"], s["hd95:in_domain"]["sd"], 2),
                 fmt(s["hd95:shifted_avg"]["mean"], s["hd95:shifted_avg"]["sd"], 2)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| comparison | shifted avg [95% CI] | in-domain [95% CI] | per seed (shifted) |",
              "|---|---|---|---|"]
    for name, d in differences.items():
        lines.append(f"| {_difference_cells(name, d)} |")
    if selected["criterion"].get("parts"):
        lines += ["", f"The success criterion on these models: {criterion_sentence(selected['criterion'])}."]
    per_test_set = _per_test_set_lines(differences, [in_domain, *shifted], groups)
    if per_test_set:
        lines += ["", "Per test set (FTN+STN Dice, 95% CI):", "", *per_test_set]
    return lines


def _interval(value: Mapping[str, float]) -> str:
    """A difference with its 95 % interval: ``+0.012 [-0.010, +0.034]``."""
    return f"{value['mean']:+.3f} [{value['low']:+.3f}, {value['high']:+.3f}]"


def _difference_cells(name: str, difference: Mapping[str, Any]) -> str:
    """The cells of one comparison: name, shifted average and in-domain with intervals, shifted per seed."""
    seeds = ", ".join(f"{v['shifted_avg']:+.3f}" for v in difference["per_seed"].values())
    return (f"{name.replace('-', ' - ')} | {_interval(difference['shifted_avg'])} | "
            f"{_interval(difference['in_domain'])} | {seeds}")  # fmt: skip


def _per_test_set_lines(
    differences: Mapping[str, Any], domains: Sequence[str], groups: Mapping[str, str]
) -> list[str]:
    """A table of every comparison's difference per test set (empty when none was measured per test set)."""
    compared = [name for name in differences if domains[0] in differences[name]]
    if not compared:
        return []
    lines = ["| test set | group | " + " | ".join(n.replace("-", " - ") for n in compared) + " |",
             "|---|---|" + "---|" * len(compared)]  # fmt: skip
    for d in domains:
        cells = [d, groups.get(d, ""), *(_interval(differences[name][d]) for name in compared)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _markdown(
    stats: dict[int, dict[str, dict[str, Any]]],
    differences: dict[int, dict[str, Any]],
    trends: Mapping[str, Trend | None],
    last_table: ScoreTable,
    quality: dict[str, Any],
    in_domain: str,
    shifted: Sequence[str],
    groups: Mapping[str, str],
    arms: Sequence[str],
    budgets: Sequence[int],
    context: Mapping[str, Any],
    selected: Mapping[str, Any] | None = None,
) -> str:
    group_names = sorted(set(groups.values()) - {"source"})
    lines = [
        "# Robustness experiment: standard, augmented and cooperative training",
        "",
        "FTN+STN mean Dice per 3D volume (LV, MYO, RV averaged), averaged over each test set's volumes; the shifted "
        f"average is over {len(shifted)} shifted test sets. Mean ± sd over seeds (the mean alone from one seed); "
        "differences are paired by seed, with 95 % hierarchical bootstrap intervals over seeds and test volumes.",
        "",
        "![learning curves](learning_curves.png)",
        "",
        "![paired differences](differences.png)",
        "",
        "## Dice at every budget",
        "",
    ]
    header = ["iterations", "arm", "seeds", "in-domain", "shifted avg", *[f"{g}" for g in group_names],
              "HD95 in-domain (mm)", "HD95 shifted (mm)"]  # fmt: skip
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for b in budgets:
        for arm in (a for a in arms if a in stats[b]):
            s = stats[b][arm]
            cells = [str(b), arm, str(s["in_domain"]["n"]), fmt(s["in_domain"]["mean"], s["in_domain"]["sd"]),
                     fmt(s["shifted_avg"]["mean"], s["shifted_avg"]["sd"])]  # fmt: skip
            cells += [fmt(s[f"group:{g}"]["mean"], s[f"group:{g}"]["sd"]) for g in group_names]
            cells += [fmt(s["hd95:in_domain"]["mean"], s["hd95:in_domain"]["sd"], 2),
                      fmt(s["hd95:shifted_avg"]["mean"], s["hd95:shifted_avg"]["sd"], 2)]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Paired differences (FTN+STN Dice)", "",
              "| iterations | comparison | shifted avg [95% CI] | in-domain [95% CI] | per seed (shifted) |",
              "|---|---|---|---|---|"]  # fmt: skip
    for b in budgets:
        for name, d in differences[b].items():
            lines.append(f"| {b} | {_difference_cells(name, d)} |")
    lines += ["", *verdict_markdown(differences, [f"{a}-{b}" for a, b in COMPARISONS])]
    if any(t is not None for t in trends.values()):
        lines += ["", *trend_markdown(trends)]
    last = budgets[-1]
    domains = [in_domain, *shifted]
    lines += ["", f"## Every test set at {last} iterations (FTN+STN Dice, mean ± sd over seeds)", "",
              "| test set | group | " + " | ".join(a for a in arms if a in last_table.values) + " |",
              "|---|---|" + "---|" * len([a for a in arms if a in last_table.values])]  # fmt: skip
    for d in domains:
        cells = [d, groups.get(d, "")]
        for arm in (a for a in arms if a in last_table.values):
            values = [last_table.domain_mean(arm, s, d) for s in last_table.seeds(arm)]
            cells.append(fmt(float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None))
        lines.append("| " + " | ".join(cells) + " |")
    per_test_set = _per_test_set_lines(differences[last], domains, groups)
    if per_test_set:
        lines += ["", f"## Paired differences per test set at {last} iterations (FTN+STN Dice, 95% CI)", "",
                  *per_test_set]
    if selected:
        lines += ["", *_selected_markdown(selected, arms, in_domain, shifted, groups, context)]
    if quality.get("n_volumes"):
        lines += ["", "## Quality flag", "",
                  *quality_flag_markdown(quality, f"the cooperative model at {last} iterations, every test set and "
                                         "seed"),
                  "", "![quality flag](quality_flag.png)"]  # fmt: skip
    lines += ["", "## Setup", ""]
    lines += [f"- {k}: {v}" for k, v in context.items() if k != "descriptions"]
    if context.get("descriptions"):
        lines += ["", "## Test sets", "", *[f"- `{k}`: {v}" for k, v in context["descriptions"].items()]]
    lines += ["", "![test domains](domains.png)"]
    return "\n".join(lines) + "\n"
