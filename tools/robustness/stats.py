"""Statistics of the robustness experiment: per-test-set scores, paired contrasts between arms (or outputs), and two
95 % intervals for each.

Scores are per volume (one 3D volume = subject x frame). A test set's score is the mean over its volumes; the shifted
average is the mean of the shifted test sets' scores (as the paper's AVG columns). Arms are compared paired: same
seeds, same test volumes. A *contrast* is a weighted sum of arms, e.g. ``{"cooperative": 1, "standard": -1}`` for a
difference or, with the arms of a table keyed ``<arm>/<output>`` (:func:`score_table` with ``key="arm/output"``),
``{"cooperative/ftn_stn": 1, "cooperative/ftn": -1}`` for what the STN adds.

The two intervals:

* **hierarchical bootstrap** (:func:`bootstrap_contrast`): each resample draws the seeds with replacement, then, once
  per *subject pool*, that pool's subjects with replacement. A subject carries all of its volumes in every test set:
  its ED and ES frames, and every shifted copy made from it (the appearance, artefact and geometry test sets are
  rendered from or applied to the source test subjects, so they move together; the second anatomy model's two test
  sets share their own subjects). A volume's subject is ``source_subject`` when the row has one (artefact copies),
  else ``subject``; a pool is the set of subjects found in the same test sets. Percentile interval.
* **t-interval over seeds** (:func:`t_contrast`): the contrast of the test-set means per seed, then
  ``mean +- t(0.975, n - 1) * sd / sqrt(n)`` over the n seeds. It treats the test volumes as fixed and is the honest
  interval for the seed variation when there are few seeds, where a percentile bootstrap over 5 seeds is too narrow.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

__all__ = [
    "Difference",
    "Resampler",
    "ScoreTable",
    "Trend",
    "bootstrap_contrast",
    "bootstrap_difference",
    "bootstrap_trend",
    "score_table",
    "seed_contrasts",
    "seed_differences",
    "t_contrast",
    "volume_subject",
]

Contrast = Mapping[str, float]


def volume_subject(row: Mapping[str, Any]) -> str:
    """The subject a ledger row's volume was made from: ``source_subject`` (artefact copies), else ``subject``."""
    return str(row.get("source_subject") or row["subject"])


@dataclass
class ScoreTable:
    """Per-volume scores ``values[arm][seed][test set]`` (1D arrays in one fixed volume order per test set).

    ``volumes[test set]`` lists the ``(subject, frame)`` of each volume, ``subjects[test set]`` the subject it was
    made from (:func:`volume_subject`), in the same order.
    """

    values: dict[str, dict[int, dict[str, np.ndarray]]]
    volumes: dict[str, list[tuple[str, str]]]
    subjects: dict[str, list[str]]

    def arms(self) -> list[str]:
        return list(self.values)

    def seeds(self, arm: str) -> list[int]:
        return sorted(self.values.get(arm, {}))

    def domain_mean(self, arm: str, seed: int, domain: str) -> float:
        values = self.values[arm][seed][domain]
        return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan

    def summary(self, arm: str, seed: int, in_domain: str, shifted: Sequence[str]) -> dict[str, float]:
        """``{test set: mean, ..., "in_domain": ..., "shifted_avg": ...}`` for one arm and seed."""
        out = {d: self.domain_mean(arm, seed, d) for d in self.values[arm][seed]}
        out["in_domain"] = out[in_domain]
        out["shifted_avg"] = float(np.nanmean([out[d] for d in shifted]))
        return out


def _row_key(key: str | Callable[[Mapping[str, Any]], str]) -> Callable[[Mapping[str, Any]], str]:
    if callable(key):
        return key
    if key == "arm":
        return lambda row: str(row["arm"])
    if key == "arm/output":
        return lambda row: f"{row['arm']}/{row['output']}"
    raise ValueError(f"key must be 'arm', 'arm/output' or a function, got {key!r}.")


