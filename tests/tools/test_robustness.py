"""The robustness command end to end with a tiny budget: both methods trained by the bundle's workflow into run
folders (never the bundle's models/), evaluated on every domain, results written; finished runs are reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BUNDLE_ROOT, REPO_ROOT
from scripts.evaluation.report import read_csv
from tools.robustness.experiment import DEFAULT_BUDGET, evaluation_command, main, parse_override, training_command

TINY = [
    "--override",
    "pixdim=[5.0,5.0,-1]",
    "--override",
    "crop_size=32",
    "--override",
    "width=4",
    "--override",
    "batch_size=4",
    "--override",
    "num_workers=0",
]


def test_commands_and_overrides(tmp_path: Path) -> None:
    assert parse_override("crop_size=192") == ("crop_size", 192)
    assert parse_override("pixdim=[1.5,1.5,-1]") == ("pixdim", [1.5, 1.5, -1])
    assert parse_override("amp=True") == ("amp", True)
    assert parse_override("name=abc") == ("name", "abc")
    run = tmp_path / "standard_seed1"
    cmd = training_command(BUNDLE_ROOT, run, "/data", "/data/d.json", 1, False, 3, {"crop_size": 192, "amp": True})
    text = " ".join(cmd)
    assert "run training" in text and "--latent_da False" in text and "--seed 1" in text and "--epochs 3" in text
    assert f"--ckpt_dir {run / 'models'}" in text and f"--output_dir {run / 'logs'}" in text
    assert "--crop_size 192" in text and "--amp True" in text
    assert str(BUNDLE_ROOT / "models") not in text
    cmd = evaluation_command(BUNDLE_ROOT, run, {"a": "/d.json#a"}, "standard", {})
    assert "run evaluating" in " ".join(cmd) and str(run / "models" / "model.pt") in cmd
    assert DEFAULT_BUDGET["epochs"] >= 1
    with pytest.raises(SystemExit, match="needs at least one --test_set"):
        main(["--dataset_dir", str(tmp_path)])


def test_tiny_budget_end_to_end(tmp_path: Path) -> None:
    watched = [BUNDLE_ROOT / "models", BUNDLE_ROOT / "logs"]
    before = {p: sorted(x.name for x in p.iterdir()) if p.is_dir() else None for p in watched}
    args = [
        "--run_dir",
        str(tmp_path / "runs"),
        "--results_dir",
        str(tmp_path / "results"),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--tag",
        "tiny",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--train_subjects",
        "1",
        "--val_subjects",
        "1",
        "--test_subjects",
        "1",
        "--domains",
        "contrast",
        "RandomSpike",
        "--threads",  # one torch thread per run: tiny ops on a possibly busy machine
        "1",
        *TINY,
    ]
    env = {**os.environ, "PYTHONPATH": str(BUNDLE_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "tools.robustness", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    results = tmp_path / "results"
    rows = read_csv(results / "tiny_volumes.csv")
    assert {(r["method"], r["seed"], r["test_set"], r["output"]) for r in rows} == {
        (m, "0", d, o)
        for m in ("standard", "cooperative")
        for d in ("source", "contrast", "RandomSpike")
        for o in ("ftn", "ftn_stn")
    }
    md = (results / "tiny_robustness.md").read_text()
    assert "| Method | source | contrast | RandomSpike | in-domain | AVG shifted | AVG all |" in md
    assert "| Δ Cooperative training − Standard training |" in md and "Criterion (shifted >= +0.05" in md
    assert "| Method | source | contrast | RandomSpike | AVG (FTN) | AVG (FTN+STN) |" in md
    summary = json.loads((results / "tiny_summary.json").read_text())
    assert set(summary["dice"]["ftn_stn"]["groups"]) == {"standard", "cooperative"}
    assert "shifted avg" in (results / "tiny_summary.txt").read_text()
    for png in ("tiny_dice.png", "tiny_hd95.png", "tiny_domains.png"):
        assert (results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    for method, latent_da in (("standard", "False"), ("cooperative", "True")):
        run = tmp_path / "runs" / "tiny" / f"{method}_seed0"
        assert (run / "models" / "model.pt").is_file() and list((run / "logs").glob("events.out.tfevents.*"))
        assert f"--latent_da {latent_da}" in (run / "train.log").read_text().splitlines()[0]
        assert json.loads((run / "run.json").read_text())["done"] is True
    after = {p: sorted(x.name for x in p.iterdir()) if p.is_dir() else None for p in watched}
    assert after == before, "the robustness run wrote into the bundle's models/ or logs/"

    # a second start with the same arguments reuses the finished runs, evaluates a run whose evaluation was lost
    # (without retraining it) and rewrites the results
    standard = tmp_path / "runs" / "tiny" / "standard_seed0"
    (standard / "eval" / "volumes.csv").unlink()
    record = json.loads((standard / "run.json").read_text())
    (standard / "run.json").write_text(json.dumps({**record, "done": False}))
    trained_at = (standard / "models" / "model.pt").stat().st_mtime_ns
    (results / "tiny_robustness.md").unlink()
    assert main(args) == 0
    assert (standard / "models" / "model.pt").stat().st_mtime_ns == trained_at, "a trained run was retrained"
    assert (standard / "eval" / "volumes.csv").is_file() and json.loads((standard / "run.json").read_text())["done"]
    text = (results / "tiny_robustness.md").read_text()
    assert "time_cooperative_seed0: training" in text and "(reused)" in text
