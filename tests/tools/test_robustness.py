"""The robustness experiment: commands, the ledger, the statistics and the report, and the whole command end to end
with a tiny budget (arms trained by the bundle's workflow into run folders, models at every budget evaluated on every
test domain, results in the ledger; a second start reuses what the ledger holds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import BUNDLE_ROOT, REPO_ROOT
from tools.robustness.experiment import (
    ABLATION_ARMS,
    ARMS,
    PROTOCOLS,
    Ablation,
    Experiment,
    evaluation_command,
    main,
    parse_override,
    training_command,
    validation_interval,
)
from tools.robustness.ledger import SELECTED, Ledger, RunSpec, checkpoint_stem, config_key
from tools.robustness.stats import (
    Resampler,
    bootstrap_difference,
    bootstrap_trend,
    score_table,
    seed_differences,
    t_contrast,
)

TINY = ["--override", "pixdim=[5.0,5.0,-1]", "--override", "crop_size=32", "--override", "width=4",
        "--override", "batch_size=4", "--override", "num_workers=0"]  # fmt: skip


def test_commands_and_overrides(tmp_path: Path) -> None:
    assert parse_override("crop_size=192") == ("crop_size", 192)
    assert parse_override("pixdim=[1.5,1.5,-1]") == ("pixdim", [1.5, 1.5, -1])
    assert parse_override("amp=True") == ("amp", True) and parse_override("name=abc") == ("name", "abc")
    run = tmp_path / "run"
    cmd = training_command(BUNDLE_ROOT, run, "/data", "/data/d.json", 1, 3, {"latent_da": False, "crop_size": 192})
    text = " ".join(cmd)
    assert "run training" in text and "--latent_da False" in text and "--seed 1" in text and "--epochs 3" in text
    assert f"--ckpt_dir {run / 'models'}" in text and str(BUNDLE_ROOT / "models") not in text
    cmd = evaluation_command(BUNDLE_ROOT, run / "m.pt", run / "eval", {"a": "/d.json#a"}, "standard", {"x": 1})
    assert "run evaluating" in " ".join(cmd) and str(run / "m.pt") in cmd and "--x" in cmd
    # the arms differ only in their own switches; the protocols keep a constant rate (learning curves from one run)
    assert ARMS["augmented"] == {"latent_da": False, "strong_augmentation": True}
    assert all(ABLATION_ARMS[a]["latent_da"] for a in ABLATION_ARMS)
    running = [p for p in PROTOCOLS.values() if "superseded_by" not in p]
    assert all(p["overrides"]["lr_policy"] == "constant" for p in running)
    # the second protocol: evaluation through the deployment pipeline (no crop of its own), settled models to 3,000
    # iterations, 5 seeds, validation at least every 100 iterations, the ablation at one budget and 3 seeds
    v2 = PROTOCOLS["v2"]
    assert v2["eval_overrides"] == {} and v2["budgets"][-1] == 3000 and len(v2["seeds"]) == 5
    assert v2["overrides"]["weight_averaging"] and v2["models"] == ["raw", "ema"] and v2["validate_every"] == 100
    assert v2["ablation"]["budget"] in v2["budgets"] and len(v2["ablation"]["seeds"]) == 3
    assert validation_interval(29, 100) == 3 and validation_interval(150, 100) == 1
    with pytest.raises(SystemExit, match="needs at least one --test_set"):
        main(["--dataset_dir", str(tmp_path)])
    # the first protocol's ledger is kept as it is: nothing reruns, re-keys or re-reports it
    for action in ([], ["--report_only"], ["--status"]):
        with pytest.raises(SystemExit, match="superseded by v2.*synthetic_default/report.md"):
            main(["--protocol", "v1", *action])


def test_run_keys_separate_configurations() -> None:
    assert config_key({"a": 1, "b": [1, 2]}) == config_key({"b": [1, 2], "a": 1})
    base = RunSpec("cooperative", 0, {"latent_da": True, "crop_size": 96}, "data-v1")
    assert base.key == RunSpec("cooperative", 0, {"crop_size": 96, "latent_da": True}, "data-v1").key
    for other in (RunSpec("cooperative", 1, base.overrides, "data-v1"), RunSpec("standard", 0, base.overrides,
                  "data-v1"), RunSpec("cooperative", 0, {**base.overrides, "crop_size": 64}, "data-v1"),
                  RunSpec("cooperative", 0, base.overrides, "data-v2")):  # fmt: skip
        assert other.key != base.key


def test_the_ledger_keeps_each_kind_of_model_apart(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "runs")
    spec = RunSpec("standard", 0, {"latent_da": False}, "data-v1")
    ledger.write_record(spec, selected={"epoch": 3, "iteration": 87, "val_dice": 0.8})
    row = {"test_set": "source", "subject": "s1", "source_subject": "", "frame": "ED", "output": "ftn_stn",
           "dice_mean": 0.712345678, "image": "/not/kept.nii.gz"}  # fmt: skip
    ledger.write_evaluation(spec, "ev", {"test_sets": {}}, 250, [row], ["dice_mean"])
    ledger.write_evaluation(spec, "ev", {"test_sets": {}}, 250, [{**row, "dice_mean": 0.75}], ["dice_mean"], "ema")
    ledger.write_evaluation(spec, "ev", {"test_sets": {}}, SELECTED, [{**row, "dice_mean": 0.8}], ["dice_mean"])
    assert ledger.evaluated_iterations(spec, "ev") == [250] and ledger.has_selected(spec, "ev")
    assert ledger.evaluated_iterations(spec, "ev", "ema") == [250]
    raw, ema = sorted(ledger.rows("ev"), key=lambda r: r["model"] != "raw")
    (selected,) = ledger.rows("ev", selected=True)
    assert (raw["model"], raw["iteration"], raw["dice_mean"]) == ("raw", 250, 0.71235) and "image" not in raw
    assert (ema["model"], ema["iteration"], ema["dice_mean"]) == ("ema", 250, 0.75)
    assert (selected["model"], selected["iteration"], selected["dice_mean"]) == ("selected", 87, 0.8)
    cosine = RunSpec("standard", 0, {"latent_da": False, "lr_policy": "one_cycle"}, "data-v1")
    ledger.write_record(cosine, schedule="cosine")
    ledger.write_evaluation(cosine, "ev", {"test_sets": {}}, 250, [row], ["dice_mean"])
    assert sorted(r["model"] for r in ledger.rows("ev")) == ["cosine", "ema", "raw"]
    assert checkpoint_stem(250) == "iter000250" and checkpoint_stem(250, "ema") == "ema000250"
    assert checkpoint_stem(SELECTED) == "selected"
    for bad in (0, "best", 2.5):
        with pytest.raises(ValueError, match="expected a positive iteration count"):
            checkpoint_stem(bad)
    with pytest.raises(ValueError, match="model 'swa'"):
        checkpoint_stem(250, "swa")


def _rows(effect: float, noise: float = 0.02, seeds=(0, 1, 2), n=12, rng_seed=0) -> list[dict]:
    """Ledger-like rows: arm b scores 0.7 everywhere (+ noise), arm a scores ``effect`` more on the shifted set."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for arm, shift in (("a", effect), ("b", 0.0)):
        for seed in seeds:
            for domain, gain in (("source", 0.0), ("shifted", shift)):
                for v in range(n):
                    rows.append({"arm": arm, "seed": seed, "test_set": domain, "subject": f"s{v}", "frame": "ED",
                                 "output": "ftn_stn", "dice_mean": 0.7 + gain + noise * rng.standard_normal()})
    return rows


