"""Cardiac function indices: the phantom's reference labels against plain voxel counting, ED/ES detection in a
shuffled cine, BSA indexing, the errors, Bland-Altman statistics by hand, the report files, and evaluate.json's
function agreement on a tiny phantom."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser, ConfigWorkflow

from helpers import make_narrow_bundle_copy
from scripts.cardiac_function import (
    FunctionError,
    body_surface_area,
    function_from_cine,
    function_from_pair,
    measure_volumes,
)
from scripts.data.phantom import write_phantom_dataset
from scripts.evaluation.agreement import AGREEMENT_INDICES, agreement, function_pairs, write_agreement_report
from scripts.inference.function_report import FunctionCase, write_function_report

PNG = b"\x89PNG\r\n\x1a\n"
TINY = {"pixdim": [5.0, 5.0, -1], "crop_size": 32, "width": 4, "num_workers": 0}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One phantom subject's ED and ES reference labels (oblique affine) as NIfTI files."""
    root = tmp_path_factory.mktemp("phantom")
    entries = write_phantom_dataset(str(root), 1, seed=4, n_slices_range=(6, 6))
    return {e["frame"]: root / e["label"] for e in entries}


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def counted_ml(path: Path) -> dict[int, float]:
    """Independent volumes: voxels per code times the voxel size from the NIfTI header's zooms (mm^3 -> ml)."""
    img = nib.load(str(path))
    label = np.asarray(img.dataobj)
    voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    return {code: float((label == code).sum()) * voxel_ml for code in (1, 2, 3)}  # 1 LV, 2 MYO, 3 RV


def test_indices_from_reference_labels_match_voxel_counting(phantom: dict[str, Path]) -> None:
    ed, es = counted_ml(phantom["ED"]), counted_ml(phantom["ES"])
    function = function_from_pair(
        measure_volumes(*load(phantom["ED"]), name="ED"), measure_volumes(*load(phantom["ES"]), name="ES"), "p0"
    )
    got = function.indices()
    expected = {
        "lv_edv_ml": ed[1],
        "lv_esv_ml": es[1],
        "lv_sv_ml": ed[1] - es[1],
        "rv_edv_ml": ed[3],
        "rv_esv_ml": es[3],
        "rv_sv_ml": ed[3] - es[3],
        "lv_mass_g": ed[2] * 1.05,
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=0.1), key
    assert got["lv_ef_pct"] == pytest.approx(100 * (ed[1] - es[1]) / ed[1], abs=0.1)
    assert got["rv_ef_pct"] == pytest.approx(100 * (ed[3] - es[3]) / ed[3], abs=0.1)
    assert 20 < got["lv_ef_pct"] < 90 and got["lv_edv_ml"] > 10  # a plausible heart, so the test means something
    assert not any(key.endswith("_m2") for key in got) and function.bsa_m2 is None


def _between(ed: np.ndarray, es: np.ndarray, fraction: float) -> np.ndarray:
    """The ED label with ``fraction`` of the LV volume difference to ES removed from the LV (made background)."""
    frame = ed.copy()
    lv = np.flatnonzero(frame.ravel() == 1)
    remove = int(fraction * ((ed == 1).sum() - (es == 1).sum()))
    frame.ravel()[lv[:remove]] = 0
    return frame


def test_cine_ed_es_detection_in_shuffled_frames(phantom: dict[str, Path]) -> None:
    (ed, affine), (es, _) = load(phantom["ED"]), load(phantom["ES"])
    frames = [ed, _between(ed, es, 0.25), _between(ed, es, 0.5), _between(ed, es, 0.75), es]
    order = [3, 0, 4, 1, 2]  # cine frame t holds frames[order[t]]
    cine = np.stack([frames[i] for i in order], axis=-1)
    function = function_from_cine(measure_volumes(cine, affine, "cine.nii.gz"), "cine")
    assert (function.ed_frame, function.es_frame) == (order.index(0), order.index(4)) == (1, 2)
    pair = function_from_pair(measure_volumes(ed, affine), measure_volumes(es, affine), "cine")
    assert function.indices() == pytest.approx(pair.indices())
    ed_ml, es_ml = counted_ml(phantom["ED"]), counted_ml(phantom["ES"])
    assert function.lv_edv_ml == pytest.approx(ed_ml[1], abs=0.1)
    assert function.lv_esv_ml == pytest.approx(es_ml[1], abs=0.1)
    assert function.lv_ef_pct == pytest.approx(100 * (ed_ml[1] - es_ml[1]) / ed_ml[1], abs=0.1)


