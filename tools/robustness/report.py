"""The experiment's report, rebuilt from the ledger alone.

Every table, curve and verdict shows the FTN's segmentation beside FTN+STN (the paper's final prediction); the
criterion is stated for FTN+STN and reported for the FTN too. Sections: which kind of model is settled enough to be
compared (raw snapshots, their weight average, cosine runs: the seed-to-seed spread of each), Dice at every budget,
paired differences with both intervals (:mod:`.stats`), what the curves show (:mod:`.verdict`), the trend, what the STN
adds (FTN+STN - FTN) per arm, the ablation of the STN's hard-example terms, every test set at the largest budget, the
models selected by validation, and how well the quality score flags failed segmentations.

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
from .stats import ScoreTable, Trend, bootstrap_contrast, bootstrap_trend, score_table, seed_contrasts, t_contrast
from .verdict import criterion, criterion_sentence, trend_markdown, verdict_markdown

__all__ = ["COMPARISONS", "OUTPUTS", "SPREAD_REFERENCE", "settled_model", "write_report"]

COMPARISONS = (("cooperative", "standard"), ("cooperative", "augmented"), ("augmented", "standard"))
# the outputs every table shows: FTN+STN (the paper's final prediction, the criterion's) and the FTN alone
OUTPUTS = ("ftn_stn", "ftn")
OUTPUT_LABELS = {"ftn_stn": "FTN+STN", "ftn": "FTN", "ftn_stn_post": "FTN+STN+post"}
COLORS = {"standard": "tab:blue", "augmented": "tab:orange", "cooperative": "tab:green"}
COMPARISON_COLORS = {"cooperative-standard": "tab:green", "cooperative-augmented": "tab:purple",
                     "augmented-standard": "tab:orange"}  # fmt: skip
MODEL_LABELS = {"raw": "raw snapshots", "ema": "weight averages (EMA)", "cosine": "warm-up + cosine runs"}
# the seed-to-seed sd of in-domain FTN+STN Dice of standard training at 1,500 iterations in the first protocol
# (single snapshots at a constant 1e-3): settled models should spread clearly less
SPREAD_REFERENCE = 0.060


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


def _contrast(table: ScoreTable, contrast: Mapping[str, float], in_domain: str, shifted: Sequence[str]) -> dict:
    """A contrast per test set, in-domain and shifted: the mean, the bootstrap interval (``low``, ``high``), the
    t-interval (``t_low``, ``t_high``), the seeds, and the shifted and in-domain contrast per seed."""
    boot = bootstrap_contrast(table, contrast, in_domain, shifted)
    t = t_contrast(table, contrast, in_domain, shifted)
    out: dict[str, Any] = {
        k: {**vars(v), "t_low": t[k].low, "t_high": t[k].high} for k, v in boot.items()
    }
    out["per_seed"] = {str(s): {"in_domain": d["in_domain"], "shifted_avg": d["shifted_avg"]}
                       for s, d in seed_contrasts(table, contrast, in_domain, shifted).items()}  # fmt: skip
    return out


def _has_seeds(table: ScoreTable, arms: Sequence[str]) -> bool:
    return all(a in table.values for a in arms) and bool(set.intersection(*(set(table.seeds(a)) for a in arms)))


def _compare(
    rows: list[dict[str, Any]], arms: Sequence[str], in_domain: str, shifted: Sequence[str], groups: Mapping[str, str]
) -> tuple[dict[str, ScoreTable], dict[str, Any]]:
    """One set of models (one budget of one model kind, or the validation-selected ones): the Dice table per output,
    and ``{"stats": {output: {arm: ...}}, "differences": {output: {comparison: ...}}, "stn_gain": {arm: ...}}`` (HD95
    and far false positives under ``hd95:<key>`` and ``far:<key>`` of the stats)."""
    present = {r["output"] for r in rows}
    outputs = [o for o in (*OUTPUTS, "ftn_stn_post") if o in present]
    tables: dict[str, ScoreTable] = {}
    result: dict[str, Any] = {"stats": {}, "differences": {}, "stn_gain": {}}
    for output in outputs:
        tables[output] = dice = score_table(rows, "dice_mean", output)
        extra = {f"{name}:": score_table(rows, metric, output) for name, metric in (("hd95", "hd95_mean"),
                 ("far", "far_all")) if all(metric in r for r in rows[:1])}  # fmt: skip
        stats: dict[str, Any] = {}
        for arm in (a for a in arms if a in dice.values):
            stats[arm] = _arm_stats(dice, arm, in_domain, shifted, groups)
            for prefix, table in extra.items():
                for key, value in _arm_stats(table, arm, in_domain, shifted, groups).items():
                    stats[arm][f"{prefix}{key}"] = value
        result["stats"][output] = stats
        result["differences"][output] = {
            f"{a}-{b}": _contrast(dice, {a: 1.0, b: -1.0}, in_domain, shifted)
            for a, b in COMPARISONS if _has_seeds(dice, (a, b))
        }  # fmt: skip
    if {"ftn", "ftn_stn"} <= present:
        both = score_table(rows, "dice_mean", ("ftn_stn", "ftn"), key="arm/output")
        for arm in arms:
            if _has_seeds(both, (f"{arm}/ftn_stn", f"{arm}/ftn")):
                result["stn_gain"][arm] = _contrast(both, {f"{arm}/ftn_stn": 1.0, f"{arm}/ftn": -1.0}, in_domain,
                                                    shifted)  # fmt: skip
    return tables, result


def settled_model(spread: Mapping[str, Mapping[int, Mapping[str, Any]]], budget: int) -> tuple[str | None, dict]:
    """The model kind whose largest seed-to-seed sd of in-domain FTN+STN Dice over the arms at ``budget`` is
    smallest, and ``{model: that sd}`` (kinds without a spread at ``budget`` left out)."""
    worst = {}
    for model, by_budget in spread.items():
        sds = [v["ftn_stn"] for v in by_budget.get(budget, {}).values() if v.get("ftn_stn") is not None]
        if sds:
            worst[model] = max(sds)
    return (min(worst, key=worst.get) if worst else None), worst


def _spread(results: Mapping[str, Mapping[int, Any]]) -> dict[str, dict[int, dict[str, dict[str, float | None]]]]:
    """``{model: {budget: {arm: {output: sd over seeds of in-domain Dice}}}}``."""
    out: dict[str, dict[int, dict[str, dict[str, float | None]]]] = {}
    for model, by_budget in results.items():
        for budget, result in by_budget.items():
            for output, stats in result["stats"].items():
                for arm, s in stats.items():
                    cell = out.setdefault(model, {}).setdefault(budget, {}).setdefault(arm, {})
                    cell[output] = s["in_domain"]["sd"]
    return out


def _iteration_axis(ax: Any, budgets: Sequence[int]) -> None:
    """Iterations on a log2 axis, ticked at the budgets: doublings are equal steps and trend lines are straight."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=2)
    ax.set_xticks(list(budgets), [f"{b:,}" for b in budgets])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("training iterations (log scale)")


