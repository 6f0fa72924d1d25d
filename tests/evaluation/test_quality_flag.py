"""The quality flag's calibration: AUROC against a pairwise count, Youden's threshold against a brute-force search,
the subject-wise calibration / held-out split, and its section in the evaluation report."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from scripts.evaluation.metrics import METRIC_KEYS
from scripts.evaluation.quality_flag import quality_flag_analysis, split_by_subject, youden_threshold
from scripts.evaluation.report import write_evaluation_report


def _rows(n_subjects: int, rng: np.random.Generator, separation: float) -> list[dict]:
    """Two frames per subject; failed volumes get scores shifted up by ``separation``."""
    rows = []
    for s, frame in itertools.product(range(n_subjects), ("ED", "ES")):
        dice = float(rng.uniform(0.3, 0.95))
        score = float(rng.uniform(0.0, 0.3) + (separation if dice < 0.7 else 0.0))
        for output in ("ftn_stn", "ftn"):
            row = {"model": "coopseg", "test_set": "source", "subject": f"s{s:02d}", "frame": frame, "output": output}
            row.update({key: 10.0 if key.startswith("hd95") else dice for key in METRIC_KEYS})
            row.update(dice_mean=dice if output == "ftn_stn" else 0.99, disagreement_score=score)
            rows.append(row)
    return rows


def _pairwise_auroc(failed: np.ndarray, score: np.ndarray) -> float:
    """P(score of a failed volume > score of a good one), ties counted half."""
    pos, neg = score[failed], score[~failed]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_matches_a_pairwise_count_and_uses_only_ftn_stn_rows() -> None:
    rows = _rows(30, np.random.default_rng(0), separation=0.1)
    result = quality_flag_analysis(rows)
    data = [r for r in rows if r["output"] == "ftn_stn"]
    failed = np.array([r["dice_mean"] < 0.7 for r in data])
    score = np.array([r["disagreement_score"] for r in data])
    assert result["n_volumes"] == 60 and result["all"]["failures"] == int(failed.sum())
    assert result["all"]["auroc"] == pytest.approx(_pairwise_auroc(failed, score), abs=1e-9)
    assert 0.5 < result["all"]["auroc"] < 1.0


def test_youden_threshold_is_the_best_observed_cut() -> None:
    rng = np.random.default_rng(1)
    failed = rng.random(50) < 0.4
    score = rng.random(50) + 0.3 * failed
    threshold = youden_threshold(failed, score)
    best = max((score[failed] >= t).mean() + (score[~failed] < t).mean() - 1 for t in np.unique(score))
    flagged = score > threshold
    assert not np.isin(threshold, score)  # between two observed scores, so > and >= flag alike
    assert flagged[failed].mean() + (~flagged[~failed]).mean() - 1 == pytest.approx(best)
    with pytest.raises(ValueError, match="both failed and successful"):
        youden_threshold(np.zeros(3, dtype=bool), np.arange(3.0))


def test_threshold_is_chosen_on_half_of_the_subjects_and_assessed_on_the_other() -> None:
    rows = []
    for s in range(40):
        failed = s % 3 == 0
        rows.append({"output": "ftn_stn", "subject": f"s{s:02d}", "dice_mean": 0.4 if failed else 0.9,
                     "disagreement_score": 0.5 + 0.01 * s if failed else 0.1 + 0.001 * s})  # fmt: skip
    rows.append({"output": "ftn_stn", "subject": "nan", "dice_mean": 0.9, "disagreement_score": float("nan")})
    result = quality_flag_analysis(rows)
    assert result["n_volumes"] == 40 and result["all"]["auroc"] == pytest.approx(1.0)
    assert result["calibration"]["n"] == result["held_out"]["n"] == 20
    failed_scores = [r["disagreement_score"] for r in rows[:40:2] if r["dice_mean"] < 0.7]
    good_scores = [r["disagreement_score"] for r in rows[:40:2] if r["dice_mean"] >= 0.7]
    assert result["threshold"] == pytest.approx((min(failed_scores) + max(good_scores)) / 2)  # the widest clean cut
    assert result["held_out"]["sensitivity"] == 1.0 and result["held_out"]["specificity"] == 1.0
    copies = [{**r, "subject": f"{r['subject']}_0", "source_subject": r["subject"]} for r in rows[:40]]
    calibration, held_out = split_by_subject(rows[:40] + copies)  # artefact copies stay with their source subject
    assert {r["subject"] for r in calibration} == {f"s{s:02d}{c}" for s in range(0, 40, 2) for c in ("", "_0")}
    assert len(held_out) == 40 and quality_flag_analysis(rows + copies)["threshold"] == result["threshold"]
    one_class = quality_flag_analysis([r for r in rows if r["dice_mean"] > 0.7])
    assert "auroc" not in one_class["all"] and "threshold" not in one_class


def test_evaluation_report_states_the_quality_flag(tmp_path: Path) -> None:
    rows = _rows(12, np.random.default_rng(2), separation=0.5)
    written = write_evaluation_report(rows, tmp_path, ["source"])
    assert tmp_path / "quality_flag.png" in written and (tmp_path / "quality_flag.png").stat().st_size > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["quality_flag"]["all"]["auroc"] == pytest.approx(1.0)
    text = (tmp_path / "results.md").read_text()
    assert "## Quality flag" in text and f"{summary['quality_flag']['threshold']:.4f}" in text
    without = [{k: v for k, v in r.items() if k != "disagreement_score"} for r in rows]
    written = write_evaluation_report(without, tmp_path / "plain", ["source"])
    assert "Quality flag" not in (tmp_path / "plain" / "results.md").read_text()
    assert not (tmp_path / "plain" / "quality_flag.png").exists()
