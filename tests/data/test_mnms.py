"""M&Ms adapter: a tiny fake download (4D cines, dataset-information CSV) goes through it; ED/ES extraction and the
native labels checked by construction (a structure drawn as LV must come out as class 1); every error names the file."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.data.datalist import load_datalist
from scripts.data.errors import DatasetError
from scripts.data.mnms import find_info_csv, prepare_mnms, read_mnms_info

SHAPE = (12, 10, 3)
N_TIME = 6
LV, MYO, RV = 1, 2, 3  # native M&Ms codes
AFFINE = np.array([[0, 1.2, 0, 4.0], [-1.2, 0, 0, 2.0], [0, 0, 9.0, -3.0], [0, 0, 0, 1]])
HEADER = "External code,VendorName,Vendor,Centre,ED,ES"


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, AFFINE), str(path))


def _label(t: int) -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[1 + t : 5 + t, 1:5, 1] = MYO
    label[2 + t : 4 + t, 2:4, 1] = LV
    label[1 + t : 5 + t, 6:9, 1] = RV
    return label


def write_subject(root: Path, code: str, ed: int, es: int, subset: str = "Training/Labeled", labelled: bool = True):
    folder = root / subset / code
    cine = np.stack([np.full(SHAPE, 100.0 + t, np.float32) for t in range(N_TIME)], -1)
    gt = np.zeros((*SHAPE, N_TIME), np.uint8)
    for t in (ed, es):
        gt[..., t] = _label(t)
    _save(cine, folder / f"{code}_sa.nii.gz")
    if labelled:
        _save(gt, folder / f"{code}_sa_gt.nii.gz")
    return folder


def write_tree(root: Path, csv_text: str | None = None) -> Path:
    write_subject(root, "A1B2C3", ed=0, es=3)
    write_subject(root, "D4E5F6", ed=1, es=4)
    write_subject(root, "G7H8I9", ed=0, es=2, subset="Testing")
    write_subject(root, "U0U0U0", ed=0, es=2, subset="Training/Unlabeled", labelled=False)
    # a BOM, an unnamed index column and padded headers, as spreadsheet exports have
    text = csv_text or (
        "\ufeff,External code , VendorName,Vendor,Centre,ED,ES,Pathology\n"
        "0,A1B2C3,Siemens,A,1,0,3,HCM\n1,D4E5F6,Philips,B,2.0,1,4,NOR\n2,G7H8I9,Canon,D,5,0,2,DCM\n"
        "3,U0U0U0,Siemens,A,1,0,2,NOR\n"
    )
    (root / "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv").write_text(text)
    return root


def test_frames_labels_vendor_by_construction(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "MnM")
    path = prepare_mnms(root, tmp_path / "out")
    content = json.loads(path.read_text())
    test = content["test"]
    assert [(e["subject"], e["frame"], e["frame_index"]) for e in test] == [
        ("A1B2C3", "ED", 0), ("A1B2C3", "ES", 3), ("D4E5F6", "ED", 1), ("D4E5F6", "ES", 4),
        ("G7H8I9", "ED", 0), ("G7H8I9", "ES", 2),
    ]  # fmt: skip
    assert {e["subject"]: (e["vendor"], e["vendor_name"], e["centre"]) for e in test} == {
        "A1B2C3": ("A", "Siemens", "1"), "D4E5F6": ("B", "Philips", "2"), "G7H8I9": ("D", "Canon", "5"),
    }  # fmt: skip
    assert [e["subject"] for e in content["vendor_B"]] == ["D4E5F6", "D4E5F6"]
    assert {e["subset"] for e in test} == {"Training/Labeled", "Testing"}
    for entry in test:
        t = entry["frame_index"]
        image = nib.load(str(tmp_path / "out" / entry["image"]))
        seg = nib.load(str(tmp_path / "out" / entry["label"]))
        assert image.shape == SHAPE and seg.shape == SHAPE
        np.testing.assert_allclose(image.affine, AFFINE)
        np.testing.assert_allclose(seg.affine, AFFINE)
        np.testing.assert_allclose(np.asarray(image.dataobj), 100.0 + t)  # the right time frame
        label = np.asarray(seg.dataobj)
        np.testing.assert_array_equal(label, _label(t))  # native codes, not remapped
        assert (label == 1).sum() == 4 and label[2 + t, 2, 1] == 1, "a structure drawn as LV must be class 1"
    entries = load_datalist(path, "test", tmp_path / "out")
    assert len(entries) == 6
    only = prepare_mnms(root, tmp_path / "out_train", subsets=["Training/Labeled"])
    assert {e["subject"] for e in json.loads(only.read_text())["test"]} == {"A1B2C3", "D4E5F6"}


def test_csv_reading_is_robust(tmp_path: Path) -> None:
    csv = tmp_path / "info.csv"
    csv.write_text("Subject,Vendor,Center,ED frame,ES frame\nX1,C,3,5.0,11\n\n")
    info = read_mnms_info(csv)["X1"]
    assert (info.ed, info.es, info.vendor, info.centre) == (5, 11, "C", "3")
    assert find_info_csv(tmp_path) == csv
    csv.write_text("External code,Vendor,ED\nX1,A,0\n")
    with pytest.raises(DatasetError, match=r"info.csv: no column for \['es'\]"):
        read_mnms_info(csv)
    csv.write_text(HEADER + "\nX1,Siemens,A,1,zero,3\n")
    with pytest.raises(DatasetError, match=r"info.csv, line 2 \(X1\): ED must be a non-negative integer"):
        read_mnms_info(csv)


def test_subject_without_csv_row(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "MnM", HEADER + "\nA1B2C3,Siemens,A,1,0,3\n")
    with pytest.raises(DatasetError, match=r"opendataset.csv: no row for the labelled subjects \['D4E5F6', 'G7H8I9'\]"):
        prepare_mnms(root, tmp_path / "out")


def test_3d_instead_of_4d_names_the_file(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "MnM")
    _save(np.zeros(SHAPE, np.float32), root / "Training/Labeled/A1B2C3/A1B2C3_sa.nii.gz")
    with pytest.raises(DatasetError, match=r"A1B2C3_sa.nii.gz: expected a 4D cine .*4D/3D mismatch"):
        prepare_mnms(root, tmp_path / "out")


def test_label_shape_mismatch_names_the_file(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "MnM")
    _save(np.zeros((*SHAPE, N_TIME - 1), np.uint8), root / "Training/Labeled/D4E5F6/D4E5F6_sa_gt.nii.gz")
    with pytest.raises(DatasetError, match=r"D4E5F6_sa_gt.nii.gz: label shape .* does not match the cine"):
        prepare_mnms(root, tmp_path / "out")


def test_index_outside_the_cine_and_empty_frame(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "MnM", HEADER + "\nA1B2C3,S,A,1,0,9\nD4E5F6,P,B,2,1,4\nG7H8I9,C,D,5,0,2\n")
    with pytest.raises(DatasetError, match=r"opendataset.csv: A1B2C3 ES = 9 is outside the 6 time frames"):
        prepare_mnms(root, tmp_path / "out")
    # 1-based indices by mistake: frame 1 of A1B2C3 holds no label
    root = write_tree(tmp_path / "MnM2", HEADER + "\nA1B2C3,S,A,1,1,4\nD4E5F6,P,B,2,1,4\nG7H8I9,C,D,5,0,2\n")
    with pytest.raises(DatasetError, match=r"A1B2C3_sa_gt.nii.gz: the ED frame \(index 1 .*\) is empty"):
        prepare_mnms(root, tmp_path / "out2")


def test_unexpected_label_values_name_the_file(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "MnM")
    gt = np.zeros((*SHAPE, N_TIME), np.uint8)
    gt[..., 1], gt[..., 4] = _label(1), _label(4)
    gt[0, 0, 0, 4] = 7
    _save(gt, root / "Training/Labeled/D4E5F6/D4E5F6_sa_gt.nii.gz")
    with pytest.raises(DatasetError, match=r"D4E5F6_sa_gt.nii.gz: unexpected label values \[7\] in frame 4"):
        prepare_mnms(root, tmp_path / "out")


def test_missing_csv_and_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from scripts.data.mnms import main

    root = write_tree(tmp_path / "MnM")
    (root / "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv").unlink()
    with pytest.raises(DatasetError, match="cannot find the M&Ms dataset-information CSV"):
        prepare_mnms(root, tmp_path / "out")
    assert main(["--root", str(root), "--out", str(tmp_path / "out")]) == 1
    write_tree(root)
    assert main(["--root", str(root), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip().endswith("datalist.json")