def _plot_curves(results: Mapping[int, Any], arms: Sequence[str], budgets: Sequence[int], path: Path) -> Path:
    plt = pyplot()
    panels = (("in_domain", "Dice", "In-domain Dice"), ("shifted_avg", "Dice", "Shifted average Dice"),
              ("hd95:in_domain", "HD95 (mm)", "In-domain HD95"), ("hd95:shifted_avg", "HD95 (mm)", "Shifted HD95"))
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, (key, ylabel, title) in zip(axes, panels, strict=True):
        for arm in arms:
            for output, style in (("ftn_stn", "-o"), ("ftn", "--s")):
                pts = [(b, results[b]["stats"].get(output, {}).get(arm, {}).get(key)) for b in budgets]
                pts = [(b, s) for b, s in pts if s is not None]
                if not pts:
                    continue
                x = [b for b, _ in pts]
                ax.plot(x, [s["mean"] for _, s in pts], style, color=COLORS.get(arm), ms=4,
                        label=f"{arm} {OUTPUT_LABELS[output]}")  # fmt: skip
                if output == "ftn_stn":
                    ax.fill_between(x, [s["min"] for _, s in pts], [s["max"] for _, s in pts], color=COLORS.get(arm),
                                    alpha=0.15)  # fmt: skip
        _iteration_axis(ax, budgets)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("FTN+STN (solid, band: range over seeds) and FTN (dashed), mean over seeds", fontsize=9)
    return save_figure(fig, path)


