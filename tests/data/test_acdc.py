"""ACDC adapter: a tiny fake download in the original layout goes through it; frames and labels checked by
construction (a structure drawn as LV in raw ACDC codes must come out as class 1), splits and every error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.data.acdc import (
    FEW_SHOT_POOL,
    FEW_SHOT_TRAINING,
    FEW_SHOT_VALIDATION,
    STANDARD_TRAINING,
    STANDARD_VALIDATION,
    TEST_IDS,
    prepare_acdc,
    prepare_patient,
    read_info_cfg,
    remap_acdc_labels,
)
from scripts.data.datalist import load_datalist
from scripts.data.errors import DatasetError

SHAPE = (14, 12, 3)
RAW_RV, RAW_MYO, RAW_LV = 1, 2, 3
AFFINE = np.array([[1.4, 0, 0, -5.0], [0, 1.4, 0, 3.0], [0, 0, 10.0, 7.0], [0, 0, 0, 1]])


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, AFFINE), str(path))


def _raw_label(frame: int) -> np.ndarray:
    """Raw ACDC codes; the LV disk's position encodes the frame number (so a wrong frame is caught)."""
    label = np.zeros(SHAPE, np.uint8)
    r = frame % 6
    label[2 + r : 6 + r, 2:6, 1] = RAW_MYO
    label[3 + r : 5 + r, 3:5, 1] = RAW_LV
    label[2 + r : 6 + r, 8:11, 1] = RAW_RV
    return label


def write_patient(
    root: Path,
    pid: str,
    ed: int = 1,
    es: int = 4,
    n_frames: int = 6,
    subset: str = "training",
    info: str | None = None,
    cine_frames: int | None = None,
) -> Path:
    folder = root / subset / f"patient{pid}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Info.cfg").write_text(
        info if info is not None else f"ED: {ed}\nES: {es}\nGroup: DCM\nHeight: 180.0\nNbFrame: {n_frames}\n"
    )
    cine = np.stack([np.full(SHAPE, 10.0 * t, np.float32) for t in range(1, (cine_frames or n_frames) + 1)], -1)
    _save(cine, folder / f"patient{pid}_4d.nii.gz")
    for frame in {ed, es, 2}:  # frame 2 is an unlabelled decoy that must not be picked
        _save(cine[..., frame - 1] + _raw_label(frame), folder / f"patient{pid}_frame{frame:02d}.nii.gz")
        _save(_raw_label(frame), folder / f"patient{pid}_frame{frame:02d}_gt.nii.gz")
    return folder


