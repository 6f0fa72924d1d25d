"""The inference workflow's function report: cases (ED/ES pairs by file name, cines, single volumes), subject
information, the quality score and flag, and the report's values against plain voxel counting of the written labels.

The bundle copy has freshly initialised weights: its masks are poor, so an ED/ES pair can be implausible (an error
in the report) and the checks compare the report with the masks actually written, whatever they are.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import make_bundle_copy, phantom_volume, write_nifti
from scripts.cardiac_function import measure_volumes
from scripts.inference.predictor import group_cases, load_subject_info, split_phase
from scripts.inference.quality import frame_quality_scores, quality_scores
from scripts.model.networks import CoopSegNet
from tools.bundle_copy import inference_workflow

PNG = b"\x89PNG\r\n\x1a\n"


@contextmanager
def predictor_log() -> Iterator[list[str]]:
    """The messages of the inference summary's logger while the block runs."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("scripts.inference.predictor")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def run_inference(bundle: Path, dataset_dir: Path, output_dir: Path, **overrides) -> list[dict]:
    """The bundle's inference workflow in-process (``ConfigWorkflow``, as ``monai.bundle run`` does)."""
    workflow = inference_workflow(bundle, dataset_dir, output_dir, **overrides)
    workflow.initialize()
    workflow.run()
    summary = workflow.parser.get_parsed_content("evaluator").state.summary
    workflow.finalize()
    return summary


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["case"]: row for row in csv.DictReader(f)}


def counted(path: Path) -> np.ndarray:
    """Independent volumes of a written label file: ``F, 3`` ml of codes 1 LV, 2 MYO, 3 RV per frame."""
    img = nib.load(str(path))
    label = np.asarray(img.dataobj)
    label = label[..., None] if label.ndim == 3 else label
    voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    return np.array([[(label[..., f] == c).sum() * voxel_ml for c in (1, 2, 3)] for f in range(label.shape[-1])])


# fixtures --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle_copy(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ED/ES pairs ``p`` and ``q`` (the same images, phases swapped by name), a 3-frame cine, a single volume at
    the network's spacing and size (so its quality score can be computed directly), and subject information."""
    folder = tmp_path_factory.mktemp("inputs")
    ed, _, affine = phantom_volume(seed=8, n_slices=4, frame="ED")
    es, _, _ = phantom_volume(seed=8, n_slices=4, frame="ES")
    write_nifti(folder / "p_ED.nii.gz", ed, affine)
    write_nifti(folder / "p_es.nii.gz", es, affine)
    write_nifti(folder / "q_ES.nii.gz", ed, affine)
    write_nifti(folder / "q_ED.nii.gz", es, affine)
    write_nifti(folder / "heart.nii.gz", np.stack([es, ed, 0.5 * (ed + es)], axis=-1), affine)
    direct, _, direct_affine = phantom_volume(seed=5, spacing=1.36719, n_slices=3, size=(96, 112))
    write_nifti(folder / "direct.nii.gz", direct, direct_affine)
    info = {"P": {"height_cm": 180, "weight_kg": 80}, "q": {"height_cm": 165, "weight_kg": 60}}
    (folder.parent / f"{folder.name}_info.json").write_text(json.dumps(info))
    return folder


# units -----------------------------------------------------------------------------------------------------------
def test_split_phase() -> None:
    assert split_phase("/d/p1_ED.nii.gz") == ("p1", "ED")
    assert split_phase("/d/p1_es.nrrd") == ("p1", "ES")
    assert split_phase("/d/patient_001_Ed.mha") == ("patient_001", "ED")
    assert split_phase("/d/001/ES.nii.gz") == ("001", "ES")  # the phase alone: the folder names the case
    assert split_phase("/d/q_ED/") == ("q", "ED")  # a DICOM series folder
    assert split_phase("/d/caseED.nii.gz") == ("caseED", None)
    assert split_phase("/d/a_ED_img.nii.gz") == ("a_ED_img", None)


