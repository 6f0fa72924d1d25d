"""The interactive models in-process: Slicer's scribbles and DeepGrow requests, per-label clicks, a cine frame, and the
bad requests that must get a 422 naming the cause with nothing written to the datastore.

The served network is the oracle of ``oracle.py`` (each structure has its own intensity, so the model's mask is the
truth); the mask being corrected is made wrong on purpose, so a correction must bring the truth back on the slice it
touches and leave every other slice as it was.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import oracle
import pytest

from helpers import make_bundle_copy, write_nifti
from tools.servers import APP_DIR

pytestmark = pytest.mark.slow  # an app per test (about 10 s each on 2 cores)

K = 2  # the corrected slice
LABEL_INFO = [
    {"name": "lv", "id": 1},
    {"name": "myocardium", "id": 2},
    {"name": "rv", "id": 3},
    {"name": "background_scribbles", "id": 4},
    {"name": "foreground_scribbles", "id": 5},
]


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def site(app_modules, tmp_path: Path) -> dict:
    """An app serving the oracle over a 3D stack (frame 0 of the coded cine) and the 4D cine itself."""
    bundle = make_bundle_copy(tmp_path)
    oracle.install(bundle)
    studies = tmp_path / "studies"
    studies.mkdir()
    image, truth, affine = oracle.coded_cine()
    write_nifti(studies / "stack.nii.gz", np.ascontiguousarray(image[..., 0]), affine)
    write_nifti(studies / "cine.nii.gz", image, affine)
    write_nifti(studies / "bare.nii.gz", np.ascontiguousarray(image[..., 1]), affine)  # has no label
    conf = {"bundle_path": str(bundle), "model_dir": str(tmp_path / "models"), "skip_scoring": "true"}
    app = app_modules.CoopSegApp(str(APP_DIR), str(studies), conf)
    return {"app": app, "root": tmp_path, "studies": studies, "truth": truth, "affine": affine}


def store(site: dict, image_id: str, label: np.ndarray, tag: str = "final") -> None:
    path = write_nifti(site["root"] / f"{image_id}_{tag}.nii.gz", label.astype(np.uint8), site["affine"])
    site["app"].datastore().save_label(image_id, str(path), tag, {})


def infer(site: dict, model: str, image_id: str, **params) -> tuple[np.ndarray, dict]:
    result = site["app"].infer({"model": model, "image": image_id, "device": "cpu", **params})
    label = nib.load(result["file"])
    np.testing.assert_allclose(label.affine, site["affine"], atol=1e-4)
    return np.asarray(label.dataobj), result["params"]


def centre(mask: np.ndarray) -> list[int]:
    return [int(v) for v in np.argwhere(mask)[len(np.argwhere(mask)) // 2]]


def test_deepgrow_clicks_fix_the_slice_from_the_stored_mask(site: dict) -> None:
    truth = site["truth"][..., 0]
    prior = truth.copy()
    prior[prior == 3] = 0  # the RV missed on every slice
    store(site, "stack", prior, tag="original")
    i, j = centre(truth[:, :, K] == 3)
    label, params = infer(site, "coopseg_clicks", "stack", label="rv", foreground=[[i, j, K]], background=[], slice=K)
    assert params["prior"] == "datastore label 'original'" and params["label_names"] == {"rv": 1}
    assert params["corrected"] == [{"frame": 0, "slice": K, "changed_voxels": int((truth[:, :, K] == 3).sum())}]
    np.testing.assert_array_equal(label[:, :, K], truth[:, :, K] == 3)  # Slicer imports this slice into "rv"
    others = [k for k in range(truth.shape[2]) if k != K]
    assert not label[:, :, others].any()  # the other slices keep the stored mask (no RV)
    store(site, "stack", truth, tag="final")  # a submitted label is the newer mask
    _, params = infer(site, "coopseg_clicks", "stack", label="rv", foreground=[[i, j, K]], background=[], slice=K)
    assert params["prior"] == "datastore label 'final'"


def test_scribbles_correct_the_selected_structure_of_slicers_label_map(site: dict) -> None:
    truth = site["truth"][..., 0]
    current = truth.copy()
    current[:, :, K][current[:, :, K] == 1] = 0  # the LV blood pool missed on slice K
    label_map = current.copy()
    rows = np.nonzero((truth[:, :, K] == 1).any(axis=1))[0]
    i, j = centre(truth[:, :, K] == 1)
    label_map[rows[1] : rows[-1], j, K] = 5  # a foreground scribble down the middle of the LV
    label_map[2:6, 2, K] = 4  # and a background scribble in a corner
    path = write_nifti(site["root"] / "scribbles.nii.gz", label_map.astype(np.uint8), site["affine"])
    label, params = infer(
        site, "coopseg_scribbles", "stack", label=str(path), label_info=LABEL_INFO, selected_label_name="lv", roi=[]
    )
    assert params["prior"] == "request label map" and params["label_names"] == {"lv": 1}
    np.testing.assert_array_equal(label[:, :, K], truth[:, :, K] == 1)
    others = [k for k in range(truth.shape[2]) if k != K]
    np.testing.assert_array_equal(label[:, :, others], current[:, :, others] == 1)
    # the whole mask on request: the myocardium and RV stay as they were
    label, _ = infer(
        site, "coopseg_scribbles", "stack", label=str(path), label_info=LABEL_INFO, selected_label_name="lv",
        result_labels="all",
    )  # fmt: skip
    np.testing.assert_array_equal(label[:, :, K], truth[:, :, K])


def test_per_label_clicks_remove_a_false_structure_and_return_the_whole_mask(site: dict) -> None:
    truth = site["truth"][..., 0]
    prior = truth.copy()
    prior[2:8, 2:8, K] = 3  # a false RV in a corner
    path = write_nifti(site["root"] / "current.nii.gz", prior.astype(np.uint8), site["affine"])
    label, params = infer(
        site, "coopseg_clicks", "stack", label=str(path), background=[[4, 4, K]], lv=[centre(truth == 1)]
    )
    assert params["prior"] == "request label file" and params["label_names"] == {"lv": 1, "myocardium": 2, "rv": 3}
    np.testing.assert_array_equal(label, truth)


def test_a_cine_correction_changes_its_frame_only(site: dict) -> None:
    truth = site["truth"]
    prior = truth.copy()
    prior[..., 2][prior[..., 2] == 3] = 0  # the RV missed in frame 2
    prior[..., 1][prior[..., 1] == 3] = 0  # and in frame 1, left as it is
    store(site, "cine", prior)
    i, j = centre(truth[:, :, K, 2] == 3)
    label, params = infer(site, "coopseg_clicks", "cine", rv=[[i, j, K]], frame=2)
    assert label.shape == truth.shape and params["corrected"][0]["frame"] == 2
    np.testing.assert_array_equal(label[:, :, K, 2], truth[:, :, K, 2])
    untouched = np.ones(truth.shape, dtype=bool)
    untouched[:, :, K, 2] = False
    np.testing.assert_array_equal(label[untouched], prior[untouched])
    label, _ = infer(site, "coopseg_clicks", "cine", rv=[[i, j, K, 1]])  # the frame as a fourth index
    np.testing.assert_array_equal(label[:, :, K, 1], truth[:, :, K, 1])


def test_bad_corrections_get_a_422_naming_the_cause_and_write_nothing(site: dict) -> None:
    truth = site["truth"][..., 0]
    store(site, "stack", truth)
    store(site, "cine", site["truth"])
    before = digest(site["studies"])
    empty_map = write_nifti(site["root"] / "no_scribble.nii.gz", truth.astype(np.uint8), site["affine"])
    unnamed = truth.copy()
    unnamed[0, 0, K] = 9
    unnamed_map = write_nifti(site["root"] / "unnamed.nii.gz", unnamed.astype(np.uint8), site["affine"])
    wrong_shape = write_nifti(site["root"] / "small.nii.gz", truth[:-1].astype(np.uint8), site["affine"])
    scribble = {"label_info": LABEL_INFO, "selected_label_name": "lv"}
    cases = [
        ("coopseg_clicks", "stack", {"rv": [[40, 3, K]]}, "outside the image"),
        ("coopseg_clicks", "stack", {"rv": [[3, 3, 9]]}, "outside the image"),
        ("coopseg_clicks", "stack", {"label": "rv", "foreground": [[3, -1, K]], "background": []}, "outside"),
        ("coopseg_clicks", "stack", {"aorta": [[3, 3, K]]}, "'aorta' is not a label"),
        ("coopseg_clicks", "stack", {"label": "aorta", "foreground": [[3, 3, K]], "background": []}, "not a label"),
        ("coopseg_clicks", "stack", {"label": "rv", "foreground": [], "background": []}, "no clicks"),
        ("coopseg_clicks", "stack", {"rv": [[3, 3]]}, "is not a point"),
        ("coopseg_clicks", "stack", {"rv": [[3, 3, K]], "slice": 0}, "not on the request's slice 0"),
        ("coopseg_clicks", "bare", {"rv": [[3, 3, K]]}, "no prior mask"),
        ("coopseg_clicks", "cine", {"rv": [[3, 3, K]]}, "give the 'frame'"),
        ("coopseg_clicks", "stack", {"rv": [[3, 3, K]], "label": str(wrong_shape)}, "does not match|has shape"),
        ("coopseg_scribbles", "stack", {"label": str(empty_map), **scribble}, "empty scribble"),
        ("coopseg_scribbles", "stack", {"label": str(unnamed_map), **scribble}, "values [9]"),
        ("coopseg_scribbles", "stack", {"label": str(empty_map), "selected_label_name": "lv"}, "label_info"),
        (
            "coopseg_scribbles",
            "stack",
            {**scribble, "label": str(empty_map), "label_info": [*LABEL_INFO[:3], {"name": "aorta", "id": 1}]},
            "aorta",
        ),  # noqa: E501
    ]
    for model, image, params, message in cases:
        with pytest.raises(Exception) as err:
            site["app"].infer({"model": model, "image": image, "device": "cpu", **params})
        assert getattr(err.value, "status_code", None) == 422, (params, err.value)
        assert any(m in err.value.detail for m in message.split("|")), (params, err.value.detail)
    assert digest(site["studies"]) == before


def test_batch_inference_stores_the_masks_that_clicks_correct(site: dict) -> None:
    """``POST /batch/infer/coopseg`` (MONAI Label's batch inference) stores every automatic mask as ``original``."""
    with pytest.raises(Exception, match="no prior mask"):
        site["app"].infer({"model": "coopseg_clicks", "image": "bare", "device": "cpu", "rv": [[3, 3, K]]})
    site["app"].batch_infer({"model": "coopseg", "images": "all", "device": "cpu", "multi_gpu": False})
    _, params = infer(site, "coopseg_clicks", "bare", rv=[[3, 3, K]])
    assert params["prior"] == "datastore label 'original'"


def test_each_kind_refines_with_the_settings_of_the_bundles_inference_json(app_modules, tmp_path: Path) -> None:
    import json

    bundle = make_bundle_copy(tmp_path)
    oracle.install(bundle)
    config_file = bundle / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    assert config["interactive_refinement"]["scribbles"]["method"] == "shape"  # the shipped choice
    config["interactive_refinement"] = {"scribbles": {"method": "graphcut", "band": 1}, "clicks": {"evidence": 2.5}}
    config_file.write_text(json.dumps(config))
    studies = tmp_path / "studies"
    studies.mkdir()
    conf = {"bundle_path": str(bundle), "model_dir": str(tmp_path / "models"), "skip_scoring": "true"}
    app = app_modules.CoopSegApp(str(APP_DIR), str(studies), conf)
    scribbles = app._infers["coopseg_scribbles"].refinement_settings()
    clicks = app._infers["coopseg_clicks"].refinement_settings()
    assert (scribbles.method, scribbles.band) == ("graphcut", 1)
    assert (clicks.method, clicks.evidence) == ("geodesic", 2.5)
    # what the users read about each model follows the settings it is served with
    assert "graph cut" in app._infers["coopseg_scribbles"].description
    assert "shape prior" not in app._infers["coopseg_scribbles"].description


def test_every_refinement_method_of_the_bundle_is_described_to_users(app_modules) -> None:
    from lib.infers import interactive

    from scripts.interactive.refinement import METHODS

    assert set(interactive.METHOD_DESCRIPTIONS) == set(METHODS)


def test_learned_correction_is_loaded_at_start_or_named_when_missing(app_modules, tmp_path: Path) -> None:
    import json

    import torch

    from scripts.interactive.correction_network import CorrectionNet

    bundle = make_bundle_copy(tmp_path)
    oracle.install(bundle)
    config_file = bundle / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    config["interactive_refinement"]["scribbles"]["learned"] = True
    config_file.write_text(json.dumps(config))
    studies = tmp_path / "studies"
    studies.mkdir()
    image, truth, affine = oracle.coded_cine()
    write_nifti(studies / "stack.nii.gz", np.ascontiguousarray(image[..., 0]), affine)
    conf = {"bundle_path": str(bundle), "model_dir": str(tmp_path / "models"), "skip_scoring": "true"}
    with pytest.raises(FileNotFoundError, match=r"correction_net\.pt.*correction_training"):
        app_modules.CoopSegApp(str(APP_DIR), str(studies), conf)

    torch.save(CorrectionNet().state_dict(), bundle / "models" / "correction_net.pt")
    app = app_modules.CoopSegApp(str(APP_DIR), str(studies), conf)
    assert type(app._infers["coopseg_scribbles"]._correction_network).__name__ == "CorrectionNet"  # the bundle's
    assert app._infers["coopseg_clicks"]._correction_network is None  # clicks keep their own settings
    site = {"app": app, "root": tmp_path, "affine": affine}
    labels = truth[..., 0].astype(np.uint8)
    label_map = labels.copy()
    label_map[labels == 1] = 0  # the LV missing on every slice
    i, j = centre(labels[:, :, K] == 1)[:2]
    label_map[i - 1 : i + 2, j - 1 : j + 2, K] = 5  # a foreground scribble of the LV
    path = write_nifti(tmp_path / "scribbles.nii.gz", label_map, affine)
    mask, params = infer(site, "coopseg_scribbles", "stack", label=str(path), label_info=LABEL_INFO,
                         selected_label_name="lv")  # fmt: skip
    assert [c["slice"] for c in params["corrected"]] == [K]
    assert mask[i, j, K] == 1 and not mask[..., K + 1].any()  # the scribbled voxels are LV; other slices unchanged
