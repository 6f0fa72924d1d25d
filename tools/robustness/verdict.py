"""What the learning curves show, in words: per budget whether one arm is ahead of another, from which budget it stays
ahead, and whether the experiment's success criterion is met, all read from the paired differences alone.

Each difference carries two 95 % intervals (:mod:`.stats`): the hierarchical bootstrap over seeds and subjects
(``low``, ``high``) and the t-interval over the per-seed differences (``t_low``, ``t_high``, when measured). **The
verdict uses both**: a difference ``a - b`` at one budget is *ahead* when both intervals lie above 0, *behind* when
both lie below 0 and *level* otherwise (an interval that could not be computed, from one seed, counts as holding 0).
The criterion (cooperative against standard at the largest budget, stated for FTN+STN): a gain of at least
``TARGET_GAIN`` on the shifted average with both intervals above 0, an in-domain difference of at least
``IN_DOMAIN_TOLERANCE``, from at least ``MIN_SEEDS`` seeds.

The trend (:class:`~.stats.Trend`) is a straight line through a difference against log2(iterations): *rising* when
the interval of its slope lies above 0, *falling* when below, *flat* otherwise. For cooperative against standard it
also says at which budget the line would reach ``TARGET_GAIN``, an extrapolation stated as such.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .stats import Trend

__all__ = [
    "IN_DOMAIN_TOLERANCE",
    "MIN_SEEDS",
    "TARGET_GAIN",
    "budget_verdicts",
    "criterion",
    "criterion_sentence",
    "trend_direction",
    "trend_markdown",
    "verdict_markdown",
]

TARGET_GAIN = 0.05
IN_DOMAIN_TOLERANCE = -0.01
MIN_SEEDS = 3


def _above_zero(difference: Mapping[str, float]) -> bool:
    """Whether every interval of ``difference`` lies above 0 (NaN bounds never do)."""
    return difference["low"] > 0 and ("t_low" not in difference or difference["t_low"] > 0)


def _below_zero(difference: Mapping[str, float]) -> bool:
    return difference["high"] < 0 and ("t_high" not in difference or difference["t_high"] < 0)


def _verdict(difference: Mapping[str, float]) -> str:
    if _above_zero(difference):
        return "ahead"
    if _below_zero(difference):
        return "behind"
    return "level"


def budget_verdicts(
    differences: Mapping[int, Mapping[str, Any]], comparison: str, measure: str = "shifted_avg"
) -> dict[int, str]:
    """``{budget: "ahead" | "behind" | "level"}`` of ``comparison`` (e.g. ``"cooperative-standard"``), in budget order,
    for the budgets where it was measured."""
    return {b: _verdict(d[comparison][measure]) for b, d in sorted(differences.items()) if comparison in d}


def stays_ahead_from(verdicts: Mapping[int, str]) -> int | None:
    """The smallest budget from which every later budget is "ahead", or None (also when the last is not)."""
    first = None
    for budget, verdict in sorted(verdicts.items()):
        if verdict != "ahead":
            first = None
        elif first is None:
            first = budget
    return first


def criterion(differences: Mapping[int, Mapping[str, Any]], comparison: str = "cooperative-standard") -> dict[str, Any]:
    """The success criterion at the largest budget where ``comparison`` was measured (see the module docstring)."""
    measured = [b for b, d in differences.items() if comparison in d]
    if not measured:
        return {"budget": None, "met": False}
    budget = max(measured)
    shifted, in_domain = differences[budget][comparison]["shifted_avg"], differences[budget][comparison]["in_domain"]
    parts = {
        "gain": shifted["mean"] >= TARGET_GAIN,
        "interval": _above_zero(shifted),
        "in_domain": in_domain["mean"] >= IN_DOMAIN_TOLERANCE,
        "seeds": int(shifted["n_seeds"]) >= MIN_SEEDS,
    }
    return {"budget": budget, "n_seeds": int(shifted["n_seeds"]), "parts": parts, "met": all(parts.values()),
            "shifted": shifted["mean"], "shifted_low": shifted["low"], "shifted_t_low": shifted.get("t_low"),
            "in_domain": in_domain["mean"]}  # fmt: skip


def verdict_markdown(
    differences: Mapping[int, Mapping[str, Any]], comparisons: Sequence[str], output: str = "FTN+STN",
    heading: str = "## What the curves show",
) -> list[str]:  # fmt: skip
    """The report's "What the curves show" section for one output (lines of Markdown)."""
    lines = [heading, "",
             f"{output}, per budget, shifted average: *ahead* when both 95 % intervals of the difference (bootstrap "
             "and t) lie above 0, *behind* when both lie below, *level* otherwise.", ""]  # fmt: skip
    for comparison in comparisons:
        verdicts = budget_verdicts(differences, comparison)
        if not verdicts:
            continue
        first = stays_ahead_from(verdicts)
        steps = ", ".join(f"{b}: {v} ({differences[b][comparison]['shifted_avg']['mean']:+.3f})"
                          for b, v in verdicts.items())  # fmt: skip
        a, b = comparison.split("-")
        last = max(verdicts)
        if first is None:
            tail = f"{a} is not ahead of {b} at the largest budget measured ({last})."
        elif first == last:
            tail = f"{a} is ahead only at the largest budget measured ({last})."
        else:
            tail = f"{a} is ahead at every budget from {first} to {last} iterations."
        lines.append(f"- {a} - {b}: {steps}. {tail}")
    result = criterion(differences)
    if result["budget"] is not None:
        lines += ["", f"Criterion at {result['budget']} iterations ({output}), {criterion_sentence(result)}."]
    return lines


