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
    ARMS,
    PROTOCOLS,
    Experiment,
    evaluation_command,
    main,
    parse_override,
    training_command,
)
from tools.robustness.ledger import SELECTED, Ledger, RunSpec, checkpoint_stem, config_key
from tools.robustness.stats import bootstrap_difference, bootstrap_trend, score_table, seed_differences

TINY = ["--override", "pixdim=[5.0,5.0,-1]", "--override", "crop_size=32", "--override", "width=4",
        "--override", "batch_size=4", "--override", "num_workers=0", "--eval_override", "crop_size=32"]  # fmt: skip


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
    assert all(p["overrides"]["lr_policy"] == "constant" for p in PROTOCOLS.values())
    assert PROTOCOLS["default"]["train_subjects"] == 10 and max(PROTOCOLS["default"]["budgets"]) >= 1500
    with pytest.raises(SystemExit, match="needs at least one --test_set"):
        main(["--dataset_dir", str(tmp_path)])


def test_run_keys_separate_configurations() -> None:
    assert config_key({"a": 1, "b": [1, 2]}) == config_key({"b": [1, 2], "a": 1})
    base = RunSpec("cooperative", 0, {"latent_da": True, "crop_size": 96}, "data-v1")
    assert base.key == RunSpec("cooperative", 0, {"crop_size": 96, "latent_da": True}, "data-v1").key
    for other in (RunSpec("cooperative", 1, base.overrides, "data-v1"), RunSpec("standard", 0, base.overrides,
                  "data-v1"), RunSpec("cooperative", 0, {**base.overrides, "crop_size": 64}, "data-v1"),
                  RunSpec("cooperative", 0, base.overrides, "data-v2")):  # fmt: skip
        assert other.key != base.key


def test_the_ledger_keeps_the_selected_model_apart_from_the_budgets(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "runs")
    spec = RunSpec("standard", 0, {"latent_da": False}, "data-v1")
    ledger.write_record(spec, selected={"epoch": 3, "iteration": 87, "val_dice": 0.8})
    row = {"test_set": "source", "subject": "s1", "source_subject": "", "frame": "ED", "output": "ftn_stn",
           "dice_mean": 0.712345678, "image": "/not/kept.nii.gz"}  # fmt: skip
    ledger.write_evaluation(spec, "ev", {"test_sets": {}}, 250, [row], ["dice_mean"])
    ledger.write_evaluation(spec, "ev", {"test_sets": {}}, SELECTED, [{**row, "dice_mean": 0.8}], ["dice_mean"])
    assert ledger.evaluated_iterations(spec, "ev") == [250] and ledger.has_selected(spec, "ev")
    (budget,) = ledger.rows("ev")
    (selected,) = ledger.rows("ev", selected=True)
    assert (budget["iteration"], budget["dice_mean"]) == (250, 0.71235) and "image" not in budget
    assert (selected["iteration"], selected["dice_mean"]) == (87, 0.8)  # the iteration the run recorded
    assert checkpoint_stem(250) == "iter000250" and checkpoint_stem(SELECTED) == "selected"
    for bad in (0, "best", 2.5):
        with pytest.raises(ValueError, match="expected a positive iteration count"):
            checkpoint_stem(bad)


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


