"""The MONAI Label app on 4D cines, in-process: upload, frame-by-frame inference with a 4D label on the input grid,
and the result params (volumes per frame, function indices, quality score)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import oracle
import pytest

from helpers import configured_quality_threshold, make_bundle_copy, phantom_volume, write_nifti
from scripts.cardiac_function import function_from_cine, measure_volumes
from tools.servers import APP_DIR


def make_app(app_modules, root: Path, use_oracle: bool):
    bundle = make_bundle_copy(root)
    if use_oracle:
        oracle.install(bundle)
    studies = root / "studies"
    studies.mkdir()
    image, _, affine = phantom_volume(seed=90, n_slices=3)
    write_nifti(studies / "stack.nii.gz", image, affine)
    conf = {"bundle_path": str(bundle), "model_dir": str(root / "models"), "skip_scoring": "true"}
    return app_modules.CoopSegApp(str(APP_DIR), str(studies), conf)


def upload_cine(app, root: Path, image: np.ndarray, affine: np.ndarray, name: str = "cine") -> Path:
    path = write_nifti(root / f"{name}_upload.nii.gz", image, affine)
    assert app.datastore().add_image(name, str(path), {}) == name  # 4D uploads are accepted
    return Path(app.datastore().get_image_uri(name))


def infer(app, image_id: str, model: str = "coopseg") -> tuple[nib.Nifti1Image, dict]:
    result = app.infer({"model": model, "image": image_id, "device": "cpu"})
    return nib.load(result["label"]), result["params"]


def test_cine_is_segmented_frame_by_frame_with_function_and_quality(app_modules, tmp_path: Path) -> None:
    app = make_app(app_modules, tmp_path, use_oracle=True)
    image, truth, affine = oracle.coded_cine()
    stored = upload_cine(app, tmp_path, image, affine)
    label, params = infer(app, "cine")
    source = nib.load(stored)
    assert label.shape == source.shape == truth.shape
    np.testing.assert_allclose(label.affine, source.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(label.dataobj), truth)  # every frame, in order, on its voxels

    volumes = measure_volumes(truth, affine, name="cine")
    for name, per_frame in params["volumes_ml"].items():
        np.testing.assert_allclose(per_frame, volumes.ml[name], atol=0.01)
    expected = function_from_cine(volumes, "cine")
    function = params["function"]
    assert (function["ed_frame"], function["es_frame"]) == (0, 2)
    for key, value in expected.indices().items():
        assert function[key] == pytest.approx(value, abs=0.01), key
    quality = params["quality"]
    assert quality["threshold"] == configured_quality_threshold()  # the bundle's, not a copy of it
    assert 0.0 < quality["disagreement_score"] < quality["threshold"] and quality["flag"] is False
    assert len(quality["frame_scores"]) == truth.shape[3] and quality["frame"] in range(truth.shape[3])

    # the FTN alone: the same mask, no quality score and why
    fast, fast_params = infer(app, "cine", model="coopseg_fast")
    np.testing.assert_array_equal(np.asarray(fast.dataobj), truth)
    assert fast_params["quality"]["disagreement_score"] is None and "FTN alone" in fast_params["quality"]["message"]
    # a corrected 4D label is stored for the cine
    corrected = write_nifti(tmp_path / "corrected.nii.gz", truth, affine)
    assert app.datastore().save_label("cine", str(corrected), "final", {}) == "cine"


def test_cine_with_an_empty_lv_frame_reports_why_instead_of_indices(app_modules, tmp_path: Path) -> None:
    app = make_app(app_modules, tmp_path, use_oracle=True)
    image, truth, affine = oracle.coded_cine(blank_frames=(3,))
    upload_cine(app, tmp_path, image, affine)
    label, params = infer(app, "cine")
    np.testing.assert_array_equal(np.asarray(label.dataobj), truth)
    assert params["function"] is None
    assert "LV blood pool is empty in frame(s) 3 of 4" in params["function_message"]
    assert params["volumes_ml"]["lv"][3] == 0.0


def test_network_on_a_cine_and_a_stack(app_modules, tmp_path: Path) -> None:
    """The real network (fresh weights): 4D label on the cine's grid, params that match the returned masks."""
    app = make_app(app_modules, tmp_path, use_oracle=False)
    image, _, affine = oracle.coded_cine(shape=(44, 40, 3))
    stored = upload_cine(app, tmp_path, image + 20.0 * np.random.default_rng(0).random(image.shape), affine)
    label, params = infer(app, "cine")
    source = nib.load(stored)
    assert label.shape == source.shape and label.get_data_dtype() == np.uint8
    np.testing.assert_allclose(label.affine, source.affine, atol=1e-5)
    codes = np.asarray(label.dataobj)
    assert set(np.unique(codes).tolist()) <= {0, 1, 2, 3}
    volumes = measure_volumes(codes, label.affine)
    for name, per_frame in params["volumes_ml"].items():
        np.testing.assert_allclose(per_frame, volumes.ml[name], atol=0.01)
    assert ("function_message" in params) == (params["function"] is None)
    assert 0.0 <= params["quality"]["disagreement_score"] <= 1.0 and len(params["quality"]["frame_scores"]) == 4

    stack_label, stack_params = infer(app, "stack")  # 3D as before, with volumes and the score
    assert stack_label.shape == nib.load(tmp_path / "studies" / "stack.nii.gz").shape
    assert all(isinstance(v, float) for v in stack_params["volumes_ml"].values())
    assert "function" not in stack_params and "frame_scores" not in stack_params["quality"]
    assert isinstance(stack_params["quality"]["flag"], bool)


def test_training_leaves_cine_labels_out(app_modules, tmp_path: Path) -> None:
    app = make_app(app_modules, tmp_path, use_oracle=True)
    image, _, affine = oracle.coded_cine()
    cine = str(upload_cine(app, tmp_path, image, affine))
    stack = str(tmp_path / "studies" / "stack.nii.gz")
    trainer = app._trainers["coopseg"]
    pairs = [{"image": stack, "label": "stack_label"}, {"image": cine, "label": "cine_label"}]
    train, val = trainer._partition_datalist(pairs, {"val_split": 0.0})
    assert [d["image"] for d in train] == [stack] and [d["image"] for d in val] == [stack]
    with pytest.raises(ValueError, match="4D cine"):
        trainer._partition_datalist(pairs[1:], {"val_split": 0.0})
