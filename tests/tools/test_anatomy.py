# Copyright (c) CoopSeg contributors.
# Licensed under the Apache License, Version 2.0.
"""The second anatomy model (test domains): determinism, labels, ED/ES physiology, ranges outside the training
phantom's, tilted sections, partial coverage, the written dataset and the geometric shifts of existing volumes."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from scripts.data.phantom import generate_subject
from scripts.labels import by_name
from tools.robustness.anatomy import crop_fov, generate_thorax_subject, rotate_flip, write_thorax_dataset

LV, MYO, RV = (by_name(n).code for n in ("lv", "myocardium", "rv"))
N_FULL = 8
N_PARTIAL = 6


@pytest.fixture(scope="module")
def full() -> list[dict]:
    return [generate_thorax_subject(np.random.default_rng([21, i])) for i in range(N_FULL)]


@pytest.fixture(scope="module")
def partial() -> list[dict]:
    return [generate_thorax_subject(np.random.default_rng([22, i]), coverage="partial") for i in range(N_PARTIAL)]


@pytest.fixture(scope="module")
def source() -> dict:
    """A training-domain volume pair for the geometric shifts."""
    return generate_subject(np.random.default_rng([23, 0]))


def _lv_area(label: np.ndarray) -> np.ndarray:
    """LV blood + myocardium voxel count per slice ``(D,)``."""
    return ((label == LV) | (label == MYO)).sum(axis=(0, 1))


def _axis_ratio(mask: np.ndarray) -> float:
    """Ratio of the principal axes (major / minor) of a 2D mask from its second moments."""
    cov = np.cov(np.argwhere(mask).T.astype(float))
    small, large = np.linalg.eigvalsh(cov)
    return float(np.sqrt(large / small))


def _world_centroid(label: np.ndarray, affine: np.ndarray, code: int = LV) -> np.ndarray:
    """World position (mm) of the centroid of the voxels labelled ``code``."""
    idx = np.argwhere(label == code).mean(axis=0)
    return affine[:3, :3] @ idx + affine[:3, 3]


def test_deterministic_given_seed() -> None:
    a = generate_thorax_subject(np.random.default_rng([5, 0]))
    b = generate_thorax_subject(np.random.default_rng([5, 0]))
    c = generate_thorax_subject(np.random.default_rng([5, 1]))
    for fr in ("ED", "ES"):
        for x, y in zip(a[fr], b[fr], strict=True):
            np.testing.assert_array_equal(x, y)
    assert a["params"] == b["params"]
    json.dumps(a["params"])  # JSON-friendly
    assert a["params"] != c["params"]


def test_arrays_labels_and_structures(full: list[dict]) -> None:
    present = []
    for s in full:
        p = s["params"]
        for fr in ("ED", "ES"):
            image, label, affine = s[fr]
            assert image.shape == label.shape == tuple(p["shape"])
            assert image.dtype == np.float32 and label.dtype == np.uint8 and affine.dtype == np.float64
            assert np.isfinite(image).all() and image.min() >= 0
            assert set(np.unique(label).tolist()) == {0, LV, MYO, RV}
            zooms = np.linalg.norm(affine[:3, :3], axis=0)
            np.testing.assert_allclose(zooms, [p["spacing_mm"], p["spacing_mm"], p["slice_thickness_mm"]])
            np.testing.assert_array_equal(affine, s["ED"][2])
        ed = s["ED"][1]
        slices = [all((ed[..., k] == code).any() for code in (LV, MYO, RV)) for k in range(ed.shape[2])]
        assert np.mean(slices) >= 0.5, p
        present += slices
        # bSSFP-like: LV blood bright, myocardium dark, both against the same blood scale as the training phantom
        blood = np.median(s["ED"][0][ed == LV])
        assert 0.15 < np.median(s["ED"][0][ed == MYO]) / blood < 0.6
        assert 150 < blood < 900
    assert np.mean(present) > 0.65


def test_ed_es_physiology(full: list[dict]) -> None:
    for s in full:
        p = s["params"]
        ed, es = s["ED"][1], s["ES"][1]
        v_ed, v_es = (ed == LV).sum(), (es == LV).sum()
        assert v_ed > v_es
        assert abs((1 - v_es / v_ed) - p["ef_nominal"]) < 0.12, p
        assert 0.8 < (es == MYO).sum() / (ed == MYO).sum() < 1.25  # roughly mass-conserving
        assert p["wall_thickness_mm"]["ES"] > p["wall_thickness_mm"]["ED"]
        assert p["base_descent_mm"] > 0
        first_ed, first_es = (int(np.flatnonzero(_lv_area(lab))[0]) for lab in (ed, es))
        assert first_es >= first_ed and _lv_area(es)[first_ed] <= _lv_area(ed)[first_ed]  # the base moved apically


def test_parameters_outside_source_ranges(full: list[dict], partial: list[dict]) -> None:
    for s in full + partial:
        p = s["params"]
        assert not 18.0 <= p["lv_radius_mm"]["ED"] <= 30.0
        assert not 6.0 <= p["wall_thickness_mm"]["ED"] <= 11.0
        assert not 0.45 < p["ef_nominal"] < 0.70
        assert all(not 200.0 <= f <= 280.0 for f in p["fov_mm"])
        assert not 1.2 <= p["spacing_mm"] <= 1.9
        assert not 8.0 <= p["slice_thickness_mm"] <= 10.0
        assert max(abs(x) for x in p["heart_offset_mm"]) > 20.0 and p["heart_offset_norm_mm"] >= 25.0
        assert 10.0 <= p["tilt_deg"] <= 25.0
    for s in full:  # the offset is real: the labelled LV sits that far from the image centre
        p, label = s["params"], s["ED"][1]
        centre = (np.argwhere(label == LV)[:, :2].mean(axis=0) - (np.array(label.shape[:2]) - 1) / 2) * p["spacing_mm"]
        assert np.linalg.norm(centre) > 20.0
        assert np.linalg.norm(centre - p["heart_offset_mm"]) < 12.0
    kinds = {s["params"]["phenotype"] for s in full}
    assert len(kinds) >= 2


def test_tilt_makes_sections_elliptical(full: list[dict]) -> None:
    yy, xx = np.mgrid[:80, :80]
    disc = (yy - 39.3) ** 2 + (xx - 40.1) ** 2 < 20.0**2
    assert _axis_ratio(disc) < 1.01
    tilted = [s for s in full if s["params"]["tilt_deg"] >= 17.0]
    assert tilted
    for s in tilted:
        label = s["ED"][1]
        k = int(np.argmax(_lv_area(label)))
        assert _axis_ratio((label[..., k] == LV) | (label[..., k] == MYO)) > 1.025, s["params"]["tilt_deg"]


def test_partial_coverage_misses_base_or_apex(full: list[dict], partial: list[dict]) -> None:
    assert {s["params"]["missing"] for s in partial} == {"base", "apex"}
    for s in partial:
        p, label = s["params"], s["ED"][1]
        area = _lv_area(label)
        if p["missing"] == "base":  # the first slice is already deep in the ventricle
            assert p["slice_position_frac"][0] > 0.25 and area[0] > 0.5 * area.max()
            assert all((label[..., 0] == code).any() for code in (LV, MYO, RV))
        else:  # no near-apex slice
            assert p["slice_position_frac"][-1] < 0.7 and area[-1] > 0.5 * area.max()
    for s in full:
        frac = s["params"]["slice_position_frac"]
        assert s["params"]["missing"] is None and frac[0] < 0.15 and frac[-1] > 0.65
    with pytest.raises(ValueError, match="full"):
        generate_thorax_subject(np.random.default_rng(0), coverage="apex")


def test_write_thorax_dataset(tmp_path) -> None:
    datalist = write_thorax_dataset(tmp_path, n_subjects=2, seed=4, prefix="t")
    assert [(e["subject"], e["frame"]) for e in datalist] == [
        ("t000", "ED"), ("t000", "ES"), ("t001", "ED"), ("t001", "ES")
    ]
    assert datalist[0]["image"] == "t000/t000_ED.nii.gz" and datalist[0]["label"] == "t000/t000_ED_gt.nii.gz"
    for i, sid in enumerate(("t000", "t001")):
        subject = generate_thorax_subject(np.random.default_rng([4, i]))
        p = subject["params"]
        for entry in (e for e in datalist if e["subject"] == sid):
            img, lab = nib.load(str(tmp_path / entry["image"])), nib.load(str(tmp_path / entry["label"]))
            assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
            np.testing.assert_allclose(
                img.header.get_zooms()[:3], [p["spacing_mm"], p["spacing_mm"], p["slice_thickness_mm"]], rtol=1e-5
            )
            np.testing.assert_allclose(img.affine, subject[entry["frame"]][2], atol=1e-4)
            np.testing.assert_array_equal(np.asarray(lab.dataobj), subject[entry["frame"]][1])
    assert not list(tmp_path.rglob(".*"))  # no temporary files left behind
    with pytest.raises(ValueError, match="partial"):
        write_thorax_dataset(tmp_path, 1, 0, coverage="both")


@pytest.mark.parametrize("k", [0, 1, 2, 3, -1])
@pytest.mark.parametrize("flip", [False, True])
def test_rotate_flip_keeps_world_coordinates(source: dict, k: int, flip: bool) -> None:
    image, label, affine = source["ED"]
    image2, label2, affine2 = rotate_flip(image, label, affine, k, flip)
    assert label2.shape[:2] == (label.shape[:2] if k % 2 == 0 else label.shape[1::-1])
    if k % 4 or flip:
        assert not np.array_equal(np.argwhere(label2 == LV).mean(axis=0), np.argwhere(label == LV).mean(axis=0))
    for code in (LV, MYO, RV):
        np.testing.assert_allclose(_world_centroid(label2, affine2, code), _world_centroid(label, affine, code))
    assert (label2 > 0).sum() == (label > 0).sum()
    np.testing.assert_allclose(np.sort(image2, axis=None), np.sort(image, axis=None))
    idx = np.argwhere(label2 == MYO)[0]  # the image moves with the label: same voxel, same world position
    world = affine2[:3, :3] @ idx + affine2[:3, 3]
    old = np.linalg.solve(affine[:3, :3], world - affine[:3, 3]).round().astype(int)
    assert image2[tuple(idx)] == image[tuple(old)] and label[tuple(old)] == MYO


def test_crop_fov_keeps_heart_and_world_coordinates(source: dict) -> None:
    image, label, affine = source["ED"]
    spacing = float(np.linalg.norm(affine[:3, 0]))
    offsets = set()
    for seed in range(4):
        image2, label2, affine2 = crop_fov(image, label, affine, 150.0, np.random.default_rng(seed))
        assert abs(label2.shape[0] * spacing - 150.0) <= spacing and image2.shape == label2.shape
        for code in (LV, MYO, RV):
            assert (label2 == code).sum() == (label == code).sum()
            np.testing.assert_allclose(_world_centroid(label2, affine2, code), _world_centroid(label, affine, code))
        np.testing.assert_allclose(affine2[:3, :3], affine[:3, :3])
        offsets.add(tuple(np.round(affine2[:3, 3], 3)))
    assert len(offsets) > 1  # placed at a random offset around the heart
    with pytest.raises(ValueError, match="heart"):
        crop_fov(image, label, affine, 40.0, np.random.default_rng(0))