def test_group_cases_and_subject_info(tmp_path: Path) -> None:
    def volumes(name: str, frames: int = 1):
        return measure_volumes(np.ones((2, 2, 1, frames), np.uint8), np.eye(4), name)

    items = [
        volumes("/d/a_ED.nii.gz"),
        volumes("/d/cine.nii.gz", 3),
        volumes("/d/a_ES.nii.gz"),
        volumes("/d/b_ED.nii.gz"),  # no ES: a single volume
        volumes("/d/c_ED.nii.gz"),
        volumes("/d/c_ED.nrrd"),  # two EDs for c: not a pair
        volumes("/d/c_ES.nii.gz"),
    ]
    (tmp_path / "info.csv").write_text("Subject,Height,Weight\nA,170,65\ncine,160.5,\n")
    info = load_subject_info(tmp_path / "info.csv")
    assert info == {"A": {"height_cm": 170.0, "weight_kg": 65.0}, "cine": {"height_cm": 160.5, "weight_kg": None}}
    cases = group_cases(items, info)
    assert [(c.case, c.kind) for c in cases] == [
        ("a", "pair"),
        ("cine", "cine"),
        ("b_ED", "volume"),
        ("c_ED", "volume"),
        ("c_ED", "volume"),
        ("c_ES", "volume"),
    ]
    assert [v.name for v in cases[0].volumes] == ["/d/a_ED.nii.gz", "/d/a_ES.nii.gz"]
    assert (cases[0].height_cm, cases[0].weight_kg) == (170.0, 65.0)  # matched case-insensitively
    assert (cases[1].height_cm, cases[1].weight_kg, cases[1].bsa_m2) == (160.5, None, None)
    (tmp_path / "info.json").write_text(json.dumps([{"case": "x", "weight_kg": 70, "height_cm": 175}]))
    assert load_subject_info(tmp_path / "info.json") == {"x": {"height_cm": 175.0, "weight_kg": 70.0}}
    (tmp_path / "bad.csv").write_text("case,height_cm,weight_kg\nx,tall,70\n")
    with pytest.raises(ValueError, match=r"bad.csv: height \(cm\) of 'x' must be a positive number, got 'tall'"):
        load_subject_info(tmp_path / "bad.csv")
    (tmp_path / "nocase.csv").write_text("height_cm,weight_kg\n170,70\n")
    with pytest.raises(ValueError, match=r"nocase.csv: a row has no case name"):
        load_subject_info(tmp_path / "nocase.csv")
    with pytest.raises(FileNotFoundError, match="missing.json not found"):
        load_subject_info(tmp_path / "missing.json")


def test_frame_quality_scores_equal_quality_scores_per_frame() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 3 * 4, 40, 36, 5)  # B = 2, F = 3 frames of K = 4 classes
    logits[:, ::4] += 4.0  # mostly background ...
    logits[:, ::4, 10:25, 12:20, 1:4] -= 8.0  # ... but a foreground block
    logits[1, 8] += 100.0  # item 1, frame 2: background everywhere
    ftn = torch.cat([torch.softmax(logits[:, 4 * f : 4 * f + 4], 1) for f in range(3)], 1)
    stn = torch.cat([torch.softmax(1.5 * logits[:, 4 * f : 4 * f + 4] + 0.3, 1) for f in range(3)], 1)
    got = frame_quality_scores(ftn, stn, 3)
    assert got["disagreement_score"].shape == (2, 3) and got["disagreement_score"][1, 2] == 0.0
    for b in range(2):
        for f in range(3):
            expected = quality_scores(ftn[b : b + 1, 4 * f : 4 * f + 4], stn[b : b + 1, 4 * f : 4 * f + 4])
            for key, value in expected.items():
                assert float(got[key][b, f]) == pytest.approx(value, rel=1e-6, abs=1e-9), (b, f, key)