def test_a_failed_run_does_not_stop_the_others() -> None:
    experiment = Experiment.__new__(Experiment)  # only what scheduling needs: no data, no training
    experiment.arms, experiment.seeds, experiment.budgets = ["standard", "cooperative"], [0, 1], [2, 4]
    experiment.overrides, experiment.data_fingerprint = {}, "data"
    experiment.epochs, experiment.iterations_per_epoch, experiment.threads = 1, 4, 1
    ran = []

    def run(spec: RunSpec) -> dict:
        ran.append(spec.name)
        if spec.name == "cooperative_seed0":
            raise RuntimeError("command failed (exit 1); full log: runs/x/train.log")
        return {}

    experiment.run = run
    failed = experiment.run_all(jobs=1)
    assert failed == {"cooperative_seed0": "command failed (exit 1); full log: runs/x/train.log"}
    assert sorted(ran) == sorted(spec.name for spec in experiment.specs())  # every later run still ran


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
    assert {(r["arm"], r["iteration"], r["test_set"], r["output"]) for r in rows} == {
        (a, b, d, o) for a in ("standard", "cooperative") for b in (2, 4)
        for d in ("source", "contrast", "RandomSpike", "thorax") for o in ("ftn", "ftn_stn")
    }  # fmt: skip
    assert all(0.0 <= r["dice_mean"] <= 1.0 and r["disagreement_score"] >= 0.0 for r in rows)
    spikes = [r for r in rows if r["test_set"] == "RandomSpike"]  # artefact copies keep their source subject
    assert spikes and all(r["source_subject"] and r["subject"].startswith(r["source_subject"] + "_") for r in spikes)
    assert all(r["source_subject"] == "" for r in rows if r["test_set"] != "RandomSpike")
    # each run's model selected by validation, evaluated on the same test sets; the run records where it came from
    selected = list(ledger.rows(selected=True))
    assert {(r["arm"], r["test_set"]) for r in selected} == {
        (a, d) for a in ("standard", "cooperative") for d in ("source", "contrast", "RandomSpike", "thorax")
    }  # fmt: skip
    for record in records:
        chosen = record["selected"]
        assert chosen["epoch"] >= 1 and 0.0 <= chosen["val_dice"] <= 1.0
        assert {r["iteration"] for r in selected if r["arm"] == record["arm"]} == {chosen["iteration"]}
    report = (results / "tiny" / "report.md").read_text()
    assert "| 4 | cooperative - standard |" in report and "## Every test set at 4 iterations" in report
    assert "## What the curves show" in report and "Criterion at 4 iterations, cooperative - standard with 1" in report
    assert "## Paired differences per test set at 4 iterations" in report and "| thorax | anatomy | " in report
    section = report.split("## The model each run selected by validation", 1)[1].split("\n## ", 1)[0]
    assert "| cooperative - standard | " in section and "The success criterion on these models: " in section
    (one_seed,) = [line for line in report.splitlines() if line.startswith("| 4 | cooperative | 1 | ")]
    assert "±" not in one_seed  # no spread from a single seed
    summary = json.loads((results / "tiny" / "summary.json").read_text())
    assert set(summary["stats"]["4"] if "4" in summary["stats"] else summary["stats"][4]) == {"standard",
                                                                                              "cooperative"}
    assert summary["trends"]["cooperative-standard"]["budgets"] == [2, 4]
    assert summary["selected"]["criterion"]["n_seeds"] == 1 and "cooperative-standard" in summary["selected"][
        "differences"]
    assert "- cooperative - standard (1 seed(s), 2 to 4 iterations): " in report
    for png in ("learning_curves.png", "differences.png", "domains.png"):
        assert (results / "tiny" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run_dirs = {r["arm"]: tmp_path / "runs" / "tiny" / RunSpec(r["arm"], 0, r["overrides"], r["data"]).key
                for r in records}  # fmt: skip
    for arm, folder in run_dirs.items():
        assert (folder / "models" / "model_iter000002.pt").is_file() and (folder / "models" / "model_iter000004.pt")
        assert f"--latent_da {arm == 'cooperative'}" in (folder / "train.log").read_text()
    after = {p: sorted(x.name for x in p.iterdir()) if p.is_dir() else None for p in watched}
    assert after == before, "the experiment wrote into the bundle's models/ or logs/"

    # a second start: everything in the ledger is reused; lost evaluations are redone without retraining
    standard = next(r for r in records if r["arm"] == "standard")
    spec = RunSpec("standard", 0, standard["overrides"], standard["data"])
    (lost,) = [p for p in ledger.run_dir(spec).glob("*/iter000004.csv")]
    lost.unlink()
    (lost_selected,) = [p for p in ledger.run_dir(spec).glob("*/selected.csv")]
    lost_selected.unlink()
    trained_log = (run_dirs["standard"] / "train.log").read_text()
    done = subprocess.run([sys.executable, "-m", "tools.robustness", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert lost.is_file() and lost_selected.is_file()
    assert (run_dirs["standard"] / "train.log").read_text() == trained_log
    assert "cooperative_seed0: every budget and the selected model evaluated earlier" in done.stderr

    assert main([*args, "--status"]) == 0  # progress from the ledger and run folders, nothing run or written
    table = capsys.readouterr().out
    assert "| standard_seed0 | " + spec.key + " | all | yes | [2, 4] | " in table and "| cooperative_seed0 |" in table
    (standard_row,) = [line for line in table.splitlines() if line.startswith("| standard_seed0 |")]
    assert int(standard_row.strip(" |").rsplit("|", 1)[1]) >= 1  # epochs trained, read from the training state


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
    assert "evaluated of [250, 500]" in done.stdout and all("| none | no | none | 0 |" in r for r in rows)
    gpu_keys = {r.split("|")[2].strip() for r in rows}
    done = subprocess.run([sys.executable, "-m", "tools.robustness", "--status", "--seeds", "0", "1", "2", *tiny],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    cpu_keys = {line.split("|")[2].strip() for line in done.stdout.splitlines() if "_seed" in line}
    assert len(gpu_keys) == len(cpu_keys) == 9 and not gpu_keys & cpu_keys
    assert not (tmp_path / "results" / "gpu_reduced").exists()  # --status writes nothing
