"""Evaluation: Dice and HD95 (mm) on hand-made volumes with known answers (anisotropic spacing), the report, and
evaluate.json run end to end the MONAI way on a tiny phantom with a random-init checkpoint in a temporary bundle."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from scipy import ndimage

from conftest import BUNDLE_ROOT
from helpers import make_narrow_bundle_copy
from scripts.data.errors import DatasetError
from scripts.data.phantom import write_phantom_dataset
from scripts.evaluation.evaluate import resolve_test_sets
from scripts.evaluation.metrics import FAR_MM, dice_score, far_voxels, hd95_mm, volume_metrics
from scripts.evaluation.report import paper_table, read_csv, seed_summary, seed_table, set_means

TINY = {"pixdim": [5.0, 5.0, -1], "crop_size": 32, "width": 4, "num_workers": 0}


# --- metrics on hand-made volumes ----------------------------------------------------------------------------------
def test_dice_known_values() -> None:
    ref = np.zeros((6, 6, 2), bool)
    ref[0:2, 0:5, 0] = True  # 10 voxels
    pred = np.zeros_like(ref)
    pred[1:2, 0:4, 0] = True  # 4 inside
    pred[5, 0:2, 1] = True  # 2 outside
    assert dice_score(pred, ref) == pytest.approx(2 * 4 / (6 + 10))
    assert dice_score(ref, ref) == 1.0
    assert dice_score(np.zeros_like(ref), ref) == 0.0
    empty = np.zeros_like(ref)
    assert dice_score(empty, empty) == 0.0  # medpy's dc, the reference's metric, returns 0 when both are empty
    assert dice_score(empty, empty, empty=1.0) == 1.0


def test_hd95_single_voxels_anisotropic() -> None:
    ref = np.zeros((6, 8, 4), bool)
    pred = np.zeros_like(ref)
    ref[2, 2, 1] = True
    pred[2, 5, 2] = True  # 3 columns (2 mm each) and 1 slice (10 mm) away
    assert hd95_mm(pred, ref, (1.5, 2.0, 10.0)) == pytest.approx(math.sqrt(6.0**2 + 10.0**2))


def test_hd95_slice_shift_uses_the_slice_spacing() -> None:
    ref = np.zeros((10, 10, 6), bool)
    ref[2:7, 3:8, 1] = True
    pred = np.roll(ref, 2, axis=2)  # the same square two slices further: every surface point is 2 x 8 mm away
    assert hd95_mm(pred, ref, (1.2, 1.2, 8.0)) == pytest.approx(16.0)
    assert hd95_mm(pred, ref, (1.2, 1.2, 3.0)) == pytest.approx(6.0)


def test_hd95_ignores_a_five_percent_outlier_but_hd_would_not() -> None:
    ref = np.zeros((30, 30, 5), bool)
    ref[5:15, 5:15, 1:4] = True
    pred = ref.copy()
    pred[28, 28, 4] = True  # one stray voxel among hundreds of surface voxels
    assert hd95_mm(pred, ref, (1.0, 1.0, 5.0)) == pytest.approx(0.0)
    pred[5:15, 5:15, 1:4] = False
    pred[28, 28, 4] = False
    pred[5:15, 7:17, 1:4] = True  # the block shifted by 2 columns: 95th percentile distance 2 columns
    assert hd95_mm(pred, ref, (1.0, 1.5, 5.0)) == pytest.approx(3.0)


def test_hd95_matches_monai_on_random_shapes() -> None:
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(0)
    for _ in range(4):
        a = ndimage.gaussian_filter(rng.random((30, 26, 6)), 2) > 0.52
        b = ndimage.gaussian_filter(rng.random((30, 26, 6)), 2) > 0.52
        spacing = (1.36719, 0.9, 8.5)
        expected = compute_hausdorff_distance(
            torch.tensor(a[None, None]).float(),
            torch.tensor(b[None, None]).float(),
            include_background=True,
            percentile=95,
            spacing=list(spacing),
        )
        assert hd95_mm(a, b, spacing) == pytest.approx(float(expected[0, 0]), rel=1e-5)


def test_hd95_empty_structures() -> None:
    empty = np.zeros((4, 5, 2), bool)
    full = empty.copy()
    full[1, 1, 0] = True
    assert math.isnan(hd95_mm(empty, empty, (1, 2, 10)))
    diagonal = math.sqrt(4**2 + 10**2 + 20**2)  # the largest distance in the volume (mm)
    assert hd95_mm(empty, full, (1, 2, 10)) == pytest.approx(diagonal)
    assert hd95_mm(full, empty, (1, 2, 10)) == pytest.approx(diagonal)


def test_volume_metrics_per_class() -> None:
    label = np.zeros((10, 10, 3), np.int64)
    label[1:4, 1:4, 1] = 1  # LV, predicted exactly
    label[5:9, 1:3, 1] = 2  # MYO: 8 voxels
    pred = label.copy()
    pred[5:9, 1:3, 1] = 0
    pred[7:11, 1:3, 1] = 2  # MYO: 6 voxels, 4 overlapping -> 8 / 14
    metrics = volume_metrics(pred, label, (1.5, 1.5, 10.0))
    assert metrics["dice_lv"] == 1.0 and metrics["hd95_lv"] == 0.0
    assert metrics["dice_myocardium"] == pytest.approx(8 / 14)
    assert metrics["dice_rv"] == 0.0 and math.isnan(metrics["hd95_rv"])  # RV absent from both: reference Dice 0
    assert metrics["dice_mean"] == pytest.approx((1 + 8 / 14 + 0) / 3)
    assert metrics["hd95_mean"] == pytest.approx((0 + metrics["hd95_myocardium"]) / 2)
    one_hot = lambda x: np.eye(4, dtype=np.float32)[x].transpose(3, 0, 1, 2)  # noqa: E731
    np.testing.assert_equal(volume_metrics(one_hot(pred), torch.as_tensor(one_hot(label)), (1.5, 1.5, 10.0)), metrics)
    excluded = volume_metrics(pred, label, (1.5, 1.5, 10.0), empty_dice=float("nan"))
    assert math.isnan(excluded["dice_rv"]) and excluded["dice_mean"] == pytest.approx((1 + 8 / 14) / 2)


def test_far_false_positives_count_blobs_far_from_the_structure_not_rough_borders() -> None:
    spacing = (2.0, 2.0, 10.0)
    label = np.zeros((60, 60, 3), np.int64)
    label[20:30, 20:30, 1] = 2  # the myocardium of the reference
    pred = label.copy()
    pred[18:20, 20:30, 1] = 2  # a rough border: 20 voxels 2-4 mm outside, not far
    pred[50:54, 50:54, 1] = 2  # a ring on a vessel: 16 voxels about 57 mm away
    pred[20:24, 20:24, 2] = 2  # the next slice: 10 mm away, not far
    far, predicted = far_voxels(pred == 2, label == 2, spacing)
    assert (far, predicted) == (16, 100 + 20 + 16 + 16)
    metrics = volume_metrics(pred, label, spacing)
    assert metrics["far_myocardium"] == pytest.approx(16 / 152)
    assert metrics["far_lv"] == 0.0 and metrics["far_all"] == pytest.approx(16 / 152)  # nothing predicted: none far
    assert far_voxels(pred == 2, np.zeros_like(label, bool), spacing) == (152, 152)  # no reference: all far
    for rows_away, far_expected in ((int(FAR_MM / 2), 0), (int(FAR_MM / 2) + 1, 10)):  # 20 mm: not far; 22 mm: far
        line = np.zeros_like(label, bool)
        line[29 + rows_away, 20:30, 1] = True
        assert far_voxels(line, label == 2, spacing) == (far_expected, 10)



def test_far_false_positives_equal_the_distances_over_the_whole_volume() -> None:
    rng = np.random.default_rng(3)
    spacing = (1.25, 1.5, 8.0)
    for case in range(6):
        ref = np.zeros((70, 64, 6), bool)
        ref[rng.integers(10, 30) : 40, rng.integers(10, 30) : 45, 1:4] = True
        pred = ndimage.binary_dilation(ref, iterations=2) & (rng.random(ref.shape) > 0.3)
        if case % 2:
            pred[:] = False  # only a line beside the reference: its nearest reference voxels lie outside the line's box
            pred[48 + case, 0:25, 2] = True
        else:
            pred |= rng.random(ref.shape) > 0.995  # scattered false positives, some far, some at the volume's edge
        whole = ndimage.distance_transform_edt(~ref, sampling=spacing)
        assert far_voxels(pred, ref, spacing) == (int((whole[pred] > FAR_MM).sum()), int(pred.sum()))

# --- report -------------------------------------------------------------------------------------------------------
def _rows() -> list[dict]:
    rows = []
    for method, seed, base in (
        ("standard", 0, 0.6),
        ("standard", 1, 0.7),
        ("cooperative", 0, 0.8),
        ("cooperative", 1, 0.8),
    ):
        for test_set, drop in (("source", 0.0), ("shiftA", 0.2), ("shiftB", 0.4)):
            for i in range(2):
                dice = base - drop + (0.02 if i else -0.02)
                for output, bonus in (("ftn", 0.0), ("ftn_stn", 0.01)):
                    rows.append(
                        {
                            "method": method,
                            "seed": seed,
                            "test_set": test_set,
                            "output": output,
                            "dice_mean": dice + bonus,
                            "hd95_mean": 10.0,
                        }
                    )
    return rows


def test_paper_table_and_seed_summary() -> None:
    rows = _rows()
    assert set_means(rows, output="ftn", by="test_set")["shiftA"] == pytest.approx((0.4 + 0.5 + 0.6 + 0.6) / 4)
    table = paper_table(rows, ["source", "shiftA", "shiftB"], row_key="method", row_order=["standard", "cooperative"])
    lines = table.splitlines()
    assert lines[0] == "| Method | source | shiftA | shiftB | AVG (FTN) | AVG (FTN+STN) |"
    # standard: FTN source 0.65, shiftA 0.45, shiftB 0.25 -> AVG 0.45; FTN+STN 0.46
    assert lines[2] == "| standard | 0.650 | 0.450 | 0.250 | 0.450 | 0.460 |"
    summary = seed_summary(rows, ["source", "shiftA", "shiftB"], "source", ["standard", "cooperative"])
    std, coop = summary["groups"]["standard"], summary["groups"]["cooperative"]
    assert std["in_domain"]["mean"] == pytest.approx(0.66) and std["in_domain"]["sd"] == pytest.approx(0.1 / 2**0.5)
    assert std["shifted_avg"]["mean"] == pytest.approx(0.36)
    delta = coop["delta_vs_standard"]
    assert delta["shifted_avg"]["mean"] == pytest.approx(0.15) and delta["shifted_avg"]["min"] == pytest.approx(0.1)
    assert delta["seeds"] == ["0", "1"]
    text = seed_table(summary, ["source", "shiftA", "shiftB"], {"standard": "Std", "cooperative": "Coop"})
    assert "| Std | 0.660 ± 0.071 |" in text and "| Δ Coop − Std | +0.150 ± 0.071 |" in text


# --- test-set resolution ------------------------------------------------------------------------------------------
def test_resolve_test_sets_formats_and_errors(tmp_path: Path) -> None:
    entries = write_phantom_dataset(str(tmp_path / "d"), 1, seed=3, n_slices_range=(3, 3))
    rel = [{**e, "image": f"d/{e['image']}", "label": f"d/{e['label']}"} for e in entries]
    (tmp_path / "datalist.json").write_text(json.dumps({"test": rel, "other": rel[:1]}))
    path = str(tmp_path / "datalist.json")
    sets = resolve_test_sets(
        {
            "a": path,
            "b": path + "#other",
            "c": path + "::other",
            "d": {"datalist": path, "key": "other", "base_dir": str(tmp_path)},
        }
    )
    assert {k: len(v) for k, v in sets.items()} == {"a": 2, "b": 1, "c": 1, "d": 1}
    assert Path(sets["a"][0]["image"]).is_file() and sets["a"][0]["subject"] == "phantom000"
    assert len(resolve_test_sets(None, dataset_dir=str(tmp_path))["test"]) == 2
    with pytest.raises(DatasetError, match=r"test set 'x': datalist .*nope.json not found"):
        resolve_test_sets({"x": str(tmp_path / "nope.json")})
    with pytest.raises(DatasetError, match=r"datalist .*datalist.json has no non-empty 'missing'"):
        resolve_test_sets({"x": path + "#missing"})
    with pytest.raises(DatasetError, match="test set 'x': expected 'datalist.json'"):
        resolve_test_sets({"x": 3})


# --- evaluate.json end to end -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A temporary copy of the bundle with a random-init checkpoint, and a tiny phantom with a test split."""
    root = tmp_path_factory.mktemp("evaluate")
    bundle = make_narrow_bundle_copy(root, TINY["width"])
    data = root / "data"
    datalist = {}
    for key, n, seed in (("training", 1, 1), ("validation", 1, 2), ("test", 2, 3)):
        entries = write_phantom_dataset(str(data / key), n, seed=seed, n_slices_range=(3, 4))
        datalist[key] = [{**e, "image": f"{key}/{e['image']}", "label": f"{key}/{e['label']}"} for e in entries]
    (data / "datalist.json").write_text(json.dumps(datalist))
    return {"bundle": bundle, "data": data}