# the workflow ----------------------------------------------------------------------------------------------------
def _check_pair(row: dict[str, str], ed_file: Path, es_file: Path) -> str:
    """The pair row against counting the written ED and ES labels; returns the status the counts call for."""
    ed, es = counted(ed_file)[0], counted(es_file)[0]
    plausible = ed[0] > es[0] > 0 and ed[2] > es[2]
    if not plausible:
        assert row["status"] == "error" and "is not larger than at ES" in row["error"], row
        return "error"
    assert row["status"] == "ok", row
    for key, value in {
        "lv_edv_ml": ed[0],
        "lv_esv_ml": es[0],
        "rv_edv_ml": ed[2],
        "rv_esv_ml": es[2],
        "lv_mass_g": ed[1] * 1.05,
    }.items():
        assert float(row[key]) == pytest.approx(value, abs=0.1), key
    assert float(row["lv_ef_pct"]) == pytest.approx(100 * (ed[0] - es[0]) / ed[0], abs=0.1)
    assert float(row["rv_ef_pct"]) == pytest.approx(100 * (ed[2] - es[2]) / ed[2], abs=0.1)
    return "ok"


def _direct_disagreement(bundle: Path, image_file: Path) -> float:
    """The quality score of a volume already at 1.36719 mm and 16-divisible in-plane, straight through the
    network: FTN and FTN + STN probabilities of all slices, :func:`quality_scores`."""
    net = CoopSegNet().eval()
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    image = nib.load(str(image_file)).get_fdata().astype(np.float32)
    lo, hi = np.percentile(image, [2, 98])
    x = torch.from_numpy(np.clip((image - lo) / (hi - lo), 0, 1)).float().permute(2, 0, 1)[:, None]  # D, 1, H, W
    with torch.no_grad():
        ftn = net.segment(x)
        p_ftn, p_stn = torch.softmax(ftn, 1), torch.softmax(net.refine_logits(ftn), 1)
    as_volume = lambda p: p.permute(1, 2, 3, 0)[None]  # noqa: E731  D, K, H, W -> 1, K, H, W, D
    return quality_scores(as_volume(p_ftn), as_volume(p_stn))["disagreement_score"]


