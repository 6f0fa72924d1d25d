"""Datalist resolution, input validation and the slice dataset: bad input stops with a specific error."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, RandCropByPosNegLabeld

from scripts.data.datalist import ensure_synthetic_dataset, resolve_datalists
from scripts.data.errors import DatasetError
from scripts.data.slices import VolumeSliceDataset
from scripts.volumes import ValidateVolumed


def _write(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 8.0, 1.0])), str(path))
    return str(path)


def _pair(root: Path, name: str, label: np.ndarray | None = None, image: np.ndarray | None = None) -> dict:
    image = np.random.default_rng(0).random((24, 24, 4)).astype(np.float32) if image is None else image
    if label is None:
        label = np.zeros((24, 24, 4), np.uint8)
        label[8:16, 8:16, 1:3] = 1
        label[10:14, 10:14, 1:3] = 2
    return {"image": _write(root / f"{name}.nii.gz", image), "label": _write(root / f"{name}_gt.nii.gz", label)}


def test_missing_and_empty_dataset_dir(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        resolve_datalists(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="is empty"):
        resolve_datalists(str(tmp_path / "empty"))


def test_missing_datalist_and_missing_files(tmp_path: Path) -> None:
    entry = _pair(tmp_path, "a")
    with pytest.raises(DatasetError, match="no datalist at .*datalist.json"):
        resolve_datalists(str(tmp_path))
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [entry, {"image": "gone.nii.gz",
                                                                            "label": "a_gt.nii.gz"}]}))
    with pytest.raises(DatasetError, match="missing image file: .*gone.nii.gz"):
        resolve_datalists(str(tmp_path))
    (tmp_path / "datalist.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        resolve_datalists(str(tmp_path))
    (tmp_path / "datalist.json").write_text(json.dumps({"training": []}))
    with pytest.raises(DatasetError, match="no non-empty 'training'"):
        resolve_datalists(str(tmp_path))


def test_relative_paths_and_validation_fallback(tmp_path: Path) -> None:
    entries = [_pair(tmp_path / "d", f"s{i}") for i in range(5)]
    rel = [{k: str(Path(v).relative_to(tmp_path)) for k, v in e.items()} for e in entries]
    (tmp_path / "datalist.json").write_text(json.dumps({"training": rel}))
    lists = resolve_datalists(str(tmp_path))
    assert len(lists["training"]) == 4 and len(lists["validation"]) == 1
    assert Path(lists["validation"][0]["image"]).is_absolute()


def test_synthetic_dataset_is_generated_once(tmp_path: Path) -> None:
    split = {"training": 1, "validation": 1}
    first = ensure_synthetic_dataset(tmp_path, seed=3, split=split)
    stamp = (first / "datalist.json").stat().st_mtime_ns
    again = ensure_synthetic_dataset(tmp_path, seed=3, split=split)
    assert again == first and (first / "datalist.json").stat().st_mtime_ns == stamp
    datalist = json.loads((first / "datalist.json").read_text())
    assert len(datalist["training"]) == 2 and len(datalist["validation"]) == 2  # ED + ES
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no staging leftovers
    lists = resolve_datalists("", synthetic_cache_dir=str(tmp_path), synthetic_seed=3)
    assert all(Path(e["label"]).is_file() for e in lists["training"])


LOAD = Compose([LoadImaged(keys=["image", "label"], image_only=True), EnsureChannelFirstd(keys=["image", "label"])])


@pytest.mark.parametrize(
    "case,match",
    [
        ("2d", "is a 2D image of shape"),
        ("nan", "voxels are NaN; expected finite intensities"),
        ("shape", "does not match the image shape"),
        ("values", r"unexpected label values \[7"),
        ("cine", "has 3 frames .* expected a single 3D short-axis stack"),
    ],
)
def test_training_validation_names_the_problem(tmp_path: Path, case: str, match: str) -> None:
    image = np.random.default_rng(0).random((24, 24, 4)).astype(np.float32)
    label = np.zeros((24, 24, 4), np.uint8)
    if case == "2d":
        image, label = image[..., 0], label[..., 0]
    elif case == "nan":
        image[:] = np.nan
    elif case == "shape":
        label = np.zeros((20, 24, 4), np.uint8)
    elif case == "values":
        label[0, 0, 0] = 7
    elif case == "cine":
        image = np.stack([image] * 3, axis=-1)
    data = LOAD(_pair(tmp_path, "x", label=label, image=image))
    with pytest.raises(ValueError, match=match) as info:
        ValidateVolumed(label_key="label", max_frames=1)(data)
    assert "x" in str(info.value) and ".nii.gz" in str(info.value)


def test_slice_dataset_replace_rule_never_serves_empty_slices(tmp_path: Path) -> None:
    entry = _pair(tmp_path, "v")  # slices 1 and 2 labelled, 0 and 3 empty
    dataset = VolumeSliceDataset([entry], volume_transform=LOAD, progress=False)
    dataset.set_random_state(0)
    assert len(dataset) == 4
    served = [dataset[i]["slice_index"] for i in range(4) for _ in range(5)]
    assert set(served) == {1, 2}
    sample = dataset[1]
    assert sample["image"].shape == (1, 24, 24) and torch.equal(
        sample["label"], LOAD(entry)["label"][..., 1].as_tensor()
    )
    empty = _pair(tmp_path, "e", label=np.zeros((24, 24, 4), np.uint8))
    with pytest.raises(ValueError, match="e_gt.nii.gz has no foreground"):
        VolumeSliceDataset([empty], volume_transform=LOAD, progress=False)


def test_slice_dataset_keep_rule_trains_on_slices_without_a_label(tmp_path: Path) -> None:
    entry = _pair(tmp_path, "v")  # slices 1 and 2 labelled, 0 and 3 empty: the atria above the base, say
    patch = RandCropByPosNegLabeld(["image", "label"], "label", spatial_size=(16, 16), pos=1.0, neg=1.0)
    dataset = VolumeSliceDataset([entry], LOAD, Compose([patch], map_items=2), empty_slices="keep", progress=False)
    dataset.set_random_state(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the sampler's "no foreground" warning is expected and kept quiet
        served = [dataset[i] for i in range(4)]
    assert [s["slice_index"] for s in served] == [0, 1, 2, 3]
    assert not served[0]["label"].any() and not served[3]["label"].any() and served[0]["image"].shape == (1, 16, 16)
    with pytest.raises(ValueError, match="empty_slices must be one of"):
        VolumeSliceDataset([entry], LOAD, empty_slices="drop", progress=False)