def test_the_bootstrap_moves_a_subject_with_its_frames_and_copies_and_each_pool_on_its_own() -> None:
    """Test sets made from the same subjects share one draw of those subjects (ED and ES and every shifted copy
    together); another anatomy model's subjects are drawn in their own pool, as often as it has subjects."""
    rows = []
    for seed in (0, 1, 2):
        for test_set, names in (("source", [(f"te{i}", "") for i in range(5)]),
                                ("spike", [(f"te{i}_0", f"te{i}") for i in range(5)]),
                                ("thorax", [(f"th{i}", "") for i in range(3)]),
                                ("thorax_partial", [(f"th{i}", "") for i in range(3)])):  # fmt: skip
            for subject, source in names:
                for frame in ("ED", "ES"):
                    rows.append({"arm": "a", "seed": seed, "test_set": test_set, "subject": subject, "frame": frame,
                                 "source_subject": source, "output": "ftn_stn", "dice_mean": 0.5})  # fmt: skip
    table = score_table(rows)
    assert table.subjects["spike"][:2] == ["te0", "te0"]
    resampler = Resampler(table, n_seeds=3, n_boot=200, seed=1)
    assert sorted(len(p) for p in resampler.pools) == [3, 5]
    source, spike = resampler.volume_weights("source"), resampler.volume_weights("spike")
    np.testing.assert_array_equal(source, spike)  # the same subject order: every copy weighs as its source
    np.testing.assert_array_equal(source[:, 0::2], source[:, 1::2])  # ED and ES together
    np.testing.assert_array_equal(resampler.volume_weights("thorax"), resampler.volume_weights("thorax_partial"))
    assert (source[:, 0::2].sum(axis=1) == 5).all() and (resampler.volume_weights("thorax")[:, 0::2].sum(1) == 3).all()
    assert (resampler.seed_weights.sum(axis=1) == 3).all() and source.std() > 0