def test_report_for_pairs_cine_and_single_volume_flagged_at_threshold_zero(
    bundle: Path, inputs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    info = inputs.parent / f"{inputs.name}_info.json"
    with predictor_log() as log:
        summary = run_inference(bundle, inputs, out, quality_threshold=0.0, subject_info=str(info))
    rows = read_rows(out / "function.csv")
    assert sorted(rows) == ["direct", "heart", "p", "q"]
    assert {c: rows[c]["kind"] for c in rows} == {"direct": "volume", "heart": "cine", "p": "pair", "q": "pair"}
    statuses = {
        _check_pair(rows["p"], out / "p_ED_seg.nii.gz", out / "p_es_seg.nii.gz"),
        _check_pair(rows["q"], out / "q_ED_seg.nii.gz", out / "q_ES_seg.nii.gz"),
    }
    assert statuses == {"ok", "error"}  # q swaps p's phases; with these weights both ventricles order alike
    bsa = {"p": 2.0, "q": math.sqrt(165 * 60 / 3600)}  # subject info by case name ("P" matches p)
    for case in ("p", "q"):
        assert float(rows[case]["bsa_m2"]) == pytest.approx(bsa[case], rel=1e-5)
        if rows[case]["status"] == "ok":
            edv = float(rows[case]["lv_edv_ml"])
            assert float(rows[case]["lv_edv_ml_m2"]) == pytest.approx(edv / bsa[case], rel=1e-4)
    # the cine: ED and ES are the frames with the largest and the smallest LV volume of the written 4D label
    cine = counted(out / "heart_seg.nii.gz")
    if rows["heart"]["status"] == "ok":
        assert (int(rows["heart"]["ed_frame"]), int(rows["heart"]["es_frame"])) == (
            int(np.argmax(cine[:, 0])),
            int(np.argmin(cine[:, 0])),
        )
        assert float(rows["heart"]["lv_edv_ml"]) == pytest.approx(cine[:, 0].max(), abs=0.1)
        assert float(rows["heart"]["lv_esv_ml"]) == pytest.approx(cine[:, 0].min(), abs=0.1)
    else:
        assert rows["heart"]["error"].startswith("heart: ")
    assert (out / "heart_volume_time.png").read_bytes()[:8] == PNG
    # a single volume: its volumes, and its quality score equal to one computed straight through the network
    single = counted(out / "direct_seg.nii.gz")[0]
    assert [float(rows["direct"][k]) for k in ("lv_ml", "myocardium_ml", "rv_ml")] == pytest.approx(single, abs=0.1)
    assert float(rows["direct"]["disagreement_score"]) == pytest.approx(
        _direct_disagreement(bundle, inputs / "direct.nii.gz"), abs=2e-3
    )
    # threshold 0: every case is flagged, in the CSV, the markdown and the summary's log lines
    assert all(r["quality_flag"] == "True" and float(r["disagreement_score"]) > 0 for r in rows.values())
    md = (out / "function.md").read_text()
    assert "Flagged cases: direct, heart, p, q." in md and md.count("(QUALITY FLAG)") == 4
    assert "| Structure | EDV (ml) | ESV (ml) | SV (ml) | EF (%) | Mass (g) |" in md
    assert len([line for line in log if "QUALITY FLAG (> 0)" in line]) == len(summary) == 6
    cine_row = next(r for r in summary if r["source"].endswith("heart.nii.gz"))
    assert cine_row["quality_score"] == max(cine_row["frame_scores"]) and len(cine_row["frame_scores"]) == 3


def test_threshold_one_flags_nothing_and_ftn_only_has_no_score(bundle: Path, inputs: Path, tmp_path: Path) -> None:
    pair = ["p_ED.nii.gz", "p_es.nii.gz"]
    with predictor_log() as log:
        run_inference(bundle, inputs, tmp_path / "one", images=pair, quality_threshold=1.0)
    rows = read_rows(tmp_path / "one" / "function.csv")
    assert list(rows) == ["p"] and rows["p"]["quality_flag"] == "False"
    assert 0 < float(rows["p"]["disagreement_score"]) <= 1
    md = (tmp_path / "one" / "function.md").read_text()
    assert "QUALITY FLAG" not in md and "Flagged cases: none." in md and "(flagged above 1)" in md
    assert not any("QUALITY FLAG" in line for line in log) and any("disagreement" in line for line in log)

    run_inference(bundle, inputs, tmp_path / "ftn", images=pair, refine=False, quality_threshold=0.0)
    rows = read_rows(tmp_path / "ftn" / "function.csv")
    assert rows["p"]["disagreement_score"] == "" and rows["p"]["quality_flag"] == ""
    md = (tmp_path / "ftn" / "function.md").read_text()
    assert "Quality: not available (the run used --refine False" in md and "QUALITY FLAG" not in md

    run_inference(bundle, inputs, tmp_path / "none", images=pair, function_report=False)
    assert sorted(p.name for p in (tmp_path / "none").iterdir()) == ["p_ED_seg.nii.gz", "p_es_seg.nii.gz"]


def test_bad_subject_info_stops_the_run_before_segmenting(bundle: Path, inputs: Path, tmp_path: Path) -> None:
    (tmp_path / "info.csv").write_text("case,height_cm,weight_kg\np,-170,70\n")
    with pytest.raises(Exception) as err:
        run_inference(bundle, inputs, tmp_path / "out", subject_info=str(tmp_path / "info.csv"))
    chain, error = [], err.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any("info.csv: height (cm) of 'p' must be a positive number" in text for text in chain), chain
    assert not (tmp_path / "out").exists()
