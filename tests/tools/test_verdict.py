"""The report's verdicts read from paired differences: ahead/behind/level per budget, from which budget an arm stays
ahead, and the success criterion with each of its parts."""

from __future__ import annotations

from tools.robustness.stats import Trend
from tools.robustness.verdict import (
    budget_verdicts,
    criterion,
    stays_ahead_from,
    trend_direction,
    trend_markdown,
    verdict_markdown,
)


def _difference(mean: float, low: float, high: float, n_seeds: int = 3, in_domain: float = 0.0) -> dict:
    around = {"low": in_domain - 0.02, "high": in_domain + 0.02}
    return {"shifted_avg": {"mean": mean, "low": low, "high": high, "n_seeds": n_seeds},
            "in_domain": {"mean": in_domain, **around, "n_seeds": n_seeds}}  # fmt: skip


def _differences(*per_budget: dict) -> dict:
    budgets = (250, 500, 1000, 1500)
    return {b: {"cooperative-standard": d} for b, d in zip(budgets, per_budget, strict=False)}


def test_verdict_per_budget_follows_the_interval() -> None:
    differences = _differences(_difference(0.02, -0.01, 0.05), _difference(-0.03, -0.05, -0.01),
                               _difference(0.04, 0.01, 0.07), _difference(0.06, 0.03, 0.09))  # fmt: skip
    assert budget_verdicts(differences, "cooperative-standard") == {250: "level", 500: "behind", 1000: "ahead",
                                                                    1500: "ahead"}  # fmt: skip
    assert budget_verdicts(differences, "cooperative-augmented") == {}


def test_stays_ahead_from_needs_every_later_budget() -> None:
    assert stays_ahead_from({250: "ahead", 500: "level", 1000: "ahead", 1500: "ahead"}) == 1000
    assert stays_ahead_from({250: "ahead", 500: "ahead", 1000: "ahead", 1500: "level"}) is None
    assert stays_ahead_from({250: "ahead", 500: "ahead"}) == 250
    assert stays_ahead_from({}) is None


def test_criterion_names_each_missing_part() -> None:
    met = criterion(_differences(_difference(0.06, 0.02, 0.10, in_domain=-0.005)))
    assert met["met"] and met["budget"] == 250
    small = criterion(_differences(_difference(0.0, -0.1, 0.1), _difference(0.04, 0.01, 0.07)))
    assert small["budget"] == 500 and not small["met"]
    assert small["parts"] == {"gain": False, "interval": True, "in_domain": True, "seeds": True}
    one_seed = criterion(_differences(_difference(0.08, 0.05, 0.11, n_seeds=1, in_domain=-0.02)))
    assert one_seed["parts"] == {"gain": True, "interval": True, "in_domain": False, "seeds": False}
    text = "\n".join(verdict_markdown(_differences(_difference(0.08, 0.05, 0.11, n_seeds=1)),
                                      ["cooperative-standard"]))  # fmt: skip
    assert "not met (missing: at least 3 seeds)" in text and "250: ahead (+0.080)" in text
    assert criterion({250: {}})["met"] is False


def _trend(slope: float, low: float, high: float, at_last: float) -> Trend:
    return Trend(slope, low, high, at_last, [250, 500, 1000, 1500], 3)


def test_trend_says_where_the_line_points_and_no_further() -> None:
    rising = _trend(0.02, 0.01, 0.03, 0.01)
    assert trend_direction(rising) == "rising" and trend_direction(_trend(-0.02, -0.03, -0.01, 0.0)) == "falling"
    assert rising.budget_reaching(0.05) == 1500 * 2**2  # +0.04 at +0.02 per doubling
    text = "\n".join(trend_markdown({"cooperative-standard": rising, "augmented-standard": None}))
    assert "+0.020 per doubling [+0.010, +0.030], rising" in text
    assert "reaches +0.05 at about 6,000 iterations (from about 3,800 iterations to about 24,000 iterations" in text
    assert "augmented - standard" not in text
    flat = "\n".join(trend_markdown({"cooperative-standard": _trend(0.0005, -0.03, 0.05, 0.01)}))
    assert "flat" in flat and "point to no budget" in flat
    assert "more than 1,000 times the largest budget measured" in flat and "no sooner than about 2,600" in flat
    falling = "\n".join(trend_markdown({"cooperative-standard": _trend(-0.02, -0.03, -0.01, 0.0)}))
    assert "falling" in falling and "points to no budget" in falling
    reached = "\n".join(trend_markdown({"cooperative-standard": _trend(-0.01, -0.03, 0.01, 0.06)}))
    assert "at or above +0.05 within the measured budgets" in reached
    other = "\n".join(trend_markdown({"cooperative-augmented": rising}))
    assert "rising" in other and "reaches" not in other


def test_the_verdict_needs_both_intervals() -> None:
    """Ahead or behind only when the bootstrap interval and the t-interval over seeds both exclude 0; the criterion's
    interval part likewise; a t-interval that could not be computed (one seed) holds 0."""
    bootstrap_only = _difference(0.06, 0.02, 0.10)
    bootstrap_only["shifted_avg"] = {**bootstrap_only["shifted_avg"], "t_low": -0.01, "t_high": 0.13}
    both = _difference(0.06, 0.02, 0.10)
    both["shifted_avg"] = {**both["shifted_avg"], "t_low": 0.01, "t_high": 0.11}
    below = _difference(-0.06, -0.10, -0.02)
    below["shifted_avg"] = {**below["shifted_avg"], "t_low": -0.12, "t_high": float("nan")}
    differences = _differences(bootstrap_only, both, below)
    assert budget_verdicts(differences, "cooperative-standard") == {250: "level", 500: "ahead", 1000: "level"}
    result = criterion(_differences(bootstrap_only))
    assert result["parts"]["interval"] is False and not result["met"]
    assert criterion(_differences(both))["met"]
    text = "\n".join(verdict_markdown(_differences(bootstrap_only), ["cooperative-standard"], "FTN"))
    assert "FTN, per budget" in text and "Criterion at 250 iterations (FTN)" in text
    assert "t-interval from -0.010" in text and "missing: both intervals above 0" in text