def test_evaluate_json_cli_end_to_end(tiny_bundle: dict, tmp_path: Path) -> None:
    bundle, data = tiny_bundle["bundle"], tiny_bundle["data"]
    repo_models = sorted((BUNDLE_ROOT / "models").glob("*.pt"))
    stamps = {p: p.stat().st_mtime_ns for p in repo_models}
    configs = repr([str(bundle / "configs" / "train.json"), str(bundle / "configs" / "evaluate.json")])
    test_sets = {"phantom": f"{data}/datalist.json#test", "held-out": f"{data}/datalist.json#validation"}
    args = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "evaluating",
        "--config_file",
        configs,
        "--dataset_dir",
        str(data),
        "--test_sets",
        repr(test_sets),
    ]
    for key, value in TINY.items():
        args += [f"--{key}", json.dumps(value)]
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}  # one thread: tiny ops, a possibly busy machine
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = bundle / "eval"  # the default eval_dir lies inside the (temporary) bundle
    rows = read_csv(out / "volumes.csv")
    outputs = ("ftn", "ftn_stn", "ftn_stn_post")
    assert len(rows) == (4 + 2) * len(outputs)  # volumes x outputs
    assert {(r["test_set"], r["output"]) for r in rows} == {(s, o) for s in test_sets for o in outputs}
    assert {r["subject"] for r in rows if r["test_set"] == "phantom"} == {"phantom000", "phantom001"}
    for r in rows:
        assert 0.0 <= r["dice_mean"] <= 1.0 and r["hd95_mean"] >= 0.0 and 0.0 <= r["far_all"] <= 1.0
    md = (out / "results.md").read_text()
    assert "| Method | phantom | held-out | AVG (FTN) | AVG (FTN+STN) |" in md
    assert "HD95 LV" in md and "far MYO" in md and "Dice FTN+STN+post" in md
    for png in ("dice_boxplot.png", "hd95_boxplot.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["ftn_stn"]["per_set"]) == set(test_sets) and set(summary) >= set(outputs)

    # the CSV's post-processed metrics are those of the inference workflow's own output with its clean-up switches as
    # deployed (inference.json), for that volume, on the input grid; every switch on gives other metrics here, so the
    # row is not the all-on variant that validation logs for the switch decision
    entry = json.loads((data / "datalist.json").read_text())["test"][0]
    reference = nib.load(data / entry["label"])
    spacing = tuple(float(z) for z in reference.header.get_zooms()[:3])

    def inferred_metrics(name: str, **switches: bool) -> dict:
        infer = ConfigWorkflow(
            config_file=str(bundle / "configs" / "inference.json"),
            workflow_type="infer",
            bundle_root=str(bundle),
            dataset_dir=str(data),
            images=[entry["image"]],
            output_dir=str(tmp_path / name),
            function_report=False,
            pixdim=TINY["pixdim"],
            width=TINY["width"],
            **switches,
        )
        infer.initialize()
        infer.run()
        infer.finalize()
        (written,) = (tmp_path / name).glob("*_seg.nii.gz")
        return volume_metrics(np.asarray(nib.load(written).dataobj), np.asarray(reference.dataobj), spacing)

    deployed = inferred_metrics("deployed")
    all_on = inferred_metrics("all_on", keep_largest_component=True, fill_holes=True)
    row = next(
        r
        for r in rows
        if r["test_set"] == "phantom"
        and r["subject"] == entry["subject"]
        and r["frame"] == entry["frame"]
        and r["output"] == "ftn_stn_post"
    )
    assert row["spacing_mm"] == "x".join(f"{s:.4g}" for s in spacing)  # the input grid, not the 5 mm network grid
    keys = ("dice_lv", "dice_myocardium", "dice_rv", "hd95_lv", "far_all")
    for key in keys:
        assert row[key] == pytest.approx(deployed[key], rel=1e-4, abs=1e-4), key
    assert any(all_on[k] != pytest.approx(deployed[k], rel=1e-4, abs=1e-4) for k in keys)
    assert {p: p.stat().st_mtime_ns for p in repo_models} == stamps, "the repository's bundle/models was written"


def test_evaluate_workflow_defaults_to_the_datalists_test_list(tiny_bundle: dict, tmp_path: Path) -> None:
    bundle, data = tiny_bundle["bundle"], tiny_bundle["data"]
    workflow = ConfigWorkflow(
        config_file=[str(bundle / "configs" / "train.json"), str(bundle / "configs" / "evaluate.json")],
        run_id="evaluating",
        bundle_root=str(bundle),  # in-process, scripts.bundle_root() would name the repository's bundle
        dataset_dir=str(data),
        eval_dir=str(tmp_path / "eval"),
        model_name="tiny",
        **TINY,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    rows = read_csv(tmp_path / "eval" / "volumes.csv")
    assert {r["test_set"] for r in rows} == {"test"} and {r["model"] for r in rows} == {"tiny"} and len(rows) == 4 * 3
    with pytest.raises(RuntimeError) as failure:
        bad = ConfigWorkflow(
            config_file=[str(bundle / "configs" / "train.json"), str(bundle / "configs" / "evaluate.json")],
            run_id="evaluating",
            bundle_root=str(bundle),
            dataset_dir=str(data),
            eval_dir=str(tmp_path / "eval2"),
            ckpt_path=str(tmp_path / "missing.pt"),
            **TINY,
        )
        bad.initialize()
        bad.run()
    assert isinstance(failure.value.__cause__, FileNotFoundError)  # MONAI wraps the error of a "$" expression
    assert "missing.pt not found" in str(failure.value.__cause__)
    assert "pass --ckpt_path <model.pt>" in str(failure.value.__cause__)
    from scripts.weights import load_weights

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    with pytest.raises(ValueError, match=r"model.pt does not fit network_def: pass the settings it was trained"):
        load_weights(parser.get_parsed_content("network_def"), bundle / "models" / "model.pt")  # width 16 vs 4