def score_table(
    rows: Iterable[Mapping[str, Any]],
    metric: str = "dice_mean",
    output: str | Sequence[str] | None = "ftn_stn",
    key: str | Callable[[Mapping[str, Any]], str] = "arm",
) -> ScoreTable:
    """Collect ``metric`` of the rows of ``output`` (one name, several, or None for all) from ledger rows of ONE model
    per run (one budget) into a :class:`ScoreTable`, its arms keyed by ``key`` (``"arm"``, ``"arm/output"`` or a
    function of the row).

    Volumes are identified by ``(subject, frame)``; every arm and seed must hold the same volumes per test set (the
    runs were evaluated on the same test sets), which is checked.
    """
    outputs = None if output is None else ({output} if isinstance(output, str) else set(output))
    name_of = _row_key(key)
    collected: dict[str, dict[int, dict[str, dict[tuple[str, str], float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(dict))
    )
    subject_of: dict[str, dict[tuple[str, str], str]] = defaultdict(dict)
    for row in rows:
        if outputs is not None and row["output"] not in outputs:
            continue
        volume = (str(row["subject"]), str(row["frame"]))
        collected[name_of(row)][int(row["seed"])][row["test_set"]][volume] = float(row[metric])
        subject_of[row["test_set"]][volume] = volume_subject(row)
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
    subjects = {d: [subject_of[d][v] for v in order] for d, order in volumes.items()}
    return ScoreTable(values, volumes, subjects)


def _contrast_arms(table: ScoreTable, contrast: Contrast) -> list[int]:
    """The seeds every arm of ``contrast`` has (raises when none)."""
    missing = [a for a in contrast if a not in table.values]
    if missing:
        raise ValueError(f"the table holds no arm {missing}.")
    seeds = sorted(set.intersection(*(set(table.seeds(a)) for a in contrast)))
    if not seeds:
        raise ValueError(f"no seed has every arm of {dict(contrast)}.")
    return seeds


def _contrast_values(table: ScoreTable, contrast: Contrast, seeds: Sequence[int], domain: str) -> np.ndarray:
    """``sum_arm weight * values`` per seed and volume: ``seeds x volumes``."""
    return sum(w * np.stack([table.values[a][s][domain] for s in seeds]) for a, w in contrast.items())


def seed_contrasts(
    table: ScoreTable, contrast: Contrast, in_domain: str, shifted: Sequence[str]
) -> dict[int, dict[str, float]]:
    """Per seed every arm of ``contrast`` shares: the contrast of every test-set mean, ``in_domain`` and
    ``shifted_avg``."""
    out = {}
    for seed in _contrast_arms(table, contrast):
        summaries = {a: table.summary(a, seed, in_domain, shifted) for a in contrast}
        keys = summaries[next(iter(contrast))]
        out[seed] = {k: float(sum(w * summaries[a][k] for a, w in contrast.items())) for k in keys}
    return out


def seed_differences(
    table: ScoreTable, arm_a: str, arm_b: str, in_domain: str, shifted: Sequence[str]
) -> dict[int, dict[str, float]]:
    """:func:`seed_contrasts` of ``arm_a - arm_b``."""
    return seed_contrasts(table, {arm_a: 1.0, arm_b: -1.0}, in_domain, shifted)


@dataclass
class Difference:
    """A paired contrast (``mean``), its 95 % interval ``[low, high]`` and the seeds it rests on."""

    mean: float
    low: float
    high: float
    n_seeds: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


class Resampler:
    """Hierarchical bootstrap draws for a :class:`ScoreTable` (see the module docstring).

    ``seed_weights`` is ``n_boot x seeds`` (how often each seed was drawn); :meth:`volume_weights` gives, per test
    set, ``n_boot x volumes`` (how often each volume's subject was drawn). One Resampler draws once: every test set,
    arm and budget evaluated with it shares the draw.
    """

    def __init__(self, table: ScoreTable, n_seeds: int, n_boot: int = 2000, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.n_boot = n_boot
        self.seed_weights = _multiplicities(rng.integers(0, n_seeds, (n_boot, n_seeds)), n_seeds)
        found: dict[str, set[str]] = defaultdict(set)  # subject -> the test sets holding it
        for domain, subjects in table.subjects.items():
            for subject in subjects:
                found[subject].add(domain)
        pools: dict[frozenset[str], list[str]] = defaultdict(list)
        for subject in sorted(found):
            pools[frozenset(found[subject])].append(subject)
        self.pools = [sorted(p) for p in pools.values()]
        self._subject_weights: dict[str, np.ndarray] = {}  # subject -> n_boot multiplicities
        for pool in self.pools:
            counts = _multiplicities(rng.integers(0, len(pool), (n_boot, len(pool))), len(pool))
            for i, subject in enumerate(pool):
                self._subject_weights[subject] = counts[:, i]
        self._subjects = table.subjects

    def volume_weights(self, domain: str) -> np.ndarray:
        return np.stack([self._subject_weights[s] for s in self._subjects[domain]], axis=1).astype(np.float64)

    def mean(self, values: np.ndarray, domain: str) -> np.ndarray:
        """The weighted mean of ``values`` (``seeds x volumes`` of ``domain``, NaN = missing) in every draw."""
        finite = np.isfinite(values)
        data = np.where(finite, values, 0.0)
        volume = self.volume_weights(domain)
        numerator = np.einsum("bs,sv,bv->b", self.seed_weights, data, volume)
        denominator = np.einsum("bs,sv,bv->b", self.seed_weights, finite.astype(np.float64), volume)
        with np.errstate(invalid="ignore", divide="ignore"):
            return numerator / denominator


def _multiplicities(draws: np.ndarray, n: int) -> np.ndarray:
    """``n_boot x n`` counts of each index in each row of ``draws``."""
    counts = np.zeros((draws.shape[0], n), dtype=np.float64)
    np.add.at(counts, (np.arange(draws.shape[0])[:, None], draws), 1.0)
    return counts


def bootstrap_contrast(
    table: ScoreTable,
    contrast: Contrast,
    in_domain: str,
    shifted: Sequence[str],
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Difference]:
    """``contrast`` per test set, for ``in_domain`` and for ``shifted_avg``, with hierarchical bootstrap intervals
    (:class:`Resampler`). The point estimate of a test set is the mean over its seeds and volumes."""
    seeds = _contrast_arms(table, contrast)
    domains = list(table.volumes)
    resampler = Resampler(table, len(seeds), n_boot, seed)
    diffs = {d: _contrast_values(table, contrast, seeds, d) for d in domains}
    boot = {d: resampler.mean(diffs[d], d) for d in domains}
    boot["in_domain"] = boot[in_domain]
    boot["shifted_avg"] = np.nanmean(np.stack([boot[d] for d in shifted]), axis=0)
    point = {d: float(np.nanmean(diffs[d])) for d in domains}
    point["in_domain"] = point[in_domain]
    point["shifted_avg"] = float(np.nanmean([point[d] for d in shifted]))
    return {
        k: Difference(point[k], float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5)), len(seeds))
        for k, v in boot.items()
    }


def bootstrap_difference(
    table: ScoreTable,
    arm_a: str,
    arm_b: str,
    in_domain: str,
    shifted: Sequence[str],
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Difference]:
    """:func:`bootstrap_contrast` of ``arm_a - arm_b``."""
    return bootstrap_contrast(table, {arm_a: 1.0, arm_b: -1.0}, in_domain, shifted, n_boot, seed)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: Student's t-interval of the mean of ``values`` (NaN bounds from fewer than 2)."""
    data = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if data.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(data.mean())
    if data.size < 2:
        return mean, math.nan, math.nan
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, data.size - 1) * data.std(ddof=1) / math.sqrt(data.size))
    return mean, mean - half, mean + half


