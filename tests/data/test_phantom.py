# Copyright (c) CoopSeg contributors.
# Licensed under the Apache License, Version 2.0.
"""Tests for the synthetic short-axis cine MR phantom generator."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from scripts.data.phantom import (
    TISSUE_INTENSITY,
    PhantomAppearance,
    generate_subject,
    write_phantom_dataset,
)

N_SUBJECTS = 4
CROSS = ndimage.generate_binary_structure(2, 1)


@pytest.fixture(scope="module")
def subjects() -> list[dict]:
    return [generate_subject(np.random.default_rng([11, i])) for i in range(N_SUBJECTS)]


def _frames(subjects: list[dict]):
    for s in subjects:
        for fr in ("ED", "ES"):
            yield s, fr, s[fr][0], s[fr][1]


def test_deterministic_given_seed() -> None:
    a = generate_subject(np.random.default_rng([5, 0]))
    b = generate_subject(np.random.default_rng([5, 0]))
    c = generate_subject(np.random.default_rng([5, 1]))
    for fr in ("ED", "ES"):
        np.testing.assert_array_equal(a[fr][0], b[fr][0])
        np.testing.assert_array_equal(a[fr][1], b[fr][1])
        np.testing.assert_array_equal(a[fr][2], b[fr][2])
    assert a["params"] == b["params"]
    json.dumps(a["params"])  # JSON-friendly
    assert a["ED"][0].shape != c["ED"][0].shape or not np.array_equal(a["ED"][0], c["ED"][0])
    assert a["params"]["rotation_deg"] != c["params"]["rotation_deg"]


def test_shapes_dtypes_and_labels(subjects: list[dict]) -> None:
    for s, _, img, lab in _frames(subjects):
        assert img.dtype == np.float32 and lab.dtype == np.uint8
        assert img.ndim == 3 and img.shape == lab.shape == tuple(s["params"]["shape"])
        assert np.isfinite(img).all() and img.min() >= 0
        assert set(np.unique(lab)) <= {0, 1, 2, 3}
        # scanner-like units: blood is several hundred, not normalised to [0, 1]
        assert 100 < np.median(img[lab == 1]) < 2000
    for s in subjects:
        present = set(np.unique(s["ED"][1])) | set(np.unique(s["ES"][1]))
        assert {1, 2, 3} <= present
        assert {1, 2, 3} <= set(np.unique(s["ED"][1]))


def test_geometry_ranges(subjects: list[dict]) -> None:
    for s in subjects:
        p = s["params"]
        h, w, d = p["shape"]
        assert 1.2 <= p["spacing_mm"] <= 1.9
        assert 8.0 <= p["slice_thickness_mm"] <= 10.0
        assert 7 <= d <= 10
        for n in (h, w):
            assert 200 - p["spacing_mm"] <= n * p["spacing_mm"] <= 280 + p["spacing_mm"]
        assert np.all(np.abs(p["heart_centre_mm"]) <= 20)
    s = generate_subject(np.random.default_rng(3), spacing_range=(1.0, 1.05), n_slices_range=(12, 12))
    assert 1.0 <= s["params"]["spacing_mm"] <= 1.05 and s["ED"][0].shape[2] == 12


def test_heart_near_image_centre(subjects: list[dict]) -> None:
    for s, _, _, lab in _frames(subjects):
        rows, cols, _ = np.nonzero(lab == 1)
        sp = s["params"]["spacing_mm"]
        off = np.array([rows.mean() - 0.5 * (lab.shape[0] - 1), cols.mean() - 0.5 * (lab.shape[1] - 1)]) * sp
        assert np.all(np.abs(off) < 35.0)  # +-20 mm heart centre plus a few mm of long-axis drift


def test_systole_contracts(subjects: list[dict]) -> None:
    for s in subjects:
        ed, es = (np.bincount(s[fr][1].ravel(), minlength=4) for fr in ("ED", "ES"))
        ef = 1.0 - es[1] / ed[1]
        assert 0.3 < ef < 0.8, ef
        assert es[3] < ed[3]  # RV empties too
        assert 0.75 < es[2] / ed[2] < 1.35  # myocardial volume roughly conserved (it thickens)
        assert s["params"]["myo_thickness_mm"]["ES"] > s["params"]["myo_thickness_mm"]["ED"]


def test_myocardium_surrounds_lv_pool(subjects: list[dict]) -> None:
    for _, _, _, lab in _frames(subjects):
        for k in range(lab.shape[2]):
            sl = lab[:, :, k]
            pool = sl == 1
            if not pool.any():
                continue
            # the LV pool never touches background or RV directly (4-neighbourhood)
            touch = ndimage.binary_dilation(pool, CROSS) & ~pool
            assert np.all(sl[touch] == 2)
            ring = ndimage.binary_dilation(pool, iterations=2) & ~pool
            assert np.mean(sl[ring] == 2) > 0.9


def test_rv_on_septal_side(subjects: list[dict]) -> None:
    shared = []
    for s, _, _, lab in _frames(subjects):
        for k in range(lab.shape[2]):
            sl = lab[:, :, k]
            rv = sl == 3
            if rv.sum() < 5:
                continue
            nb = ndimage.binary_dilation(rv, CROSS) & ~rv
            frac = np.mean(sl[nb] == 2)
            assert frac > 0.1  # shares the septum with the LV myocardium
            shared.append(frac)
        # the RV lies towards -u (septal side) in the documented anatomy frame
        lv_c = np.argwhere(lab == 1)[:, :2].mean(0)
        rv_c = np.argwhere(lab == 3)[:, :2].mean(0)
        dy, dx = rv_c - lv_c
        ang = np.radians(s["params"]["rotation_deg"])
        assert (np.cos(ang) * dx + np.sin(ang) * dy) / np.hypot(dx, dy) < -0.7
    assert np.mean(shared) > 0.25


def _best_dice(img: np.ndarray, target: np.ndarray, n: int = 100) -> float:
    thresholds = np.quantile(img, np.linspace(0.3, 0.999, n))
    best = 0.0
    for t in thresholds:
        pred = img > t
        best = max(best, 2.0 * np.logical_and(pred, target).sum() / (pred.sum() + target.sum()))
    return best


def test_not_separable_by_intensity(subjects: list[dict]) -> None:
    for _, _, img, lab in _frames(subjects):
        assert _best_dice(img, lab == 1) < 0.7
        # bright non-heart tissue (fat, aorta, atria) overlaps the blood intensity range
        body = ndimage.binary_erosion(img > 0.5 * np.median(img[lab == 1]), iterations=1)
        far = ~ndimage.binary_dilation(lab > 0, iterations=4) & body
        lo, hi = np.percentile(img[lab == 1], [25, 75])
        assert np.sum((img[far] >= lo) & (img[far] <= hi)) > 0.2 * np.sum(lab == 1)
        # myocardium is darker than blood, like skeletal muscle
        assert np.median(img[lab == 2]) < 0.6 * np.median(img[lab == 1])


def test_label_sanity_against_intensity(subjects: list[dict]) -> None:
    for _, _, img, lab in _frames(subjects):
        blood, myo = np.median(img[lab == 1]), np.median(img[lab == 2])
        assert np.median(img[lab == 3]) > 0.7 * blood
        assert myo < 0.6 * blood
        # air/lung exists (dark, near zero before noise)
        assert np.percentile(img, 5) < 0.15 * blood


def test_appearance_knobs() -> None:
    clean = PhantomAppearance(noise_sigma=0.0, coil_strength=0.0, blur_sigma_mm=0.0)
    s = generate_subject(np.random.default_rng([2, 0]), appearance=clean)
    img, lab, _ = s["ED"]
    assert img.min() == 0.0  # background air without noise
    fs = generate_subject(
        np.random.default_rng([2, 0]), appearance=PhantomAppearance(fat_suppression=1.0, noise_sigma=0.0)
    )
    np.testing.assert_array_equal(fs["ED"][1], lab)
    assert fs["params"]["intensities"]["fat"] == 0.0
    assert s["params"]["intensities"]["fat"] > 0.5
    partial = PhantomAppearance(intensities={"fat": 0.5})
    assert partial.intensities["fat"] == 0.5 and partial.intensities["blood"] == TISSUE_INTENSITY["blood"]
    for bad in (
        {"intensities": {"bone_marrow": 1.0}},
        {"fat_suppression": 1.5},
        {"gamma": 0.0},
        {"coil_strength": 1.0},
    ):
        with pytest.raises(ValueError):
            PhantomAppearance(**bad)
    # per-subject jitter stays within +-10 % of the defaults
    for name, value in TISSUE_INTENSITY.items():
        assert abs(s["params"]["intensities"][name] - value) <= 0.1 * value + 1e-6


def test_write_phantom_dataset(tmp_path) -> None:
    out = str(tmp_path / "ds")
    datalist = write_phantom_dataset(out, n_subjects=2, seed=4, prefix="syn")
    assert [(e["subject"], e["frame"]) for e in datalist] == [
        ("syn000", "ED"),
        ("syn000", "ES"),
        ("syn001", "ED"),
        ("syn001", "ES"),
    ]
    assert datalist[0]["image"] == "syn000/syn000_ED.nii.gz" and datalist[0]["label"] == "syn000/syn000_ED_gt.nii.gz"
    assert not [f for _, _, files in os.walk(out) for f in files if f.startswith(".tmp")]
    for i, entry in enumerate(datalist):
        assert not os.path.isabs(entry["image"])
        img = nib.load(os.path.join(out, entry["image"]))
        lab = nib.load(os.path.join(out, entry["label"]))
        assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
        assert img.shape == lab.shape
        ref = generate_subject(np.random.default_rng([4, i // 2]))
        ref_img, ref_lab, ref_aff = ref[entry["frame"]]
        np.testing.assert_array_equal(np.asarray(img.dataobj), ref_img)
        np.testing.assert_array_equal(np.asarray(lab.dataobj), ref_lab)
        sp, dz = ref["params"]["spacing_mm"], ref["params"]["slice_thickness_mm"]
        for nii in (img, lab):
            np.testing.assert_allclose(nii.header.get_zooms(), (sp, sp, dz), rtol=1e-5)
            np.testing.assert_allclose(nii.affine, ref_aff, atol=1e-4)
            np.testing.assert_allclose(nii.get_qform(), ref_aff, atol=1e-4)
            np.testing.assert_allclose(nii.get_sform(), ref_aff, atol=1e-4)
            assert int(nii.header["qform_code"]) > 0 and int(nii.header["sform_code"]) > 0
        rot = img.affine[:3, :3] / np.array([sp, sp, dz])
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-5)
        assert np.linalg.det(rot) > 0
        assert np.abs(rot - np.diag(np.diag(rot))).max() > 0.2  # oblique, not axis-aligned
    # same seed -> identical files, different seed -> different data
    again = write_phantom_dataset(str(tmp_path / "again"), n_subjects=1, seed=4, prefix="syn")
    other = write_phantom_dataset(str(tmp_path / "other"), n_subjects=1, seed=5, prefix="syn")
    a = np.asarray(nib.load(os.path.join(tmp_path, "again", again[0]["image"])).dataobj)
    np.testing.assert_array_equal(a, np.asarray(nib.load(os.path.join(out, datalist[0]["image"])).dataobj))
    b = np.asarray(nib.load(os.path.join(tmp_path, "other", other[0]["image"])).dataobj)
    assert a.shape != b.shape or not np.array_equal(a, b)