def test_the_t_interval_is_the_one_over_per_seed_differences() -> None:
    from scipy import stats as scipy_stats

    table = score_table(_rows(0.05, noise=0.03, seeds=(0, 1, 2, 3, 4)))
    per_seed = [d["shifted_avg"] for d in seed_differences(table, "a", "b", "source", ["shifted"]).values()]
    result = t_contrast(table, {"a": 1.0, "b": -1.0}, "source", ["shifted"])["shifted_avg"]
    half = scipy_stats.t.ppf(0.975, 4) * np.std(per_seed, ddof=1) / np.sqrt(5)
    assert result.mean == pytest.approx(np.mean(per_seed)) and result.n_seeds == 5
    assert (result.low, result.high) == pytest.approx((np.mean(per_seed) - half, np.mean(per_seed) + half))
    boot = bootstrap_difference(table, "a", "b", "source", ["shifted"], n_boot=300)["shifted_avg"]
    assert boot.mean == pytest.approx(result.mean)
    one = t_contrast(score_table(_rows(0.05, seeds=(0,))), {"a": 1.0, "b": -1.0}, "source", ["shifted"])
    assert np.isnan(one["shifted_avg"].low) and one["shifted_avg"].n_seeds == 1


def test_paired_bootstrap_finds_a_real_difference_and_no_false_one() -> None:
    table = score_table(_rows(0.08))
    diff = bootstrap_difference(table, "a", "b", "source", ["shifted"], n_boot=500)
    assert diff["shifted_avg"].low > 0.05 and diff["shifted_avg"].excludes_zero()
    assert not diff["in_domain"].excludes_zero() and diff["shifted_avg"].n_seeds == 3
    per_seed = seed_differences(table, "a", "b", "source", ["shifted"])
    assert set(per_seed) == {0, 1, 2} and all(0.05 < d["shifted_avg"] < 0.11 for d in per_seed.values())
    null = bootstrap_difference(score_table(_rows(0.0, rng_seed=3)), "a", "b", "source", ["shifted"], n_boot=500)
    assert null["shifted_avg"].low < 0 < null["shifted_avg"].high
    broken = _rows(0.0)
    broken[-1]["subject"] = "other"
    with pytest.raises(ValueError, match="holds other volumes"):
        score_table(broken)


def test_trend_recovers_a_growing_gain_and_finds_none_in_a_constant_one() -> None:
    budgets = (250, 500, 1000, 2000)
    growing = {b: score_table(_rows(0.02 * i, rng_seed=i)) for i, b in enumerate(budgets)}  # +0.02 per doubling
    trend = bootstrap_trend(growing, "a", "b", ["shifted"], n_boot=300)
    assert trend is not None and trend.budgets == list(budgets) and trend.n_seeds == 3
    assert 0.01 < trend.low < trend.slope < trend.high < 0.03 and abs(trend.slope - 0.02) < 0.005
    assert abs(trend.at_last - 0.06) < 0.01
    assert 2000 * 1.5 < trend.budget_reaching(0.08) < 2000 * 3  # one more doubling
    constant = {b: score_table(_rows(0.03, rng_seed=10 + i)) for i, b in enumerate(budgets)}
    flat = bootstrap_trend(constant, "a", "b", ["shifted"], n_boot=300)
    assert flat.low < 0 < flat.high and abs(flat.at_last - 0.03) < 0.01
    assert flat.budget_reaching(0.02) == 2000.0
    assert bootstrap_trend({250: growing[250]}, "a", "b", ["shifted"]) is None
    partial = {**growing, 2000: score_table(_rows(0.06, seeds=(0, 1), rng_seed=9))}
    assert bootstrap_trend(partial, "a", "b", ["shifted"], n_boot=50).n_seeds == 2  # seeds with every budget