def test_bsa_indexing_by_hand(phantom: dict[str, Path]) -> None:
    assert body_surface_area(180, 80) == pytest.approx(2.0)  # sqrt(180 * 80 / 3600) = sqrt(4)
    assert body_surface_area(165, 60) == pytest.approx(math.sqrt(2.75))
    ed, es = measure_volumes(*load(phantom["ED"])), measure_volumes(*load(phantom["ES"]))
    function = function_from_pair(ed, es, "p0", height_cm=180, weight_kg=80)
    got = function.indices()
    assert function.bsa_m2 == pytest.approx(2.0)
    for key in ("lv_edv_ml", "lv_esv_ml", "lv_sv_ml", "lv_mass_g", "rv_edv_ml", "rv_esv_ml", "rv_sv_ml"):
        assert got[f"{key}_m2"] == pytest.approx(got[key] / 2.0), key
    assert "lv_ef_pct_m2" not in got
    only_height = function_from_pair(ed, es, "p0", height_cm=180)
    assert only_height.bsa_m2 is None and "lv_edv_ml_m2" not in only_height.indices()
    with pytest.raises(FunctionError, match="p0: height -1"):
        function_from_pair(ed, es, "p0", height_cm=-1, weight_kg=80)


def test_errors_name_the_case_and_the_problem(phantom: dict[str, Path]) -> None:
    (ed, affine), (es, _) = load(phantom["ED"]), load(phantom["ES"])
    no_lv = np.where(es == 1, 0, es).astype(es.dtype)
    cine = np.stack([ed, no_lv, es, no_lv], axis=-1)
    with pytest.raises(FunctionError, match=r"case7: the LV blood pool is empty in frame\(s\) 1, 3 of 4"):
        function_from_cine(measure_volumes(cine, affine), "case7")
    assert issubclass(FunctionError, ValueError)
    shifted = affine.copy()
    shifted[0, 3] += 5.0
    with pytest.raises(FunctionError, match="case8: the ED and ES labels are on different grids"):
        function_from_pair(measure_volumes(ed, affine), measure_volumes(es, shifted), "case8")
    with pytest.raises(FunctionError, match="case8: the ED and ES labels are on different grids"):
        function_from_pair(measure_volumes(ed, affine), measure_volumes(es[:, :, :-1], affine), "case8")
    with pytest.raises(FunctionError, match=r"case9: the LV volume at ED \(\d+\.\d ml\) is not larger than at ES"):
        function_from_pair(measure_volumes(es, affine), measure_volumes(ed, affine), "case9")
    with pytest.raises(FunctionError, match="case9: the LV blood pool is empty at ES"):
        function_from_pair(measure_volumes(ed, affine), measure_volumes(no_lv, affine), "case9")


def test_bland_altman_statistics_by_hand() -> None:
    predicted, reference = [10.0, 12.0, 15.0, 20.0, float("nan")], [11.0, 11.0, 14.0, 22.0, 5.0]
    stats = agreement(predicted, reference)  # differences -1, 1, 1, -2 (the NaN pair is dropped)
    assert stats.n == 4
    assert stats.bias == pytest.approx(-0.25)
    assert stats.sd == pytest.approx(1.5)  # sum of squared deviations 6.75 over n - 1 = 3
    assert (stats.loa_lower, stats.loa_upper) == pytest.approx((-0.25 - 1.96 * 1.5, -0.25 + 1.96 * 1.5))
    assert stats.pearson_r == pytest.approx(65.5 / math.sqrt(56.75 * 81.0))  # centred cross and square sums
    single = agreement([3.0], [2.0])
    assert single.n == 1 and single.bias == 1.0 and math.isnan(single.sd) and math.isnan(single.pearson_r)


def _items(phantom: dict[str, Path], subject: str, reference_scale: float, predicted_scale: float) -> list:
    """Evaluation-collector items for one subject: the phantom's labels with voxel volumes scaled."""
    items = []
    for frame in ("ED", "ES"):
        label, affine = load(phantom[frame])
        scaled = {}
        for name, scale in (("reference", reference_scale), ("predicted", predicted_scale)):
            scaled[name] = affine.copy()
            scaled[name][:3, :3] *= scale ** (1 / 3)
        fields = {"subject": subject, "frame": frame.lower() if subject == "s2" else frame}
        items.append((fields, measure_volumes(label, scaled["predicted"]), measure_volumes(label, scaled["reference"])))
    return items