def _plot_differences(
    results: Mapping[int, Any], trends: Mapping[str, Mapping[str, Trend | None]], budgets: Sequence[int], path: Path
) -> Path:
    """Paired differences with their bootstrap intervals, FTN+STN (top) and FTN (bottom); on the shifted panels,
    each trend line dashed."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.2), sharey=True, squeeze=False)
    for row, output in enumerate(OUTPUTS):
        for ax, key in zip(axes[row], ("shifted_avg", "in_domain"), strict=True):
            for a, b in COMPARISONS:
                name = f"{a}-{b}"
                pts = [(x, results[x]["differences"].get(output, {}).get(name, {}).get(key)) for x in budgets]
                pts = [(x, d) for x, d in pts if d is not None]
                if not pts:
                    continue
                xs = [x for x, _ in pts]
                ax.plot(xs, [d["mean"] for _, d in pts], "-o", ms=4, label=f"{a} - {b}",
                        color=COMPARISON_COLORS.get(name))  # fmt: skip
                ax.fill_between(xs, [d["low"] for _, d in pts], [d["high"] for _, d in pts], alpha=0.15,
                                color=COMPARISON_COLORS.get(name))  # fmt: skip
                trend = trends.get(output, {}).get(name)
                if key == "shifted_avg" and trend is not None:
                    ends = np.array([trend.budgets[0], trend.budgets[-1]])  # a straight line on the log2 axis
                    ax.plot(ends, trend.at(ends), "--", lw=1, color=COMPARISON_COLORS.get(name))
            ax.axhline(0, color="black", lw=0.8)
            ax.set_title(f"{OUTPUT_LABELS[output]}: paired Dice difference, {key.replace('_', ' ')}", fontsize=10)
            _iteration_axis(ax, budgets)
            ax.grid(alpha=0.3)
        axes[row][0].legend(fontsize=8)
    fig.suptitle("Bands: 95 % hierarchical bootstrap interval; dashed: the trend line (least squares in log2 "
                 "iterations)", fontsize=9)  # fmt: skip
    return save_figure(fig, path)


def _rows_by(rows: Sequence[dict[str, Any]]) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """``{model: {iteration: rows}}``."""
    out: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for row in rows:
        out.setdefault(row.get("model", "raw"), {}).setdefault(int(row["iteration"]), []).append(row)
    return out


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
    model: str | None = None,
    ablation: tuple[Sequence[str], int] | None = None,
) -> list[Path]:
    """Every output of the report (see the module docstring); returns the written paths.

    ``model``: the kind of model the tables and verdicts use (default: :func:`settled_model` at the largest budget);
    ``ablation``: ``(arms, budget)`` of the ablation, reported when the ledger holds it.
    """
    context = dict(context or {})
    rows = list(ledger.rows(eval_key))
    if not rows:
        raise SystemExit(f"the ledger {ledger.root} holds no results for evaluation {eval_key} yet.")
    by_model = _rows_by(rows)
    main_arms = list(arms)
    results: dict[str, dict[int, Any]] = {}
    tables: dict[str, dict[int, dict[str, ScoreTable]]] = {}
    for kind, by_budget in by_model.items():
        for budget in (b for b in budgets if b in by_budget):
            main_rows = [r for r in by_budget[budget] if r["arm"] in main_arms]
            if not main_rows:
                continue
            table, result = _compare(main_rows, main_arms, in_domain, shifted, groups)
            tables.setdefault(kind, {})[budget], results.setdefault(kind, {})[budget] = table, result
    if not results:
        raise SystemExit(f"the ledger {ledger.root} holds no model of the arms {main_arms} at {list(budgets)}.")
    spread = _spread(results)
    chosen, worst = settled_model(spread, max(b for r in results.values() for b in r))
    if model is None or model not in results:
        model = chosen if chosen is not None else next(iter(results))
    primary, primary_tables = results[model], tables[model]
    budgets = [b for b in budgets if b in primary]
    trends = {o: {f"{a}-{b}": bootstrap_trend({x: t[o] for x, t in primary_tables.items() if o in t}, a, b, shifted)
                  for a, b in COMPARISONS} for o in OUTPUTS}  # fmt: skip
    criteria = {o: criterion({b: primary[b]["differences"].get(o, {}) for b in budgets}) for o in OUTPUTS}
    ablation_result = _ablation(by_model.get(model, {}), ablation, in_domain, shifted, groups)
    selected = _selected(ledger, eval_key, main_arms, in_domain, shifted, groups)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        _plot_curves(primary, main_arms, budgets, out_dir / "learning_curves.png"),
        _plot_differences(primary, trends, budgets, out_dir / "differences.png"),
    ]
    last = budgets[-1]
    cooperative_rows = [r for r in by_model[model][last] if r["arm"] == "cooperative"]
    quality = quality_flag_analysis(cooperative_rows) if cooperative_rows else {}
    if quality.get("n_volumes"):
        written.append(quality_flag_plot(cooperative_rows, quality, out_dir / "quality_flag.png"))
    summary = {"context": context, "budgets": budgets, "in_domain": in_domain, "shifted": list(shifted),
               "groups": dict(groups), "model": model, "models": {k: sorted(v) for k, v in results.items()},
               "spread": spread, "settled": {"budget": last, "largest_sd": worst, "chosen": chosen},
               "results": results, "criterion": criteria,
               "trends": {o: {k: vars(t) for k, t in ts.items() if t is not None} for o, ts in trends.items()},
               "ablation": ablation_result, "quality_flag": quality, "selected": selected,
               "runs": ledger.records()}  # fmt: skip
    written.append(write_json_atomic(out_dir / "summary.json", summary))
    text = _markdown(results, model, spread, worst, trends, primary_tables[last], quality, in_domain, shifted, groups,
                     main_arms, budgets, context, selected, ablation_result)  # fmt: skip
    written.append(write_text_atomic(out_dir / "report.md", text))
    return written


def _ablation(
    by_budget: Mapping[int, list[dict[str, Any]]],
    ablation: tuple[Sequence[str], int] | None,
    in_domain: str,
    shifted: Sequence[str],
    groups: Mapping[str, str],
) -> dict[str, Any]:
    """The ablation at its budget (empty when not measured): per arm the stats and what the STN adds, and per
    ablation arm the change of what the STN adds, of FTN+STN and of the FTN against the cooperative arm."""
    if ablation is None or ablation[1] not in by_budget:
        return {}
    ablation_arms, budget = list(ablation[0]), ablation[1]
    arms = ["cooperative", "standard", *ablation_arms]
    rows = [r for r in by_budget[budget] if r["arm"] in arms]
    if not any(r["arm"] in ablation_arms for r in rows):
        return {}
    present = [a for a in arms if any(r["arm"] == a for r in rows)]
    _, result = _compare(rows, present, in_domain, shifted, groups)
    both = score_table(rows, "dice_mean", ("ftn_stn", "ftn"), key="arm/output")
    changes: dict[str, Any] = {}
    for arm in (a for a in ablation_arms if a in present):
        if not _has_seeds(both, (f"{arm}/ftn", "cooperative/ftn")):
            continue
        changes[arm] = {
            "stn_gain": _contrast(both, {f"{arm}/ftn_stn": 1.0, f"{arm}/ftn": -1.0, "cooperative/ftn_stn": -1.0,
                                         "cooperative/ftn": 1.0}, in_domain, shifted),
            "ftn_stn": _contrast(both, {f"{arm}/ftn_stn": 1.0, "cooperative/ftn_stn": -1.0}, in_domain, shifted),
            "ftn": _contrast(both, {f"{arm}/ftn": 1.0, "cooperative/ftn": -1.0}, in_domain, shifted),
        }  # fmt: skip
    return {"budget": budget, "arms": present, "stats": result["stats"], "stn_gain": result["stn_gain"],
            "changes": changes}  # fmt: skip


def _selected(
    ledger: Ledger,
    eval_key: str,
    arms: Sequence[str],
    in_domain: str,
    shifted: Sequence[str],
    groups: Mapping[str, str],
) -> dict[str, Any]:
    """The comparison of the validation-selected models (empty when the ledger holds none): :func:`_compare`'s
    result, ``criterion`` per output and, per arm and seed, the iteration and validation Dice of the model."""
    rows = [r for r in ledger.rows(eval_key, selected=True) if r["arm"] in arms]
    if not rows:
        return {}
    tables, result = _compare(rows, arms, in_domain, shifted, groups)
    dice = tables.get("ftn_stn") or next(iter(tables.values()))
    chosen: dict[str, dict[str, Any]] = {}
    for record in ledger.records():
        if record.get("selected") and record["arm"] in dice.values and int(record["seed"]) in dice.seeds(
            record["arm"]
        ):
            chosen.setdefault(record["arm"], {})[str(record["seed"])] = record["selected"]
    criteria = {o: criterion({0: result["differences"].get(o, {})}) for o in OUTPUTS}
    return {**result, "criterion": criteria, "chosen": chosen}


# Markdown ------------------------------------------------------------------------------------------------------
def _interval(value: Mapping[str, float]) -> str:
    """A contrast with its bootstrap interval: ``+0.012 [-0.010, +0.034]``."""
    return f"{value['mean']:+.3f} [{value['low']:+.3f}, {value['high']:+.3f}]"


def _t_interval(value: Mapping[str, float]) -> str:
    """The t-interval of a contrast: ``[-0.020, +0.041]`` (``n/a`` from one seed)."""
    low, high = value.get("t_low"), value.get("t_high")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "n/a"
    return f"[{low:+.3f}, {high:+.3f}]"


def _contrast_cells(contrast: Mapping[str, Any]) -> list[str]:
    """Shifted average (bootstrap, t), in-domain (bootstrap, t) and the shifted contrast per seed."""
    seeds = ", ".join(f"{v['shifted_avg']:+.3f}" for v in contrast["per_seed"].values())
    return [_interval(contrast["shifted_avg"]), _t_interval(contrast["shifted_avg"]),
            _interval(contrast["in_domain"]), _t_interval(contrast["in_domain"]), seeds]  # fmt: skip


CONTRAST_HEADER = ("shifted avg [bootstrap 95% CI] | t 95% CI | in-domain [bootstrap 95% CI] | t 95% CI | "
                   "per seed (shifted)")


def _difference_lines(differences: Mapping[str, Mapping[str, Any]], label: str) -> list[str]:
    """Rows ``| label | output | comparison | cells |`` for every output and comparison."""
    lines = []
    for output in OUTPUTS:
        for name, d in differences.get(output, {}).items():
            cells = [label, OUTPUT_LABELS[output], name.replace("-", " - "), *_contrast_cells(d)]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _per_test_set_lines(
    differences: Mapping[str, Any], domains: Sequence[str], groups: Mapping[str, str]
) -> list[str]:
    """A table of every comparison's difference per test set, FTN+STN and FTN (empty when none was measured)."""
    columns = [(o, name) for o in OUTPUTS for name in differences.get(o, {})
               if domains[0] in differences[o][name]]  # fmt: skip
    if not columns:
        return []
    lines = ["| test set | group | " + " | ".join(f"{n.replace('-', ' - ')} ({OUTPUT_LABELS[o]})" for o, n in columns)
             + " |", "|---|---|" + "---|" * len(columns)]  # fmt: skip
    for d in domains:
        cells = [d, groups.get(d, ""), *(_interval(differences[o][n][d]) for o, n in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _stat(stats: Mapping[str, Any], output: str, arm: str, key: str, digits: int = 3) -> str:
    s = stats.get(output, {}).get(arm, {}).get(key)
    return fmt(s["mean"], s["sd"], digits) if s else "-"


def _settled_lines(
    spread: Mapping[str, Mapping[int, Mapping[str, Mapping[str, float | None]]]],
    worst: Mapping[str, float],
    model: str,
    arms: Sequence[str],
    budgets: Sequence[int],
) -> list[str]:
    lines = ["## Settled models", "",
             "Seed-to-seed sd of the in-domain Dice, FTN+STN / FTN, per kind of model evaluated. The first protocol's "
             f"single snapshots had {SPREAD_REFERENCE:.3f} (standard training, FTN+STN, 1,500 iterations).", "",
             "| model | arm | " + " | ".join(f"{b:,}" for b in budgets) + " |",
             "|---|---|" + "---|" * len(budgets)]  # fmt: skip

    def sd(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for kind, by_budget in spread.items():
        for arm in arms:
            cells = [f"{sd(by_budget.get(b, {}).get(arm, {}).get('ftn_stn'))} / "
                     f"{sd(by_budget.get(b, {}).get(arm, {}).get('ftn'))}" for b in budgets]  # fmt: skip
            lines.append(f"| {kind} | {arm} | " + " | ".join(cells) + " |")
    if worst:
        listed = ", ".join(f"{k} {v:.3f}" for k, v in worst.items())
        below = "below" if worst.get(model, math.inf) < SPREAD_REFERENCE else "not below"
        lines += ["", f"Largest sd over the arms at the largest budget (FTN+STN): {listed}. The tables and verdicts "
                  f"below use the **{MODEL_LABELS.get(model, model)}** ({model}), {below} {SPREAD_REFERENCE:.3f}."]
    return lines


def _markdown(
    results: Mapping[str, Mapping[int, Any]],
    model: str,
    spread: Mapping[str, Any],
    worst: Mapping[str, float],
    trends: Mapping[str, Mapping[str, Trend | None]],
    last_tables: Mapping[str, ScoreTable],
    quality: dict[str, Any],
    in_domain: str,
    shifted: Sequence[str],
    groups: Mapping[str, str],
    arms: Sequence[str],
    budgets: Sequence[int],
    context: Mapping[str, Any],
    selected: Mapping[str, Any],
    ablation: Mapping[str, Any],
) -> str:
    primary = results[model]
    group_names = sorted(set(groups.values()) - {"source"})
    lines = [
        "# Robustness experiment: standard, augmented and cooperative training",
        "",
        "Mean Dice per 3D volume (LV, MYO, RV averaged) of the FTN's segmentation and of FTN+STN (the paper's final "
        "prediction), averaged over each test set's volumes; the shifted average is over "
        f"{len(shifted)} shifted test sets. Mean ± sd over seeds (the mean alone from one seed). Differences are "
        "paired by seed, each with two 95 % intervals: a hierarchical bootstrap that resamples seeds, then the test "
        "subjects once per subject pool (a subject's ED and ES and every shifted copy made from it move together), "
        "and a t-interval over the per-seed differences. **Verdicts and the criterion use both**: a difference counts "
        "as ahead or behind only when both intervals exclude 0.",
        "",
        "![learning curves](learning_curves.png)",
        "",
        "![paired differences](differences.png)",
        "",
        *_settled_lines(spread, worst, model, arms, sorted({b for r in results.values() for b in r})),
        "",
        f"## Dice at every budget ({model} models)",
        "",
    ]
    header = ["iterations", "arm", "seeds", "in-domain FTN+STN", "in-domain FTN", "shifted FTN+STN", "shifted FTN",
              *[f"{g} (FTN+STN)" for g in group_names], "HD95 in-domain (mm)", "HD95 shifted (mm)",
              "far in-domain", "far shifted"]  # fmt: skip
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for b in budgets:
        stats = primary[b]["stats"]
        for arm in (a for a in arms if a in stats.get("ftn_stn", {})):
            n = stats["ftn_stn"][arm]["in_domain"]["n"]
            cells = [f"{b:,}", arm, str(n), _stat(stats, "ftn_stn", arm, "in_domain"), _stat(stats, "ftn", arm,
                     "in_domain"), _stat(stats, "ftn_stn", arm, "shifted_avg"), _stat(stats, "ftn", arm,
                     "shifted_avg")]  # fmt: skip
            cells += [_stat(stats, "ftn_stn", arm, f"group:{g}") for g in group_names]
            cells += [_stat(stats, "ftn_stn", arm, "hd95:in_domain", 2), _stat(stats, "ftn_stn", arm,
                      "hd95:shifted_avg", 2), _stat(stats, "ftn_stn", arm, "far:in_domain"),
                      _stat(stats, "ftn_stn", arm, "far:shifted_avg")]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "HD95 and far (the fraction of predicted voxels more than 20 mm from the true structure) are "
              "FTN+STN's.", "", "## Paired differences", "",
              f"| iterations | output | comparison | {CONTRAST_HEADER} |", "|---|---|---|---|---|---|---|---|"]
    for b in budgets:
        lines += _difference_lines(primary[b]["differences"], f"{b:,}")
    comparisons = [f"{a}-{b}" for a, b in COMPARISONS]
    for output in OUTPUTS:
        per_budget = {b: primary[b]["differences"].get(output, {}) for b in budgets}
        heading = "## What the curves show" if output == "ftn_stn" else "### The same for the FTN alone"
        lines += ["", *verdict_markdown(per_budget, comparisons, OUTPUT_LABELS[output], heading)]
        if output == "ftn":
            lines += ["", "The criterion is stated for FTN+STN; the FTN's line above is reported beside it."]
    for output in OUTPUTS:
        if any(t is not None for t in trends.get(output, {}).values()):
            lines += ["", *trend_markdown(trends[output], heading=f"## Trend ({OUTPUT_LABELS[output]})")]
    lines += ["", *_stn_gain_lines(primary, arms, budgets)]
    if ablation:
        lines += ["", *_ablation_lines(ablation)]
    last = budgets[-1]
    domains = [in_domain, *shifted]
    table_arms = [a for a in arms if a in last_tables.get("ftn_stn", ScoreTable({}, {}, {})).values]
    lines += ["", f"## Every test set at {last:,} iterations (Dice FTN+STN / FTN, mean ± sd over seeds)", "",
              "| test set | group | " + " | ".join(table_arms) + " |", "|---|---|" + "---|" * len(table_arms)]
    for d in domains:
        cells = [d, groups.get(d, "")]
        for arm in table_arms:
            parts = []
            for output in OUTPUTS:
                table = last_tables.get(output)
                values = [table.domain_mean(arm, s, d) for s in table.seeds(arm)] if table else []
                parts.append(fmt(float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None)
                             if values else "-")  # fmt: skip
            cells.append(" / ".join(parts))
        lines.append("| " + " | ".join(cells) + " |")
    per_test_set = _per_test_set_lines(primary[last]["differences"], domains, groups)
    if per_test_set:
        lines += ["", f"## Paired differences per test set at {last:,} iterations (Dice, bootstrap 95% CI)", "",
                  *per_test_set]
    others = [m for m in results if m != model and last in results[m]]
    if others:
        lines += ["", f"## The other models at {last:,} iterations", "",
                  "The same comparisons on the models the tables above do not use.", "",
                  f"| model | output | comparison | {CONTRAST_HEADER} |", "|---|---|---|---|---|---|---|---|"]
        for other in others:
            lines += _difference_lines(results[other][last]["differences"], other)
    if selected:
        lines += ["", *_selected_lines(selected, arms, context)]
    if quality.get("n_volumes"):
        lines += ["", "## Quality flag", "",
                  *quality_flag_markdown(quality, f"the cooperative {model} model at {last:,} iterations, every test "
                                         "set and seed"),
                  "", "![quality flag](quality_flag.png)"]  # fmt: skip
    lines += ["", "## Setup", ""]
    lines += [f"- {k}: {v}" for k, v in context.items() if k != "descriptions"]
    if context.get("descriptions"):
        lines += ["", "## Test sets", "", *[f"- `{k}`: {v}" for k, v in context["descriptions"].items()]]
    lines += ["", "![test domains](domains.png)"]
    return "\n".join(lines) + "\n"


def _stn_gain_lines(primary: Mapping[int, Any], arms: Sequence[str], budgets: Sequence[int]) -> list[str]:
    lines = ["## What the STN adds (FTN+STN - FTN)", "",
             "Per arm, the Dice of FTN+STN minus the FTN's, paired within each run. In the paper the STN adds about "
             "+0.02.", "", f"| iterations | arm | {CONTRAST_HEADER} |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for b in budgets:
        for arm in (a for a in arms if a in primary[b]["stn_gain"]):
            lines.append("| " + " | ".join([f"{b:,}", arm, *_contrast_cells(primary[b]["stn_gain"][arm])]) + " |")
    return lines


def _ablation_lines(ablation: Mapping[str, Any]) -> list[str]:
    budget, stats = ablation["budget"], ablation["stats"]
    lines = [f"## Ablation: which hard term moves FTN+STN - FTN ({budget:,} iterations)", "",
             "The cooperative arm with the STN's hard-example term on the FTN's segmentation of the hard image "
             "(`hard_shape`) or on the corrupted segmentation (`hard_corrupted_shape`) left out of the objective, or "
             "with the STN's parameters trained by the standard terms only (`stn_hard_training` false). The "
             "reference trains all of them; the bundle's default stays the reference's.", "",
             "| arm | seeds | in-domain FTN+STN | in-domain FTN | shifted FTN+STN | shifted FTN | STN adds, shifted "
             "[bootstrap] | t 95% CI | STN adds, in-domain [bootstrap] | t 95% CI |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for arm in ablation["arms"]:
        if arm not in stats.get("ftn_stn", {}):
            continue
        gain = ablation["stn_gain"].get(arm)
        gain_cells = _contrast_cells(gain)[:4] if gain else ["-"] * 4
        cells = [arm, str(stats["ftn_stn"][arm]["in_domain"]["n"]), _stat(stats, "ftn_stn", arm, "in_domain"),
                 _stat(stats, "ftn", arm, "in_domain"), _stat(stats, "ftn_stn", arm, "shifted_avg"),
                 _stat(stats, "ftn", arm, "shifted_avg"), *gain_cells]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    changes = ablation["changes"]
    if not changes:
        return lines
    lines += ["", "Against the cooperative arm, paired by seed:", "",
              f"| arm | change of | {CONTRAST_HEADER} |", "|---|---|---|---|---|---|---|"]
    what = {"stn_gain": "FTN+STN - FTN", "ftn_stn": "FTN+STN", "ftn": "FTN"}
    for arm, change in changes.items():
        for key, label in what.items():
            lines.append("| " + " | ".join([arm, label, *_contrast_cells(change[key])]) + " |")
    moved = {arm: c["stn_gain"]["shifted_avg"] for arm, c in changes.items()}
    largest = max(moved, key=lambda a: abs(moved[a]["mean"]))
    clear = [a for a, d in moved.items() if (d["low"] > 0 and d["t_low"] > 0) or (d["high"] < 0 and d["t_high"] < 0)]
    verdict = (f"{', '.join(clear)} change{'s' if len(clear) == 1 else ''} it with both intervals excluding 0"
               if clear else "no arm changes it with both intervals excluding 0")  # fmt: skip
    lines += ["", f"What the STN adds on the shifted average moves most in {largest} "
              f"({moved[largest]['mean']:+.3f} against the cooperative arm); {verdict}."]
    return lines


def _selected_lines(selected: Mapping[str, Any], arms: Sequence[str], context: Mapping[str, Any]) -> list[str]:
    """The report's section on the models selected by validation (lines of Markdown)."""
    stats, chosen = selected["stats"], selected["chosen"]
    interval = (context.get("overrides") or {}).get("val_interval")
    every = f" (validated every {interval} epochs)" if interval else ""
    lines = ["## The model each run selected by validation", "",
             "Besides the models at each budget, every run keeps the model with the best validation Dice of FTN+STN "
             f"on the source domain's validation subjects{every}: the reference implementation's model selection, "
             "the same rule for every arm, never looking at a test set. Evaluated like the budgets' models.", "",
             "| arm | seeds | selected at (iterations, per seed) | validation Dice | in-domain FTN+STN | in-domain FTN "
             "| shifted FTN+STN | shifted FTN |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for arm in (a for a in arms if a in stats.get("ftn_stn", {})):
        picks = chosen.get(arm, {})
        at = ", ".join(str(picks[k]["iteration"]) for k in sorted(picks, key=int)) or "-"
        val = [picks[k]["val_dice"] for k in picks]
        val_text = fmt(float(np.mean(val)), float(np.std(val, ddof=1)) if len(val) > 1 else None) if val else "-"
        cells = [arm, str(stats["ftn_stn"][arm]["in_domain"]["n"]), at, val_text,
                 _stat(stats, "ftn_stn", arm, "in_domain"), _stat(stats, "ftn", arm, "in_domain"),
                 _stat(stats, "ftn_stn", arm, "shifted_avg"), _stat(stats, "ftn", arm, "shifted_avg")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"| output | comparison | {CONTRAST_HEADER} |", "|---|---|---|---|---|---|---|"]
    for output in OUTPUTS:
        for name, d in selected["differences"].get(output, {}).items():
            lines.append("| " + " | ".join([OUTPUT_LABELS[output], name.replace("-", " - "), *_contrast_cells(d)])
                         + " |")  # fmt: skip
    for output in OUTPUTS:
        result = selected["criterion"].get(output, {})
        if result.get("parts"):
            lines += ["", f"The success criterion on these models ({OUTPUT_LABELS[output]}): "
                      f"{criterion_sentence(result)}."]
    return lines