def criterion_sentence(result: Mapping[str, Any]) -> str:
    """A measured :func:`criterion` in words: the numbers, then "met" or what is missing."""
    parts = result["parts"]
    missing = [text for key, text in (
        ("gain", f"a shifted gain of at least {TARGET_GAIN:+.2f}"),
        ("interval", "both intervals above 0"),
        ("in_domain", f"in-domain at least {IN_DOMAIN_TOLERANCE:+.2f}"),
        ("seeds", f"at least {MIN_SEEDS} seeds"),
    ) if not parts[key]]  # fmt: skip
    status = "met" if result["met"] else "not met (missing: " + "; ".join(missing) + ")"
    t_low = result.get("shifted_t_low")
    t_text = f", t-interval from {t_low:+.3f}" if t_low is not None and t_low == t_low else ""
    return (f"cooperative - standard with {result['n_seeds']} seed(s): shifted {result['shifted']:+.3f} (bootstrap "
            f"interval from {result['shifted_low']:+.3f}{t_text}), in-domain {result['in_domain']:+.3f}: "
            f"{status}")  # fmt: skip


def trend_direction(trend: Trend) -> str:
    """"rising", "falling" or "flat": where the 95 % interval of the slope lies."""
    if trend.low > 0:
        return "rising"
    if trend.high < 0:
        return "falling"
    return "flat"


MAX_EXTRAPOLATION = 1000


def _iterations(value: float, last: int) -> str:
    """An extrapolated budget in words; beyond ``MAX_EXTRAPOLATION`` times the largest one measured, only that."""
    if value > MAX_EXTRAPOLATION * last:
        return f"more than {MAX_EXTRAPOLATION:,} times the largest budget measured"
    return f"about {float(f'{value:.2g}'):,.0f} iterations"


def trend_markdown(
    trends: Mapping[str, Trend | None], target_comparison: str = "cooperative-standard", heading: str = "## Trend"
) -> list[str]:
    """The report's "Trend" section (lines of Markdown) for ``{comparison: Trend or None}``."""
    lines = [heading, "",
             "A straight line through each shifted-average difference against log2(iterations), fitted to the seeds "
             "that have every budget; its slope is the change per doubling of the budget, with a 95 % interval from "
             "the same hierarchical bootstrap (*rising* when the interval lies above 0, *falling* when below, *flat* "
             "otherwise). Budgets beyond the largest one measured are extrapolations of that line, not measurements.",
             ""]  # fmt: skip
    for comparison, trend in trends.items():
        if trend is None:
            continue
        a, b = comparison.split("-")
        last = trend.budgets[-1]
        text = (f"- {a} - {b} ({trend.n_seeds} seed(s), {trend.budgets[0]} to {last} iterations): "
                f"{trend.slope:+.3f} per doubling [{trend.low:+.3f}, {trend.high:+.3f}], {trend_direction(trend)}; "
                f"the line stands at {trend.at_last:+.3f} at {last}.")  # fmt: skip
        if comparison == target_comparison:
            text += " " + _target_sentence(trend)
        lines.append(text)
    return lines


def _target_sentence(trend: Trend) -> str:
    last = trend.budgets[-1]
    if trend.at_last >= TARGET_GAIN:
        return f"It is at or above {TARGET_GAIN:+.2f} within the measured budgets."
    at_point = trend.budget_reaching(TARGET_GAIN)
    direction = trend_direction(trend)
    if direction == "rising":
        slow, fast = trend.budget_reaching(TARGET_GAIN, trend.low), trend.budget_reaching(TARGET_GAIN, trend.high)
        return (f"Extrapolated from {last}, it reaches {TARGET_GAIN:+.2f} at {_iterations(at_point, last)} (from "
                f"{_iterations(fast, last)} to {_iterations(slow, last)} over the slope's interval).")  # fmt: skip
    if direction == "falling":
        return f"Falling, it points to no budget at which the gain would reach {TARGET_GAIN:+.2f}."
    fast = trend.budget_reaching(TARGET_GAIN, trend.high)
    point = (f"at its point estimate it would reach {TARGET_GAIN:+.2f} at {_iterations(at_point, last)}"
             if at_point is not None else f"at its point estimate it never reaches {TARGET_GAIN:+.2f}")  # fmt: skip
    steepest = (f"no sooner than {_iterations(fast, last)} even at the interval's steepest slope" if fast is not None
                else "not even at the interval's steepest slope")  # fmt: skip
    return (f"The interval holds a flat or falling line, so the curves point to no budget at which the gain reaches "
            f"{TARGET_GAIN:+.2f}; extrapolated from {last}, {point}, and {steepest}.")  # fmt: skip