def test_function_pairs_and_agreement_report(phantom: dict[str, Path], tmp_path: Path) -> None:
    reference_scales, predicted_scales = [1.0, 1.2, 0.9], [1.0, 1.3, 0.85]
    items = []
    for i, (r, p) in enumerate(zip(reference_scales, predicted_scales, strict=True)):
        items += _items(phantom, f"s{i + 1}", r, p)
    items.append(({"subject": "s4", "frame": "ED"}, items[0][1], items[0][2]))  # no ES: excluded
    cases, notes = function_pairs(items, "set")
    assert [c[0] for c in cases] == ["s1", "s2", "s3"]
    assert notes == ["excluded: set/s4: 1 ED and 0 ES volumes"]
    written = write_agreement_report({"set": cases}, tmp_path, {"set": notes})
    assert {p.name for p in written} == {
        "function_agreement.csv",
        "function_agreement.md",
        "function_cases.csv",
        "function_bland_altman_set.png",
    }
    with open(tmp_path / "function_agreement.csv", newline="") as f:
        rows = {r["index"]: r for r in csv.DictReader(f)}
    assert list(rows) == [i.key for i in AGREEMENT_INDICES]
    assert list(rows) == ["lv_edv_ml", "lv_esv_ml", "lv_ef_pct", "lv_mass_g", "rv_edv_ml", "rv_esv_ml", "rv_ef_pct"]
    edv = counted_ml(phantom["ED"])[1]
    reference, predicted = edv * np.array(reference_scales), edv * np.array(predicted_scales)
    diffs = predicted - reference  # volumes scale with the voxel size; EF does not
    assert float(rows["lv_edv_ml"]["bias"]) == pytest.approx(diffs.mean(), rel=1e-4)
    assert float(rows["lv_edv_ml"]["loa_upper"]) == pytest.approx(diffs.mean() + 1.96 * diffs.std(ddof=1), rel=1e-4)
    assert float(rows["lv_edv_ml"]["pearson_r"]) == pytest.approx(np.corrcoef(predicted, reference)[0, 1], abs=1e-5)
    assert int(rows["lv_ef_pct"]["n"]) == 3 and float(rows["lv_ef_pct"]["bias"]) == pytest.approx(0.0, abs=1e-4)
    md = (tmp_path / "function_agreement.md").read_text()
    assert "| Index (unit) | n | Pearson r | Bias |" in md and "| LV EDV (ml) | 3 |" in md
    assert "| LV EF (%) |" in md and "| LV mass (g) |" in md and "- excluded: set/s4: 1 ED and 0 ES volumes" in md
    assert (tmp_path / "function_bland_altman_set.png").read_bytes()[:8] == PNG


def test_implausible_predictions_are_kept_and_bad_references_excluded(phantom: dict[str, Path]) -> None:
    (ed, affine), (es, _) = load(phantom["ED"]), load(phantom["ES"])
    ed_v, es_v = measure_volumes(ed, affine), measure_volumes(es, affine)
    swapped = [({"subject": "a", "frame": "ED"}, es_v, ed_v), ({"subject": "a", "frame": "ES"}, ed_v, es_v)]
    cases, notes = function_pairs(swapped, "set")  # the prediction has ED and ES swapped: a failure to report
    assert len(cases) == 1 and cases[0][1].lv_ef_pct == pytest.approx(-cases[0][2].lv_sv_ml / es_v.ml["lv"][0] * 100)
    assert notes[0].startswith("kept, implausible: set/a (prediction): the LV volume at ED")
    bad_reference = [({"subject": "b", "frame": "ED"}, ed_v, es_v), ({"subject": "b", "frame": "ES"}, es_v, ed_v)]
    cases, notes = function_pairs(bad_reference, "set")
    assert cases == [] and notes[0].startswith("excluded: set/b (reference): the LV volume at ED")


