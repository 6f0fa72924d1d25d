"""The bundle as users run it: ConfigWorkflow on a tiny phantom, checkpoints, verification and TorchScript export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_net_in_out

from conftest import BUNDLE_ROOT, REPO_ROOT
from scripts.data.phantom import write_phantom_dataset

TRAIN_CONFIG = BUNDLE_ROOT / "configs" / "train.json"
META = BUNDLE_ROOT / "configs" / "metadata.json"
# A tiny, fast setting of the real pipeline: coarse pixels, 32 x 32 crops, two training subjects.
TINY = {
    "pixdim": [5.0, 5.0, -1],
    "crop_size": 32,
    "batch_size": 4,
    "epochs": 1,
    "val_interval": 1,
    "num_workers": 0,
    "width": 4,
}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    datalist = {}
    for key, n, seed in (("training", 2, 1), ("validation", 1, 2)):
        entries = write_phantom_dataset(root / key, n, seed=seed, n_slices_range=(4, 5))
        datalist[key] = [{**e, "image": f"{key}/{e['image']}", "label": f"{key}/{e['label']}"} for e in entries]
    (root / "datalist.json").write_text(json.dumps(datalist))
    return root


@pytest.fixture(scope="module")
def trained(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("run")
    workflow = ConfigWorkflow(
        workflow_type="train",
        config_file=str(TRAIN_CONFIG),
        meta_file=str(META),
        logging_file=str(BUNDLE_ROOT / "configs" / "logging.conf"),
        dataset_dir=str(tiny_dataset),
        ckpt_dir=str(out / "models"),
        output_dir=str(out / "logs"),
        **TINY,
    )
    workflow.initialize()
    missing = workflow.check_properties()
    workflow.run()
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    trainer = workflow.parser.get_parsed_content("train#trainer")
    workflow.finalize()
    return {"out": out, "missing": missing, "evaluator": evaluator, "trainer": trainer}


def test_train_workflow_runs_and_checkpoints(trained: dict) -> None:
    assert not trained["missing"], f"train properties missing: {trained['missing']}"
    models = trained["out"] / "models"
    assert (models / "model.pt").is_file() and (models / "model_final.pt").is_file()
    metrics = trained["evaluator"].state.metrics
    for key in ("val_mean_dice", "val_mean_dice_ftn", "val_dice_lv", "val_dice_myocardium", "val_dice_rv"):
        assert 0.0 <= metrics[key] <= 1.0
    train_metrics = trained["trainer"].state.metrics
    for term in ("seg", "recon", "gt_shape", "shape", "hard_seg", "hard_recon", "hard_shape", "hard_corrupted_shape"):
        assert train_metrics[f"train_{term}"] > 0
    logs = trained["out"] / "logs"
    assert list(logs.glob("events.out.tfevents.*")), "no TensorBoard log written"
    assert list(logs.glob("hard_examples_epoch*.png")), "no hard-example picture written"


def test_checkpoint_loads_into_network_def(trained: dict) -> None:
    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    parser["width"] = TINY["width"]
    net = parser.get_parsed_content("network_def")
    state = torch.load(trained["out"] / "models" / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state)  # strict: the flat state dict of all five parts
    assert {k.split(".")[0] for k in state} == set(net.parts())


def test_verify_net_in_out() -> None:
    verify_net_in_out(net_id="network_def", meta_file=str(META), config_file=str(TRAIN_CONFIG), n=4, device="cpu")


def test_ckpt_export_torchscript_matches_eager(trained: dict, tmp_path: Path) -> None:
    ts_path = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts_path),
        ckpt_file=str(trained["out"] / "models" / "model.pt"),
        meta_file=str(META),
        config_file=str(TRAIN_CONFIG),
        width=TINY["width"],
    )
    scripted = torch.jit.load(str(ts_path), map_location="cpu")
    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    parser["width"] = TINY["width"]
    eager = parser.get_parsed_content("network_def")
    eager.load_state_dict(torch.load(trained["out"] / "models" / "model.pt", weights_only=True))
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted.eval()(x), eager.eval()(x))


def test_metadata_is_complete() -> None:
    meta = json.loads(META.read_text())
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version",
                "required_packages_version", "task", "description", "authors", "copyright", "network_data_format"):
        assert meta.get(key), f"metadata.json lacks {key}"
    assert meta["version"] in meta["changelog"]
    import monai
    import numpy

    assert meta["monai_version"] == monai.__version__
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]
    assert meta["numpy_version"] == numpy.__version__
    fmt = meta["network_data_format"]
    assert set(fmt["inputs"]) == {"image"} and set(fmt["outputs"]) == {"pred"}
    assert fmt["inputs"]["image"]["num_channels"] == 1
    assert fmt["outputs"]["pred"]["num_channels"] == 4
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "lv", "2": "myocardium", "3": "rv"}


def test_cli_main_job_writes_inside_the_bundle(tiny_dataset: Path, tmp_path: Path) -> None:
    """`python -m monai.bundle run training --config_file .../train.json` from elsewhere writes into that bundle."""
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE_ROOT / "configs", bundle / "configs")
    shutil.copytree(BUNDLE_ROOT / "scripts", bundle / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": ""}
    config = str(bundle / "configs/train.json")
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config,
            "--dataset_dir", str(tiny_dataset), "--train#dataloader#batch_size", "4"]
    for key, value in TINY.items():
        if key != "batch_size":
            args += [f"--{key}", json.dumps(value)]
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (bundle / "models" / "model.pt").is_file()
    assert list((bundle / "logs").glob("events.out.tfevents.*"))
    assert not (cwd / "models").exists()
    assert "val_mean_dice" in result.stdout + result.stderr
    assert REPO_ROOT != bundle.parent