def _planner(models: tuple[str, ...] = ("raw", "ema"), ablation: Ablation | None = None) -> Experiment:
    """An Experiment with only what planning needs: no data, no training (3 iterations per epoch)."""
    experiment = Experiment.__new__(Experiment)
    experiment.arms, experiment.seeds, experiment.budgets = ["standard", "cooperative"], [0, 1], [2, 4]
    experiment.overrides, experiment.data_fingerprint = {"weight_averaging": True, "ema_decay": 0.9}, "data"
    experiment.iterations_per_epoch, experiment.threads = 3, 1
    experiment.models, experiment.ablation = models, ablation
    return experiment


def test_plans_per_protocol_part() -> None:
    main_plans = _planner().plans()
    assert [p.name for p in main_plans] == ["cooperative_seed0", "standard_seed0", "cooperative_seed1",
                                            "standard_seed1"]  # fmt: skip
    first = main_plans[0]
    assert first.budgets == [2, 4] and first.models == ("raw", "ema") and first.epochs == 2 and first.selected
    assert first.spec.overrides["checkpoint_iterations"] == [2, 4] and first.spec.overrides["weight_averaging"]
    cosine = [p for p in _planner(("raw", "cosine")).plans() if p.schedule == "cosine"]
    assert [p.name for p in cosine[:2]] == ["cooperative_seed0_cosine2", "cooperative_seed0_cosine4"]
    assert all(not p.selected and p.models == ("raw",) for p in cosine)
    assert cosine[1].spec.overrides["lr_policy"] == "one_cycle" and cosine[1].epochs == 2
    assert cosine[1].spec.overrides["train#lr_scheduler#total_steps"] == 4
    assert "weight_averaging" not in cosine[1].spec.overrides
    ablation = _planner(ablation=Ablation(("coop_no_hard_shape", "coop_stn_standard"), 4, (0, 1, 2))).plans()
    assert len(ablation) == 6 and all(p.budgets == [4] and not p.selected for p in ablation)
    assert ablation[0].spec.overrides["hard_terms_off"] == ["hard_shape"]
    assert ablation[1].spec.overrides["stn_hard_training"] is False
    keys = [p.spec.key for p in (*main_plans, *cosine, *ablation)]
    assert len(set(keys)) == len(keys)


def test_a_failed_run_does_not_stop_the_others() -> None:
    experiment = _planner()
    ran = []

    def run(plan) -> dict:
        ran.append(plan.name)
        if plan.name == "cooperative_seed0":
            raise RuntimeError("command failed (exit 1); full log: runs/x/train.log")
        return {}

    experiment.run = run
    failed = experiment.run_all(jobs=1)
    assert failed == {"cooperative_seed0": "command failed (exit 1); full log: runs/x/train.log"}
    assert sorted(ran) == sorted(plan.name for plan in experiment.plans())  # every later run still ran


