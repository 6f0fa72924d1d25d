"""What the learning curves show, in words: per budget whether one arm is ahead of another, from which budget it stays
ahead, and whether the experiment's success criterion is met, all read from the paired differences alone.

A difference ``a - b`` at one budget is *ahead* when its 95 % interval lies above 0, *behind* when it lies below 0 and
*level* otherwise. The criterion (cooperative against standard at the largest budget): a gain of at least
``TARGET_GAIN`` on the shifted average with its interval above 0, an in-domain difference of at least
``IN_DOMAIN_TOLERANCE``, from at least ``MIN_SEEDS`` seeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["IN_DOMAIN_TOLERANCE", "MIN_SEEDS", "TARGET_GAIN", "budget_verdicts", "criterion", "verdict_markdown"]

TARGET_GAIN = 0.05
IN_DOMAIN_TOLERANCE = -0.01
MIN_SEEDS = 3


def _verdict(difference: Mapping[str, float]) -> str:
    if difference["low"] > 0:
        return "ahead"
    if difference["high"] < 0:
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
        "interval": shifted["low"] > 0,
        "in_domain": in_domain["mean"] >= IN_DOMAIN_TOLERANCE,
        "seeds": int(shifted["n_seeds"]) >= MIN_SEEDS,
    }
    return {"budget": budget, "n_seeds": int(shifted["n_seeds"]), "parts": parts, "met": all(parts.values()),
            "shifted": shifted["mean"], "shifted_low": shifted["low"], "in_domain": in_domain["mean"]}  # fmt: skip


def verdict_markdown(differences: Mapping[int, Mapping[str, Any]], comparisons: Sequence[str]) -> list[str]:
    """The report's "What the curves show" section (lines of Markdown)."""
    lines = ["## What the curves show", "",
             "Per budget, shifted average: *ahead* when the 95 % interval of the difference lies above 0, *behind* "
             "when below, *level* otherwise.", ""]  # fmt: skip
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
        parts = result["parts"]
        missing = [text for key, text in (
            ("gain", f"a shifted gain of at least {TARGET_GAIN:+.2f}"),
            ("interval", "an interval above 0"),
            ("in_domain", f"in-domain at least {IN_DOMAIN_TOLERANCE:+.2f}"),
            ("seeds", f"at least {MIN_SEEDS} seeds"),
        ) if not parts[key]]  # fmt: skip
        status = "met" if result["met"] else "not met (missing: " + "; ".join(missing) + ")"
        lines += ["", f"Criterion at {result['budget']} iterations, cooperative - standard with {result['n_seeds']} "
                  f"seed(s): shifted {result['shifted']:+.3f} (interval from {result['shifted_low']:+.3f}), in-domain "
                  f"{result['in_domain']:+.3f}: {status}."]  # fmt: skip
    return lines
