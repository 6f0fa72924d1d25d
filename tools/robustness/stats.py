"""Statistics of the robustness experiment: per-domain scores, paired differences between arms, bootstrap intervals.

Scores are per volume (one 3D volume = subject x frame). A domain's score is the mean over its volumes; the shifted
average is the mean of the shifted domains' scores (as the paper's AVG columns). Two arms are compared paired: same
seeds, same test volumes.

The 95 % interval of a difference resamples both sources of variation with replacement, hierarchically: the seeds
(training randomness) and, within each domain, the volumes (test-set sampling), the same draw for both arms.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Difference",
    "ScoreTable",
    "Trend",
    "bootstrap_difference",
    "bootstrap_trend",
    "score_table",
    "seed_differences",
]


@dataclass
class ScoreTable:
    """Per-volume scores ``values[arm][seed][domain]`` (1D arrays in one fixed volume order per domain)."""

    values: dict[str, dict[int, dict[str, np.ndarray]]]
    volumes: dict[str, list[tuple[str, str]]]

    def arms(self) -> list[str]:
        return list(self.values)

    def seeds(self, arm: str) -> list[int]:
        return sorted(self.values.get(arm, {}))

    def domain_mean(self, arm: str, seed: int, domain: str) -> float:
        values = self.values[arm][seed][domain]
        return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan

    def summary(self, arm: str, seed: int, in_domain: str, shifted: Sequence[str]) -> dict[str, float]:
        """``{domain: mean, ..., "in_domain": ..., "shifted_avg": ...}`` for one arm and seed."""
        out = {d: self.domain_mean(arm, seed, d) for d in self.values[arm][seed]}
        out["in_domain"] = out[in_domain]
        out["shifted_avg"] = float(np.nanmean([out[d] for d in shifted]))
        return out


def score_table(
    rows: Iterable[Mapping[str, Any]], metric: str = "dice_mean", output: str = "ftn_stn"
) -> ScoreTable:
    """Collect ``metric`` of one ``output`` from ledger rows of ONE budget into a :class:`ScoreTable`.

    Volumes are identified by ``(subject, frame)``; every arm and seed must hold the same volumes per domain (the
    runs were evaluated on the same test sets), which is checked.
    """
    collected: dict[str, dict[int, dict[str, dict[tuple[str, str], float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(dict))
    )
    for row in rows:
        if row["output"] != output:
            continue
        collected[row["arm"]][int(row["seed"])][row["test_set"]][(str(row["subject"]), str(row["frame"]))] = float(
            row[metric]
        )
    volumes: dict[str, list[tuple[str, str]]] = {}
    values: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for arm, seeds in collected.items():
        values[arm] = {}
        for seed, domains in seeds.items():
            values[arm][seed] = {}
            for domain, by_volume in domains.items():
                order = volumes.setdefault(domain, sorted(by_volume))
                if sorted(by_volume) != order:
                    raise ValueError(f"{arm} seed {seed}: test set {domain} holds other volumes than the other runs.")
                values[arm][seed][domain] = np.array([by_volume[v] for v in order], dtype=np.float64)
    return ScoreTable(values, volumes)


def seed_differences(
    table: ScoreTable, arm_a: str, arm_b: str, in_domain: str, shifted: Sequence[str]
) -> dict[int, dict[str, float]]:
    """Per seed both arms share: ``arm_a - arm_b`` of every domain score, ``in_domain`` and ``shifted_avg``."""
    common = sorted(set(table.seeds(arm_a)) & set(table.seeds(arm_b)))
    out = {}
    for seed in common:
        a = table.summary(arm_a, seed, in_domain, shifted)
        b = table.summary(arm_b, seed, in_domain, shifted)
        out[seed] = {k: a[k] - b[k] for k in a}
    return out


@dataclass
class Difference:
    """Mean paired difference and its bootstrap 95 % interval."""

    mean: float
    low: float
    high: float
    n_seeds: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def bootstrap_difference(
    table: ScoreTable,
    arm_a: str,
    arm_b: str,
    in_domain: str,
    shifted: Sequence[str],
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Difference]:
    """``arm_a - arm_b`` per domain, for ``in_domain`` and for ``shifted_avg``, with hierarchical bootstrap intervals.

    Each resample draws the shared seeds with replacement and, per domain, its volumes with replacement; a domain's
    difference is the mean over the drawn seeds and volumes; the shifted average is the mean over shifted domains.
    """
    seeds = sorted(set(table.seeds(arm_a)) & set(table.seeds(arm_b)))
    if not seeds:
        raise ValueError(f"no seed has both {arm_a} and {arm_b}.")
    domains = list(table.volumes)
    diffs = {
        d: np.stack([table.values[arm_a][s][d] - table.values[arm_b][s][d] for s in seeds]) for d in domains
    }  # seeds x volumes
    rng = np.random.default_rng(seed)
    boot = {d: np.empty(n_boot) for d in domains}
    for b in range(n_boot):
        seed_idx = rng.integers(0, len(seeds), len(seeds))
        for d in domains:
            vol_idx = rng.integers(0, diffs[d].shape[1], diffs[d].shape[1])
            boot[d][b] = np.nanmean(diffs[d][np.ix_(seed_idx, vol_idx)])
    boot["in_domain"] = boot[in_domain]
    boot["shifted_avg"] = np.nanmean(np.stack([boot[d] for d in shifted]), axis=0)
    point = {d: float(np.nanmean(diffs[d])) for d in domains}
    point["in_domain"] = point[in_domain]
    point["shifted_avg"] = float(np.nanmean([point[d] for d in shifted]))
    return {
        k: Difference(point[k], float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5)), len(seeds))
        for k, v in boot.items()
    }


@dataclass
class Trend:
    """A straight line through the paired shifted-average differences ``arm_a - arm_b`` against log2(iterations).

    ``slope`` is the change of the difference per doubling of the budget, with its bootstrap 95 % interval
    ``[low, high]``; ``at_last`` is the line's value at the largest budget.
    """

    slope: float
    low: float
    high: float
    at_last: float
    budgets: list[int]
    n_seeds: int

    def at(self, iterations: float | np.ndarray) -> float | np.ndarray:
        """The line's value at ``iterations``."""
        return self.at_last + self.slope * (np.log2(iterations) - np.log2(self.budgets[-1]))

    def budget_reaching(self, target: float, slope: float | None = None) -> float | None:
        """Iterations at which the line (or one with another ``slope`` through the same last point) reaches
        ``target``: the largest budget if it is there already, None if the line never rises to it."""
        slope = self.slope if slope is None else slope
        last = self.budgets[-1]
        if self.at_last >= target:
            return float(last)
        if slope <= 0:
            return None
        return float(last * 2.0 ** ((target - self.at_last) / slope))


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope and the fitted value at ``x[-1]``."""
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(slope * x[-1] + intercept)


def bootstrap_trend(
    tables: Mapping[int, ScoreTable],
    arm_a: str,
    arm_b: str,
    shifted: Sequence[str],
    n_boot: int = 2000,
    seed: int = 0,
) -> Trend | None:
    """The :class:`Trend` of ``arm_a - arm_b`` over the budgets of ``tables`` (``{iterations: ScoreTable}``).

    Only seeds that both arms have at every budget are used, so each point of the line comes from the same runs. The
    interval resamples hierarchically as :func:`bootstrap_difference` does, with one draw of seeds and volumes shared
    by all budgets (the budgets are snapshots of the same runs, evaluated on the same volumes). None when fewer than
    two budgets or no common seed are available.
    """
    budgets = sorted(b for b, t in tables.items() if arm_a in t.values and arm_b in t.values)
    if len(budgets) < 2:
        return None
    seeds = sorted(set.intersection(*(set(tables[b].seeds(arm_a)) & set(tables[b].seeds(arm_b)) for b in budgets)))
    if not seeds:
        return None
    for b in budgets:
        for d in shifted:
            if tables[b].volumes[d] != tables[budgets[0]].volumes[d]:
                raise ValueError(f"test set {d} holds other volumes at {b} iterations than at {budgets[0]}.")
    diffs = {
        b: {d: np.stack([t.values[arm_a][s][d] - t.values[arm_b][s][d] for s in seeds]) for d in shifted}
        for b, t in ((b, tables[b]) for b in budgets)
    }  # budget -> domain -> seeds x volumes
    x = np.log2(np.asarray(budgets, dtype=np.float64))

    def shifted_average(seed_idx: np.ndarray | None, vol_idx: Mapping[str, np.ndarray] | None) -> np.ndarray:
        points = []
        for b in budgets:
            per_domain = []
            for d in shifted:
                values = diffs[b][d]
                if seed_idx is not None and vol_idx is not None:
                    values = values[np.ix_(seed_idx, vol_idx[d])]
                per_domain.append(np.nanmean(values))
            points.append(np.nanmean(per_domain))
        return np.asarray(points)

    slope, at_last = _line(x, shifted_average(None, None))
    rng = np.random.default_rng(seed)
    n_volumes = {d: diffs[budgets[0]][d].shape[1] for d in shifted}
    slopes = np.empty(n_boot)
    for i in range(n_boot):
        seed_idx = rng.integers(0, len(seeds), len(seeds))
        vol_idx = {d: rng.integers(0, n, n) for d, n in n_volumes.items()}
        slopes[i] = _line(x, shifted_average(seed_idx, vol_idx))[0]
    return Trend(slope, float(np.percentile(slopes, 2.5)), float(np.percentile(slopes, 97.5)), at_last, budgets,
                 len(seeds))  # fmt: skip