def test_function_report_files(phantom: dict[str, Path], tmp_path: Path) -> None:
    ed, es = measure_volumes(*load(phantom["ED"]), name="a/p_ED.nii.gz"), measure_volumes(*load(phantom["ES"]))
    cine_label = np.stack([load(phantom["ES"])[0], load(phantom["ED"])[0]], axis=-1)
    cine = measure_volumes(cine_label, load(phantom["ED"])[1], name="/in/heart.nii.gz")
    cases = [
        FunctionCase("p", "pair", (ed, es), height_cm=180, weight_kg=80, quality_score=0.3).compute(),
        FunctionCase("heart", "cine", (cine,), quality_score=0.1).compute(),
        FunctionCase("bad", "pair", (es, ed)).compute(),
        FunctionCase("single", "volume", (ed,)),
    ]
    cases[0].quality_flag, cases[1].quality_flag = True, False
    written = write_function_report(cases, tmp_path, quality_threshold=0.25)
    assert sorted(p.name for p in written) == ["function.csv", "function.md", "heart_volume_time.png"]
    with open(tmp_path / "function.csv", newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert [rows[c]["status"] for c in ("p", "heart", "bad", "single")] == ["ok", "ok", "error", "volumes only"]
    ml = counted_ml(phantom["ED"])
    assert float(rows["p"]["lv_edv_ml"]) == pytest.approx(ml[1], abs=0.1)
    assert float(rows["p"]["lv_edv_ml_m2"]) == pytest.approx(ml[1] / 2.0, abs=0.1)
    assert float(rows["p"]["lv_mass_g_m2"]) == pytest.approx(ml[2] * 1.05 / 2.0, abs=0.1)
    assert rows["p"]["bsa_m2"] == "2" and rows["p"]["quality_flag"] == "True"
    assert (rows["heart"]["ed_frame"], rows["heart"]["es_frame"]) == ("1", "0")
    assert "not larger than at ES" in rows["bad"]["error"] and rows["bad"]["lv_edv_ml"] == ""
    assert float(rows["single"]["lv_ml"]) == pytest.approx(ml[1], abs=0.1) and rows["single"]["lv_edv_ml"] == ""
    md = (tmp_path / "function.md").read_text()
    assert "## p: ED/ES pair (QUALITY FLAG)" in md and "Flagged cases: p." in md
    assert "| Structure | EDV (ml) | ESV (ml) | SV (ml) | EF (%) | Mass (g) |" in md
    assert "| Structure | EDV (ml/m²) | ESV (ml/m²) | SV (ml/m²) | Mass (g/m²) |" in md
    assert "BSA 2.00 m²" in md and "ED frame 1, ES frame 0" in md and "![heart: LV and RV volume per frame]" in md
    assert "| Input | Frame | LV (ml) | MYO (ml) | RV (ml) |" in md
    assert (tmp_path / "heart_volume_time.png").read_bytes()[:8] == PNG


# --- evaluate.json: function agreement ----------------------------------------------------------------------------
def test_evaluate_workflow_writes_function_agreement(tmp_path: Path) -> None:
    bundle = make_narrow_bundle_copy(tmp_path, TINY["width"])
    data = tmp_path / "data"
    entries = write_phantom_dataset(str(data / "test"), 3, seed=3, n_slices_range=(4, 4))
    entries = [{**e, "image": f"test/{e['image']}", "label": f"test/{e['label']}"} for e in entries]
    (data / "datalist.json").write_text(json.dumps({"training": entries[:2], "test": entries}))
    (data / "nopairs.json").write_text(json.dumps({"test": [{k: e[k] for k in ("image", "label")} for e in entries]}))
    workflow = ConfigWorkflow(
        config_file=[str(bundle / "configs" / "train.json"), str(bundle / "configs" / "evaluate.json")],
        run_id="evaluating",
        bundle_root=str(bundle),
        dataset_dir=str(data),
        eval_dir=str(tmp_path / "eval"),
        test_sets={"phantom": f"{data}/datalist.json#test", "plain": f"{data}/nopairs.json#test"},
        **TINY,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    out = tmp_path / "eval"
    with open(out / "function_agreement.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["index"] for r in rows] == [i.key for i in AGREEMENT_INDICES]  # the set without subjects is skipped
    assert {r["test_set"] for r in rows} == {"phantom"}
    md = (out / "function_agreement.md").read_text()
    assert "## phantom" in md and "## plain" not in md
    assert (out / "function_bland_altman_phantom.png").read_bytes()[:8] == PNG
    # every subject's reference is valid, so all three are compared, implausible predictions included
    with open(out / "function_cases.csv", newline="") as f:
        cases = list(csv.DictReader(f))
    assert {(r["subject"], r["source"]) for r in cases} == {
        (f"phantom00{i}", source) for i in range(3) for source in ("prediction", "reference")
    }
    assert all(int(r["n"]) == 3 for r in rows if r["index"] != "lv_ef_pct" and r["index"] != "rv_ef_pct")
    # the reference volumes are those of the label on the evaluation grid, counted independently
    runner = workflow.parser.get_parsed_content("evaluate#runner")
    volumes = {(f["subject"], f["frame"]): ref for f, _, ref in runner.function_volumes["phantom"]}
    evaluation = ConfigParser()
    evaluation.read_config([str(bundle / "configs" / "train.json"), str(bundle / "configs" / "evaluate.json")])
    evaluation.update({**TINY, "dataset_dir": str(data)})
    preprocess = evaluation.get_parsed_content("validate#preprocessing")
    for entry in entries[:2]:  # phantom000 ED, ES
        item = preprocess({"image": str(data / entry["image"]), "label": str(data / entry["label"])})
        voxel_ml = float(np.prod(np.linalg.norm(np.asarray(item["label"].affine)[:3, :3], axis=0))) / 1000.0
        label = np.asarray(item["label"])
        for code, name in ((1, "lv"), (2, "myocardium"), (3, "rv")):
            counted = float((label == code).sum()) * voxel_ml
            assert volumes[("phantom000", entry["frame"])].ml[name][0] == pytest.approx(counted, abs=0.1)
