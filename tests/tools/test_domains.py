"""Synthetic domain-shift suite: training data apart from the test domains, paired test subjects across rendered,
artefact and geometry domains, the second anatomy model, cached generation."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.data.datalist import load_datalist
from tools.robustness.domains import (
    DOMAINS,
    SHIFTED,
    ensure_test_domains,
    ensure_training_data,
    preview_domains,
    write_test_domains,
    write_training_data,
)

CHOSEN = ["contrast", "fat_suppression", "resolution", "RandomGhosting", "thorax", "rotated_flipped", "fov_crop"]


def _load(root: Path, entry: dict, key: str = "image") -> np.ndarray:
    return np.asarray(nib.load(str(root / entry[key])).dataobj, dtype=np.float32)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("suite")
    return root, write_test_domains(root, n_test=2, seed=0, domains=CHOSEN)


def test_registry_covers_the_issue() -> None:
    names = {d.name for d in SHIFTED}
    assert {"contrast", "gamma", "blur", "noise", "fat_suppression", "resolution"} <= names
    assert {"RandomBias", "RandomGhosting", "RandomMotion", "RandomSpike"} <= names
    assert {"thorax", "thorax_partial", "rotated_flipped", "fov_crop"} <= names
    assert "source" in DOMAINS and all(d.description for d in DOMAINS.values())
    assert {d.group for d in SHIFTED} == {"appearance", "artefact", "anatomy"}
    with pytest.raises(ValueError, match="unknown domains"):
        write_test_domains("/nonexistent", domains=["snow"])


def test_datalist_layout(suite: tuple[Path, dict], tmp_path: Path) -> None:
    root, datalist = suite
    assert json.loads((root / "datalist.json").read_text()) == datalist
    assert list(datalist["domains"]) == ["source", *CHOSEN]
    assert datalist["groups"]["thorax"] == "anatomy" and datalist["groups"]["RandomGhosting"] == "artefact"
    for name in ["source", *CHOSEN]:
        assert len(datalist[name]) == 4, name  # 2 subjects x (ED, ES)
        assert len(load_datalist(root / "datalist.json", name, root)) == 4
        assert {e["domain"] for e in datalist[name]} == {name}
    assert datalist["test"] == datalist["source"]
    training = write_training_data(tmp_path, n_train=1, n_val=1, seed=0)
    assert len(training["training"]) == 2 and len(training["validation"]) == 2
    train_images = {_load(tmp_path, e).tobytes() for e in training["training"] + training["validation"]}
    assert not train_images & {_load(root, e).tobytes() for e in datalist["source"]}, "test volumes leak into training"


def test_rendered_shifts_keep_the_anatomy(suite: tuple[Path, dict]) -> None:
    root, datalist = suite
    source = datalist["source"][0]
    for name in ("contrast", "fat_suppression"):
        entry = datalist[name][0]
        np.testing.assert_array_equal(_load(root, entry, "label"), _load(root, source, "label"))  # same anatomy
        a, b = _load(root, entry), _load(root, source)
        assert a.shape == b.shape and not np.allclose(a, b), f"{name} did not change the image"
        np.testing.assert_allclose(
            nib.load(str(root / entry["image"])).affine, nib.load(str(root / source["image"])).affine
        )
    # fat suppression darkens fat: the brightest non-blood tissue percentile falls relative to the LV blood
    lv = _load(root, source, "label") == 1
    src, fat = _load(root, source), _load(root, datalist["fat_suppression"][0])
    assert np.percentile(fat[~lv], 99) / fat[lv].mean() < np.percentile(src[~lv], 99) / src[lv].mean()


def test_resolution_shift_is_coarser(suite: tuple[Path, dict]) -> None:
    root, datalist = suite
    zoom = nib.load(str(root / datalist["resolution"][0]["image"])).header.get_zooms()
    source_zoom = nib.load(str(root / datalist["source"][0]["image"])).header.get_zooms()
    assert 2.4 <= zoom[0] <= 3.0 and source_zoom[0] <= 1.9


def test_artefact_domain_corrupts_the_source_test_volumes(suite: tuple[Path, dict]) -> None:
    root, datalist = suite
    for entry, source in zip(datalist["RandomGhosting"], datalist["source"], strict=True):
        assert entry["source_subject"] == source["subject"] and entry["artefact"] == "RandomGhosting"
        np.testing.assert_array_equal(_load(root, entry, "label"), _load(root, source, "label"))
        assert not np.allclose(_load(root, entry), _load(root, source))


def test_anatomy_and_geometry_domains(suite: tuple[Path, dict]) -> None:
    root, datalist = suite
    source = datalist["source"]
    # the second anatomy model draws its own subjects, on other grids
    thorax = nib.load(str(root / datalist["thorax"][0]["image"]))
    assert thorax.shape != nib.load(str(root / source[0]["image"])).shape
    assert {e["subject"] for e in datalist["thorax"]}.isdisjoint({e["subject"] for e in source})
    # geometry shifts keep the source subjects and their world-space anatomy, on another voxel grid
    for name in ("rotated_flipped", "fov_crop"):
        for entry, src in zip(datalist[name], source, strict=True):
            assert entry["subject"] == src["subject"] and entry["frame"] == src["frame"]
            shifted, original = nib.load(str(root / entry["label"])), nib.load(str(root / src["label"]))
            a, b = np.asarray(shifted.dataobj), np.asarray(original.dataobj)
            assert a.shape != b.shape or not np.array_equal(a, b), name
            for code in (1, 2, 3):
                world = [img.affine @ np.r_[np.argwhere(arr == code).mean(0), 1.0] for img, arr in
                         ((shifted, a), (original, b))]  # fmt: skip
                np.testing.assert_allclose(world[0], world[1], atol=1e-3, err_msg=f"{name} moved label {code}")


def test_cached_generation_and_preview(tmp_path: Path) -> None:
    training = ensure_training_data(tmp_path, n_train=1, n_val=1)
    assert ensure_training_data(tmp_path, n_train=1, n_val=1) == training
    first = ensure_test_domains(tmp_path, n_test=1, domains=["gamma"])
    stamp = (first / "datalist.json").stat().st_mtime_ns
    again = ensure_test_domains(tmp_path, n_test=1, domains=["gamma"])
    assert again == first and (again / "datalist.json").stat().st_mtime_ns == stamp
    other = ensure_test_domains(tmp_path, n_test=1, domains=["blur"])
    assert other != first  # the domain definitions are part of the cache key
    assert training not in (first, other)  # test domains never change the training data
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a staging folder was left behind"
    png = preview_domains(first, tmp_path / "preview.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