def t_contrast(
    table: ScoreTable, contrast: Contrast, in_domain: str, shifted: Sequence[str]
) -> dict[str, Difference]:
    """``contrast`` per test set, ``in_domain`` and ``shifted_avg`` with the t-interval over the per-seed contrasts
    (:func:`seed_contrasts`); the mean equals :func:`bootstrap_contrast`'s when no score is missing."""
    per_seed = seed_contrasts(table, contrast, in_domain, shifted)
    keys = next(iter(per_seed.values())).keys()
    return {k: Difference(*t_interval([d[k] for d in per_seed.values()]), len(per_seed)) for k in keys}


@dataclass
class Trend:
    """A straight line through the paired shifted-average contrasts against log2(iterations).

    ``slope`` is the change of the contrast per doubling of the budget, with its bootstrap 95 % interval
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
    interval resamples hierarchically as :func:`bootstrap_contrast` does, with one draw of seeds and subjects shared
    by all budgets (the budgets are models of the same runs, evaluated on the same volumes). None when fewer than two
    budgets or no common seed are available.
    """
    budgets = sorted(b for b, t in tables.items() if arm_a in t.values and arm_b in t.values)
    if len(budgets) < 2:
        return None
    seeds = sorted(set.intersection(*(set(tables[b].seeds(arm_a)) & set(tables[b].seeds(arm_b)) for b in budgets)))
    if not seeds:
        return None
    first = tables[budgets[0]]
    for b in budgets:
        for d in shifted:
            if tables[b].volumes[d] != first.volumes[d]:
                raise ValueError(f"test set {d} holds other volumes at {b} iterations than at {budgets[0]}.")
    contrast = {arm_a: 1.0, arm_b: -1.0}
    diffs = {b: {d: _contrast_values(tables[b], contrast, seeds, d) for d in shifted} for b in budgets}
    x = np.log2(np.asarray(budgets, dtype=np.float64))
    points = [float(np.nanmean([np.nanmean(diffs[b][d]) for d in shifted])) for b in budgets]
    slope, at_last = _line(x, np.asarray(points))
    resampler = Resampler(first, len(seeds), n_boot, seed)
    boot = np.stack([np.nanmean(np.stack([resampler.mean(diffs[b][d], d) for d in shifted]), axis=0)
                     for b in budgets], axis=1)  # fmt: skip  # n_boot x budgets
    centred = x - x.mean()
    slopes = (boot - boot.mean(axis=1, keepdims=True)) @ centred / float(centred @ centred)
    return Trend(slope, float(np.nanpercentile(slopes, 2.5)), float(np.nanpercentile(slopes, 97.5)), at_last, budgets,
                 len(seeds))  # fmt: skip