def _digest(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_remap_table_and_bad_values() -> None:
    np.testing.assert_array_equal(remap_acdc_labels(np.array([0, 1, 2, 3])), [0, 3, 2, 1])
    with pytest.raises(DatasetError, match=r"x_gt.nii.gz: unexpected label values \[5\]"):
        remap_acdc_labels(np.array([0, 5]), "x_gt.nii.gz")


def test_frames_and_labels_by_construction(tmp_path: Path) -> None:
    source = write_patient(tmp_path / "ACDC", "001", ed=3, es=5)
    before = _digest(tmp_path / "ACDC")
    entries = prepare_patient(source, tmp_path / "out")
    assert _digest(tmp_path / "ACDC") == before, "the source was modified"
    assert [(e["frame"], e["frame_number"]) for e in entries] == [("ED", 3), ("ES", 5)]
    for entry in entries:
        number = entry["frame_number"]
        image = tmp_path / "out" / entry["image"]
        assert image.read_bytes() == (source / f"patient001_frame{number:02d}.nii.gz").read_bytes()
        seg = nib.load(str(tmp_path / "out" / entry["label"]))
        raw = _raw_label(number)
        label = np.asarray(seg.dataobj)
        assert seg.get_data_dtype() == np.uint8
        np.testing.assert_allclose(seg.affine, AFFINE)
        assert np.array_equal(label == 1, raw == RAW_LV), "a structure drawn as LV must be class 1"
        assert np.array_equal(label == 2, raw == RAW_MYO)
        assert np.array_equal(label == 3, raw == RAW_RV), "a structure drawn as RV must be class 3"


def test_entries_carry_height_and_weight_from_info_cfg(tmp_path: Path) -> None:
    info = "ED: 1\nES: 4\nGroup: NOR\nHeight: 172.5\nNbFrame: 6\nWeight: 68.0\n"
    entries = prepare_patient(write_patient(tmp_path / "ACDC", "002", info=info), tmp_path / "out")
    assert [(e["height_cm"], e["weight_kg"]) for e in entries] == [(172.5, 68.0)] * 2
    no_weight = prepare_patient(write_patient(tmp_path / "ACDC", "003"), tmp_path / "out")  # Height only
    assert all(e["height_cm"] == 180.0 and "weight_kg" not in e for e in no_weight)
    no_size = prepare_patient(write_patient(tmp_path / "ACDC", "004", info="ED: 1\nES: 4\n"), tmp_path / "out")
    assert all("height_cm" not in e and "weight_kg" not in e for e in no_size)


def test_split_lists_are_the_reference_lists() -> None:
    assert len(TEST_IDS) == 20 and len(set(TEST_IDS)) == 20
    assert len(FEW_SHOT_POOL) == 40
    for cval in range(5):
        assert len(FEW_SHOT_TRAINING[cval]) == 10 and set(FEW_SHOT_TRAINING[cval]) <= set(FEW_SHOT_POOL)
        assert FEW_SHOT_VALIDATION[cval][:2] == ("011", "071") and len(FEW_SHOT_VALIDATION[cval]) == 5
        assert not set(FEW_SHOT_TRAINING[cval]) & set(TEST_IDS)
    assert FEW_SHOT_TRAINING[0] == ("001", "004", "012", "022", "044", "046", "053", "061", "073", "092")
    assert FEW_SHOT_VALIDATION[0] == ("011", "071", "062", "095", "082")
    # the reference's quirk: validation overlaps training for cval 1 and 4 only
    overlaps = {c: set(FEW_SHOT_TRAINING[c]) & set(FEW_SHOT_VALIDATION[c]) for c in range(5)}
    assert overlaps == {0: set(), 1: {"002", "022"}, 2: set(), 3: set(), 4: {"022"}}
    everything = {f"{i:03d}" for i in range(1, 101)}
    assert len(STANDARD_TRAINING) == 70
    assert set(STANDARD_TRAINING) == everything - set(TEST_IDS) - set(STANDARD_VALIDATION)


def test_prepare_acdc_writes_every_split(tmp_path: Path) -> None:
    root = tmp_path / "ACDC"
    present = ["001", "004", "007", "011", "062", "005"]
    for pid in present:
        write_patient(root, pid)
    write_patient(root, "101", subset="testing")
    with pytest.raises(DatasetError, match=r"missing from .*patient012"):
        prepare_acdc(root, tmp_path / "strict")
    written = prepare_acdc(root, tmp_path / "out", allow_missing=True)
    out = tmp_path / "out"
    assert set(written) >= {f"fewshot_cval{c}" for c in range(5)} | {"standard", "default", "all"}
    cval0 = json.loads(written["fewshot_cval0"].read_text())
    assert [e["subject"] for e in cval0["training"]] == ["patient001"] * 2 + ["patient004"] * 2
    assert {e["subject"] for e in cval0["validation"]} == {"patient011", "patient062"}
    assert {e["subject"] for e in cval0["test"]} == {"patient007"}
    standard = json.loads(written["standard"].read_text())
    assert {e["subject"] for e in standard["validation"]} == {"patient005"}
    assert json.loads(written["default"].read_text())["training"] == cval0["training"]
    assert [e["subject"] for e in json.loads(written["all"].read_text())["testing"]] == ["patient101"] * 2
    # the datalists work with the bundle's loader (paths relative to the output folder)
    entries = load_datalist(written["fewshot_cval0"], "training", out)
    assert all(Path(e["image"]).is_file() and Path(e["label"]).is_file() for e in entries)
    # a second run over the same output is idempotent; a changed derived label is never overwritten
    prepare_acdc(root, out, allow_missing=True)
    seg = out / "001" / "ED_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), AFFINE), str(seg))
    with pytest.raises(DatasetError, match="ED_seg.nii.gz already exists with different content"):
        prepare_acdc(root, out, allow_missing=True)


def test_output_inside_the_source_is_refused(tmp_path: Path) -> None:
    write_patient(tmp_path / "ACDC", "001")
    with pytest.raises(DatasetError, match="must not"):
        prepare_acdc(tmp_path / "ACDC", tmp_path / "ACDC" / "training" / "out", allow_missing=True)


@pytest.mark.parametrize(
    "info, message",
    [
        ("ED: 1\nGroup: NOR\nNbFrame: 6\n", "Info.cfg: no 'ES' entry"),
        ("ED: 1\nES: four\nNbFrame: 6\n", "Info.cfg: 'ES' must be an integer"),
        ("ED: 1\nES: 9\nNbFrame: 6\n", r"Info.cfg: ES = 9 is outside the frames 1..6"),
        ("ED: 2\nES: 2\nNbFrame: 6\n", "Info.cfg: ED and ES are the same frame"),
        ("ED 1\nES: 4\n", "Info.cfg, line 1: expected 'key: value'"),
    ],
)
def test_wrong_info_cfg_names_the_file(tmp_path: Path, info: str, message: str) -> None:
    folder = write_patient(tmp_path, "003", info=info)
    with pytest.raises(DatasetError, match=message):
        prepare_patient(folder, tmp_path / "out")


def test_missing_files_name_the_file(tmp_path: Path) -> None:
    folder = write_patient(tmp_path, "003", ed=1, es=4)
    (folder / "patient003_frame04_gt.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"missing ES label file .*patient003_frame04_gt.nii.gz"):
        prepare_patient(folder, tmp_path / "out")
    (folder / "Info.cfg").unlink()
    with pytest.raises(DatasetError, match=r"missing Info.cfg: .*patient003.Info.cfg"):
        read_info_cfg(folder / "Info.cfg")


def test_4d_3d_mismatch_names_the_file(tmp_path: Path) -> None:
    folder = write_patient(tmp_path, "003", ed=1, es=4)
    _save(np.zeros((*SHAPE, 2), np.float32), folder / "patient003_frame01.nii.gz")
    with pytest.raises(DatasetError, match=r"patient003_frame01.nii.gz: expected a 3D frame .*4D/3D mismatch"):
        prepare_patient(folder, tmp_path / "out")

    folder = write_patient(tmp_path / "b", "004", ed=1, es=4)
    _save(np.zeros((SHAPE[0] + 1, *SHAPE[1:], 6), np.float32), folder / "patient004_4d.nii.gz")
    with pytest.raises(DatasetError, match=r"patient004_4d.nii.gz: cine shape .* does not match the 3D frame"):
        prepare_patient(folder, tmp_path / "out")

    folder = write_patient(tmp_path / "c", "005", ed=1, es=4, cine_frames=5)
    with pytest.raises(DatasetError, match=r"patient005_4d.nii.gz: 5 time frames, but .*Info.cfg says NbFrame 6"):
        prepare_patient(folder, tmp_path / "out")

    folder = write_patient(tmp_path / "d", "006", ed=1, es=4)
    _save(np.zeros((SHAPE[0], SHAPE[1], 2), np.uint8), folder / "patient006_frame04_gt.nii.gz")
    with pytest.raises(DatasetError, match=r"patient006_frame04_gt.nii.gz: label shape .* does not match"):
        prepare_patient(folder, tmp_path / "out")


def test_unexpected_label_values_name_the_file(tmp_path: Path) -> None:
    folder = write_patient(tmp_path, "003", ed=1, es=4)
    bad = _raw_label(4)
    bad[0, 0, 0] = 4
    _save(bad, folder / "patient003_frame04_gt.nii.gz")
    with pytest.raises(DatasetError, match=r"patient003_frame04_gt.nii.gz: unexpected label values \[4\]"):
        prepare_patient(folder, tmp_path / "out")


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from scripts.data.acdc import main

    write_patient(tmp_path / "ACDC", "001")
    assert main(["--root", str(tmp_path / "ACDC"), "--out", str(tmp_path / "out"), "--allow_missing"]) == 0
    assert "fewshot_cval0" in capsys.readouterr().out
    assert main(["--root", str(tmp_path / "nothing"), "--out", str(tmp_path / "out2")]) == 1