@pytest.mark.slow
def test_tiny_experiment_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    watched = [BUNDLE_ROOT / "models", BUNDLE_ROOT / "logs"]
    before = {p: sorted(x.name for x in p.iterdir()) if p.is_dir() else None for p in watched}
    results = tmp_path / "results"
    args = ["--tag", "tiny", "--arms", "standard", "cooperative", "--seeds", "0", "--budgets", "2", "4",
            "--train_subjects", "1", "--val_subjects", "1", "--test_subjects", "1",
            "--domains", "contrast", "RandomSpike", "thorax", "--threads", "1", "--jobs", "2",
            "--run_dir", str(tmp_path / "runs"), "--results_dir", str(results), "--cache_dir", str(tmp_path / "cache"),
            *TINY, "--override", "val_interval=1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": ""}  # as documented: from the repository root, nothing else needed
    done = subprocess.run([sys.executable, "-m", "tools.robustness", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    ledger = Ledger(results / "tiny" / "runs")
    records = ledger.records()
    assert sorted(r["arm"] for r in records) == ["cooperative", "standard"]
    rows = list(ledger.rows())
    # the raw weights and their average at every budget, FTN, FTN+STN and FTN+STN with clean-up, every test set
    domains = ("source", "contrast", "RandomSpike", "thorax")
    assert {(r["arm"], r["model"], r["iteration"], r["test_set"], r["output"]) for r in rows} == {
        (a, m, b, d, o) for a in ("standard", "cooperative") for m in ("raw", "ema") for b in (2, 4)
        for d in domains for o in ("ftn", "ftn_stn", "ftn_stn_post")
    }  # fmt: skip
    assert all(0.0 <= r["dice_mean"] <= 1.0 and r["disagreement_score"] >= 0.0 for r in rows)
    assert all(0.0 <= r["far_all"] <= 1.0 for r in rows)
    spikes = [r for r in rows if r["test_set"] == "RandomSpike"]  # artefact copies keep their source subject
    assert spikes and all(r["source_subject"] and r["subject"].startswith(r["source_subject"] + "_") for r in spikes)
    assert all(r["source_subject"] == "" for r in rows if r["test_set"] != "RandomSpike")
    # each run's model selected by validation, evaluated on the same test sets; the run records where it came from
    selected = list(ledger.rows(selected=True))
    arms = ("standard", "cooperative")
    assert {(r["arm"], r["test_set"]) for r in selected} == {(a, d) for a in arms for d in domains}
    for record in records:
        chosen = record["selected"]
        assert chosen["epoch"] >= 1 and 0.0 <= chosen["val_dice"] <= 1.0
        assert {r["iteration"] for r in selected if r["arm"] == record["arm"]} == {chosen["iteration"]}
        assert record["schedule"] == "constant" and record["overrides"]["weight_averaging"] is True
    report = (results / "tiny" / "report.md").read_text()
    assert "## Settled models" in report and "| raw | cooperative |" in report and "| ema | cooperative |" in report
    assert "| 4 | FTN+STN | cooperative - standard |" in report and "| 4 | FTN | cooperative - standard |" in report
    assert "## Every test set at 4 iterations" in report and "## What the STN adds (FTN+STN - FTN)" in report
    assert "## What the curves show" in report and "### The same for the FTN alone" in report
    assert "Criterion at 4 iterations (FTN+STN), cooperative - standard with 1" in report
    assert "Criterion at 4 iterations (FTN), cooperative - standard with 1" in report
    assert "## Paired differences per test set at 4 iterations" in report and "| thorax | anatomy | " in report
    assert "## The other models at 4 iterations" in report
    section = report.split("## The model each run selected by validation", 1)[1].split("\n## ", 1)[0]
    assert "| FTN+STN | cooperative - standard | " in section
    assert "The success criterion on these models (FTN+STN)" in section
    (one_seed,) = [line for line in report.splitlines() if line.startswith("| 4 | cooperative | 1 | ")]
    assert "±" not in one_seed  # no spread from a single seed
    summary = json.loads((results / "tiny" / "summary.json").read_text())
    model = summary["model"]
    assert summary["models"] == {"raw": [2, 4], "ema": [2, 4]} and model in ("raw", "ema")
    assert set(summary["results"][model]["4"]["stats"]["ftn_stn"]) == {"standard", "cooperative"}
    assert set(summary["results"][model]["4"]["stn_gain"]) == {"standard", "cooperative"}
    assert summary["trends"]["ftn_stn"]["cooperative-standard"]["budgets"] == [2, 4]
    assert summary["selected"]["criterion"]["ftn_stn"]["n_seeds"] == 1
    assert "- cooperative - standard (1 seed(s), 2 to 4 iterations): " in report
    for png in ("learning_curves.png", "differences.png", "domains.png"):
        assert (results / "tiny" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run_dirs = {r["arm"]: tmp_path / "runs" / "tiny" / RunSpec(r["arm"], 0, r["overrides"], r["data"]).key
                for r in records}  # fmt: skip
    for arm, folder in run_dirs.items():
        for name in ("model_iter000002.pt", "model_iter000004.pt", "model_ema_iter000002.pt",
                     "model_ema_iter000004.pt"):  # fmt: skip
            assert (folder / "models" / name).is_file(), name
        assert f"--latent_da {arm == 'cooperative'}" in (folder / "train.log").read_text()
    after = {p: sorted(x.name for x in p.iterdir()) if p.is_dir() else None for p in watched}
    assert after == before, "the experiment wrote into the bundle's models/ or logs/"

    # a second start: everything in the ledger is reused; lost evaluations are redone without retraining
    standard = next(r for r in records if r["arm"] == "standard")
    spec = RunSpec("standard", 0, standard["overrides"], standard["data"])
    (lost,) = [p for p in ledger.run_dir(spec).glob("*/ema000004.csv")]
    lost.unlink()
    (lost_selected,) = [p for p in ledger.run_dir(spec).glob("*/selected.csv")]
    lost_selected.unlink()
    trained_log = (run_dirs["standard"] / "train.log").read_text()
    done = subprocess.run([sys.executable, "-m", "tools.robustness", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert lost.is_file() and lost_selected.is_file()
    assert (run_dirs["standard"] / "train.log").read_text() == trained_log
    assert "cooperative_seed0: every model evaluated earlier" in done.stderr

    assert main([*args, "--status"]) == 0  # progress from the ledger and run folders, nothing run or written
    table = capsys.readouterr().out
    assert "| standard_seed0 | " + spec.key + " | [2, 4] | all | yes | [2, 4] | " in table
    (standard_row,) = [line for line in table.splitlines() if line.startswith("| standard_seed0 |")]
    assert int(standard_row.strip(" |").rsplit("|", 1)[1].split(" of ")[0]) >= 1  # epochs, from the training state


def test_the_reduced_gpu_script_sets_up_the_paper_protocol(tmp_path: Path) -> None:
    """``tools/robustness/gpu_reduced.sh`` as documented, with ``--status`` appended (nothing trained) and tiny data:
    its flags parse, it plans three arms x seeds 0-2 at 250 and 500 iterations, and its runs are keyed apart from
    the CPU protocol's (other crop, batch, rate and device)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": ""}
    tiny = ["--train_subjects", "1", "--val_subjects", "1", "--test_subjects", "1", "--domains", "contrast",
            "--cache_dir", str(tmp_path / "cache"), "--run_dir", str(tmp_path / "runs"),
            "--results_dir", str(tmp_path / "results")]  # fmt: skip
    done = subprocess.run(["bash", str(REPO_ROOT / "tools" / "robustness" / "gpu_reduced.sh"), "--status", *tiny],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "_seed" in line]
    assert sorted(r.split("|")[1].strip() for r in rows) == sorted(
        f"{arm}_seed{seed}" for arm in ("standard", "augmented", "cooperative") for seed in (0, 1, 2)
    )
    assert all("| [250, 500] | raw: none | no | none | 0 of " in r for r in rows)
    gpu_keys = {r.split("|")[2].strip() for r in rows}
    done = subprocess.run([sys.executable, "-m", "tools.robustness", "--status", "--seeds", "0", "1", "2", *tiny],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    cpu_keys = {line.split("|")[2].strip() for line in done.stdout.splitlines() if "_seed" in line}
    assert len(gpu_keys) == len(cpu_keys) == 9 and not gpu_keys & cpu_keys
    assert not (tmp_path / "results" / "gpu_reduced").exists()  # --status writes nothing


def _ledger_rows(budget: int, rng: np.random.Generator, gain: float, stn: float, level: float = 0.0) -> list[dict]:
    """Per-volume ledger rows of one model: source subjects te*, an artefact copy of them, a second anatomy model th*;
    FTN Dice 0.6 + ``level`` (+ ``gain`` on the shifted sets), FTN+STN ``stn`` more."""
    sets = {"source": [(f"te{i}", "") for i in range(4)], "spike": [(f"te{i}_0", f"te{i}") for i in range(4)],
            "thorax": [(f"th{i}", "") for i in range(3)]}  # fmt: skip
    rows = []
    for test_set, names in sets.items():
        for subject, source in names:
            for frame in ("ED", "ES"):
                shift = gain if test_set != "source" else 0.0
                ftn = 0.6 + level + 0.01 * budget + shift + 0.01 * rng.standard_normal()
                for output, dice in (("ftn", ftn), ("ftn_stn", ftn + stn), ("ftn_stn_post", ftn + stn)):
                    rows.append({"test_set": test_set, "subject": subject, "source_subject": source, "frame": frame,
                                 "output": output, "dice_mean": dice, "hd95_mean": 5.0, "far_all": 0.01,
                                 "disagreement_score": float(rng.random())})  # fmt: skip
    return rows


def test_the_report_shows_both_outputs_the_settled_models_and_the_ablation(tmp_path: Path) -> None:
    from tools.robustness.report import write_report

    ledger, rng = Ledger(tmp_path / "runs"), np.random.default_rng(0)
    # cooperative: its FTN ahead by 0.06, its STN costs 0.03; the ablation arm without hard_corrupted_shape gets
    # an STN that adds 0.01; the raw snapshots scatter by seed, the averages do not
    arms = {"standard": (0.0, 0.01), "cooperative": (0.06, -0.03), "coop_no_corrupted_shape": (0.06, 0.01)}
    columns = ["dice_mean", "hd95_mean", "far_all", "disagreement_score"]
    for arm, (gain, stn) in arms.items():
        budgets = [4] if arm.startswith("coop_") else [2, 4]
        for seed in range(3):
            spec = RunSpec(arm, seed, {"arm": arm, "budgets": budgets}, "data")
            ledger.write_record(spec)
            for budget in budgets:
                scatter = 0.08 * rng.standard_normal()
                ledger.write_evaluation(spec, "ev", {}, budget, _ledger_rows(budget, rng, gain, stn, scatter), columns,
                                        "raw")  # fmt: skip
                ledger.write_evaluation(spec, "ev", {}, budget, _ledger_rows(budget, rng, gain, stn), columns, "ema")
    groups = {"source": "source", "spike": "artefact", "thorax": "anatomy"}
    write_report(ledger, tmp_path, "ev", "source", ["spike", "thorax"], groups, ["standard", "cooperative"], [2, 4],
                 {"protocol": "v2"}, ablation=(["coop_no_corrupted_shape", "coop_no_hard_shape"], 4))  # fmt: skip
    report = (tmp_path / "report.md").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["model"] == "ema" and summary["settled"]["chosen"] == "ema"  # the smaller spread over seeds
    assert summary["settled"]["largest_sd"]["ema"] < summary["settled"]["largest_sd"]["raw"]
    assert "use the **weight averages (EMA)** (ema)" in report and "## The other models at 4 iterations" in report
    both = summary["results"]["ema"]["4"]["differences"]
    assert both["ftn"]["cooperative-standard"]["shifted_avg"]["mean"] == pytest.approx(0.06, abs=0.01)
    assert both["ftn_stn"]["cooperative-standard"]["shifted_avg"]["mean"] == pytest.approx(0.02, abs=0.01)
    assert {"t_low", "t_high", "low", "high"} <= set(both["ftn_stn"]["cooperative-standard"]["shifted_avg"])
    gain = summary["results"]["ema"]["4"]["stn_gain"]
    assert gain["cooperative"]["shifted_avg"]["mean"] == pytest.approx(-0.03, abs=1e-6)
    assert gain["standard"]["in_domain"]["mean"] == pytest.approx(0.01, abs=1e-6)
    assert "| 4 | FTN | cooperative - standard | +0.06" in report and "| 4 | cooperative | -0.030 [" in report
    assert "Criterion at 4 iterations (FTN+STN)" in report and "Criterion at 4 iterations (FTN)" in report
    change = summary["ablation"]["changes"]["coop_no_corrupted_shape"]["stn_gain"]["shifted_avg"]
    assert change["mean"] == pytest.approx(0.04, abs=1e-6) and change["low"] > 0 and change["t_low"] > 0
    assert "moves most in coop_no_corrupted_shape (+0.040 against the cooperative arm)" in report
    assert "coop_no_corrupted_shape changes it with both intervals excluding 0" in report
    assert "coop_no_hard_shape" not in summary["ablation"]["changes"]  # not measured: left out, not invented
