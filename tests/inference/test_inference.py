"""The inference workflow (bundle/configs/inference.json) as users run it, on phantom volumes in every input format.

A temporary copy of the bundle gets freshly initialised weights (the values of the masks do not matter here; the
geometry, the value set and agreement with a direct computation through the network do).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from conftest import BUNDLE_ROOT, REPO_ROOT
from helpers import make_bundle_copy, phantom_volume, write_dicom_series, write_nifti
from scripts.inference.inputs import find_inputs
from scripts.model.networks import CoopSegNet
from scripts.volumes import VolumeError
from tools.bundle_copy import inference_workflow

INFER_CONFIG = BUNDLE_ROOT / "configs" / "inference.json"
TRAIN_CONFIG = BUNDLE_ROOT / "configs" / "train.json"


def run_inference(bundle: Path, dataset_dir: Path, output_dir: Path, **overrides):
    """The bundle's inference workflow in-process (``ConfigWorkflow``, as ``monai.bundle run`` does)."""
    workflow = inference_workflow(bundle, dataset_dir, output_dir, **overrides)
    workflow.initialize()
    missing = workflow.check_properties()
    assert not missing, f"inference properties missing: {missing}"
    workflow.run()
    summary = workflow.parser.get_parsed_content("evaluator").state.summary
    workflow.finalize()
    return summary


def sitk_geometry(path: Path) -> tuple:
    """(size, origin, spacing, direction) as ITK reads a file or a DICOM series folder."""
    import SimpleITK as sitk

    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        img = reader.Execute()
    else:
        img = sitk.ReadImage(str(path))
    return img.GetSize(), np.array(img.GetOrigin()), np.array(img.GetSpacing()), np.array(img.GetDirection())


def assert_same_geometry(reference: Path, output: Path, atol: float = 1e-3) -> None:
    size_r, origin_r, spacing_r, dir_r = sitk_geometry(reference)
    size_o, origin_o, spacing_o, dir_o = sitk_geometry(output)
    assert size_o == size_r
    np.testing.assert_allclose(origin_o, origin_r, atol=atol)
    np.testing.assert_allclose(spacing_o, spacing_r, atol=atol)
    np.testing.assert_allclose(dir_o, dir_r, atol=atol)


# fixtures --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle_copy(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def nifti_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One oblique phantom volume at 2.6 mm (resampled to 1.36719 mm by the workflow; not a multiple of 16)."""
    folder = tmp_path_factory.mktemp("nifti")
    image, label, affine = phantom_volume(seed=11)
    write_nifti(folder / "case1.nii.gz", image, affine)
    write_nifti(folder / "case1_gt.nii.gz", label, affine)  # skipped by the input scan
    return folder


# tests -----------------------------------------------------------------------------------------------------------
def test_exact_command_writes_label_on_the_input_grid(bundle: Path, nifti_case: Path, tmp_path: Path) -> None:
    """``python -m monai.bundle run --config_file <bundle>/configs/inference.json --dataset_dir .. --output_dir ..``."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": ""}  # the bundle's own scripts, as a user's shell has them
    args = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(bundle / "configs" / "inference.json"),
        "--dataset_dir",
        str(nifti_case),
        "--output_dir",
        str(out),
    ]
    result = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["case1_seg.nii.gz", "function.csv", "function.md"]
    source, written = nib.load(nifti_case / "case1.nii.gz"), nib.load(out / "case1_seg.nii.gz")
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    assert written.get_data_dtype() == np.uint8
    values = set(np.unique(np.asarray(written.dataobj)).tolist())
    assert values <= {0, 1, 2, 3} and len(values) > 1
    assert "segmented 1 volume(s)" in result.stdout + result.stderr


def _direct_prediction(net: CoopSegNet, image: np.ndarray, refine: bool) -> tuple[np.ndarray, np.ndarray]:
    """Labels and entropy computed straight through the network for a volume already at 1.36719 mm, 16-divisible."""
    lo, hi = np.percentile(image, [2, 98])
    x = torch.from_numpy(np.clip((image - lo) / (hi - lo), 0, 1)).float().permute(2, 0, 1)[:, None]  # D, 1, H, W
    with torch.no_grad():
        logits = net.segment(x)
        logits = net.refine_logits(logits) if refine else logits
        prob = torch.softmax(logits, dim=1)
    entropy = -(prob * torch.log(prob.clamp_min(1e-12))).sum(1) / np.log(4)
    return prob.argmax(1).permute(1, 2, 0).numpy(), entropy.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("refine", [True, False])
def test_output_matches_the_network_directly(bundle: Path, tmp_path: Path, refine: bool) -> None:
    """At the target spacing and a 16-divisible size the workflow is the network's argmax, slice by slice (with
    the largest-component clean-up switched off: it is the one step that changes the argmax on purpose)."""
    image, _, affine = phantom_volume(seed=5, spacing=1.36719, n_slices=3, size=(96, 112))
    (tmp_path / "in").mkdir()
    write_nifti(tmp_path / "in" / "direct.nii.gz", image, affine)
    run_inference(
        bundle, tmp_path / "in", tmp_path / "out", refine=refine, save_uncertainty=True, keep_largest_component=False
    )
    net = CoopSegNet().eval()
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    expected, entropy = _direct_prediction(net, image, refine)
    name = "direct_seg.nii.gz" if refine else "direct_seg_ftn.nii.gz"
    got = np.asarray(nib.load(tmp_path / "out" / name).dataobj)
    assert got.shape == image.shape
    assert (got == expected).mean() > 0.999
    uncertainty = nib.load(tmp_path / "out" / "direct_uncertainty.nii.gz").get_fdata()
    np.testing.assert_allclose(uncertainty, entropy, atol=2e-3)


def test_maps_and_ftn_only_option(bundle: Path, nifti_case: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_inference(bundle, nifti_case, out, save_uncertainty=True, save_disagreement=True)
    run_inference(bundle, nifti_case, out, refine=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "case1_disagreement.nii.gz",
        "case1_seg.nii.gz",
        "case1_seg_ftn.nii.gz",
        "case1_uncertainty.nii.gz",
        "function.csv",
        "function.md",
    ]
    source = nib.load(nifti_case / "case1.nii.gz")
    for name in ("case1_uncertainty.nii.gz", "case1_disagreement.nii.gz"):
        m = nib.load(out / name)
        assert m.shape == source.shape and m.get_data_dtype() == np.float32
        np.testing.assert_allclose(m.affine, source.affine, atol=1e-6)
        values = m.get_fdata()
        assert values.min() >= -1e-6 and values.max() <= 1 + 1e-6 and values.max() > 0.01
    refined = np.asarray(nib.load(out / "case1_seg.nii.gz").dataobj)
    ftn = np.asarray(nib.load(out / "case1_seg_ftn.nii.gz").dataobj)
    disagreement = nib.load(out / "case1_disagreement.nii.gz").get_fdata()
    # where the two labels differ the networks must disagree, and more than where they agree
    assert (refined != ftn).any()
    assert disagreement[refined != ftn].mean() > disagreement[refined == ftn].mean()


def test_4d_cine_is_segmented_frame_by_frame(bundle: Path, tmp_path: Path) -> None:
    ed, _, affine = phantom_volume(seed=8, n_slices=4, frame="ED")
    es, _, _ = phantom_volume(seed=8, n_slices=4, frame="ES")
    (tmp_path / "cine").mkdir()
    (tmp_path / "frames").mkdir()
    write_nifti(tmp_path / "cine" / "cine.nii.gz", np.stack([ed, es], axis=-1), affine)
    write_nifti(tmp_path / "frames" / "ed.nii.gz", ed, affine)
    write_nifti(tmp_path / "frames" / "es.nii.gz", es, affine)
    run_inference(bundle, tmp_path / "cine", tmp_path / "out")
    run_inference(bundle, tmp_path / "frames", tmp_path / "out")
    cine = nib.load(tmp_path / "out" / "cine_seg.nii.gz")
    assert cine.shape == (*ed.shape, 2)
    np.testing.assert_allclose(cine.affine, affine, atol=1e-5)
    labels = np.asarray(cine.dataobj)
    for t, name in enumerate(("ed", "es")):
        alone = np.asarray(nib.load(tmp_path / "out" / f"{name}_seg.nii.gz").dataobj)
        assert (labels[..., t] == alone).mean() > 0.999, f"frame {t} differs from segmenting it alone"


def test_nrrd_and_dicom_series_inputs(bundle: Path, nifti_case: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    inputs = tmp_path / "in"
    inputs.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(nifti_case / "case1.nii.gz")), str(inputs / "nrrdcase.nrrd"))
    image, _, affine = phantom_volume(seed=12, n_slices=4)
    write_dicom_series(inputs / "dicomcase", image, affine)
    assert [Path(e["image"]).name for e in find_inputs(str(inputs))] == ["dicomcase", "nrrdcase.nrrd"]
    summary = run_inference(bundle, inputs, tmp_path / "out")
    assert len(summary) == 2
    assert_same_geometry(inputs / "nrrdcase.nrrd", tmp_path / "out" / "nrrdcase_seg.nii.gz")
    assert_same_geometry(inputs / "dicomcase", tmp_path / "out" / "dicomcase_seg.nii.gz")
    # the NRRD holds the NIfTI's voxels: same segmentation
    nrrd_seg = np.asarray(nib.load(tmp_path / "out" / "nrrdcase_seg.nii.gz").dataobj)
    run_inference(bundle, nifti_case, tmp_path / "out_nifti")
    nifti_seg = np.asarray(nib.load(tmp_path / "out_nifti" / "case1_seg.nii.gz").dataobj)
    assert (nrrd_seg == nifti_seg).mean() > 0.999
    # NRRD output on request, geometry preserved as well
    run_inference(bundle, inputs, tmp_path / "out_nrrd", images=[str(inputs / "nrrdcase.nrrd")], output_ext=".nrrd")
    assert_same_geometry(inputs / "nrrdcase.nrrd", tmp_path / "out_nrrd" / "nrrdcase_seg.nrrd")


def test_torchscript_model_is_used_when_model_pt_is_absent(bundle: Path, nifti_case: Path, tmp_path: Path) -> None:
    ts_bundle = make_bundle_copy(tmp_path / "ts", seed=0, torchscript=True)
    assert not (ts_bundle / "models" / "model.pt").exists() and (ts_bundle / "models" / "model.ts").exists()
    run_inference(ts_bundle, nifti_case, tmp_path / "out_ts")
    run_inference(bundle, nifti_case, tmp_path / "out_pt")  # same seed-0 weights as a state dict
    ts = np.asarray(nib.load(tmp_path / "out_ts" / "case1_seg.nii.gz").dataobj)
    pt = np.asarray(nib.load(tmp_path / "out_pt" / "case1_seg.nii.gz").dataobj)
    assert (ts == pt).mean() > 0.999
    (ts_bundle / "models" / "model.ts").unlink()
    with pytest.raises(Exception) as err:
        run_inference(ts_bundle, nifti_case, tmp_path / "out_none")
    assert _chain_mentions(err.value, "no trained weights")


def test_bad_inputs_are_named(bundle: Path, nifti_case: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VolumeError, match="holds no volumes"):
        find_inputs(str(empty))
    image, _, affine = phantom_volume(seed=3, n_slices=3)
    cases = {
        "flat.nii.gz": (image[:, :, 0], "is a 2D image"),
        "nan.nii.gz": (np.full_like(image, np.nan), "are NaN"),
    }
    for name, (array, message) in cases.items():
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        write_nifti(folder / name, array, affine)
        with pytest.raises(Exception) as err:
            run_inference(bundle, folder, tmp_path / "never")
        assert _chain_mentions(err.value, message) and _chain_mentions(err.value, name), str(err.value)
    assert not (tmp_path / "never").exists()
    # an existing output is kept, not overwritten
    out = tmp_path / "out"
    run_inference(bundle, nifti_case, out)
    before = (out / "case1_seg.nii.gz").read_bytes()
    with pytest.raises(Exception) as err:
        run_inference(bundle, nifti_case, out, refine=True, save_uncertainty=True)
    assert _chain_mentions(err.value, "exists and is kept")
    assert (out / "case1_seg.nii.gz").read_bytes() == before
    assert not any(p.name.startswith(".") for p in out.iterdir()), "a temporary file was left behind"
    run_inference(bundle, nifti_case, out, overwrite=True)


def _chain_mentions(error: BaseException, text: str) -> bool:
    while error is not None:
        if text in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def test_inference_config_matches_training() -> None:
    """inference.json stands alone, so its network and preprocessing must equal train.json's."""
    infer, train = ConfigParser(), ConfigParser()
    infer.read_config(str(INFER_CONFIG))
    train.read_config(str(TRAIN_CONFIG))
    for key in ("num_classes", "width", "temperature", "pixdim"):
        assert infer.get_parsed_content(key) == train.get_parsed_content(key), key
    assert infer.config["network_def"] == train.config["network_def"]
    train_pre = {t["_target_"]: t for t in train.config["volume_preprocessing"]}
    for target in ("ScaleIntensityRangePercentilesd", "Spacingd"):
        i = _index_of(infer.config["preprocessing"]["transforms"], target)
        j = _index_of(train.config["volume_preprocessing"], target)
        for arg in ("lower", "upper", "b_min", "b_max", "clip", "pixdim"):
            if arg in train_pre[target]:
                got = infer.get_parsed_content(f"preprocessing#transforms#{i}#{arg}")
                assert got == train.get_parsed_content(f"volume_preprocessing#{j}#{arg}"), (target, arg)


def _index_of(transforms: list[dict], target: str) -> int:
    """Position of the transform whose ``_target_`` is ``target`` in a config list."""
    return next(i for i, t in enumerate(transforms) if t["_target_"] == target)


def test_metadata_and_verify_net_in_out_with_inference_config() -> None:
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"),
        config_file=str(INFER_CONFIG),
        n=4,
        device="cpu",
    )
    assert json.loads(INFER_CONFIG.read_text())["run"] == ["$@evaluator.run()"]


def test_fast_path_matches_the_network_and_follows_weight_changes() -> None:
    from scripts.inference.inferer import CoopSegInferer

    torch.manual_seed(3)
    net = CoopSegNet(width=4).eval()
    x = torch.rand(1, 1, 40, 36, 3)  # B, F, H, W, D; padded to 48 x 48 inside
    fast, plain = CoopSegInferer(fast=True), CoopSegInferer(fast=False)
    with torch.no_grad():
        reference = plain.predict(x, net, maps=("uncertainty", "disagreement"))
        got = fast.predict(x, net, maps=("uncertainty", "disagreement"))
        for key in reference:
            torch.testing.assert_close(got[key], reference[key], atol=1e-4, rtol=1e-4)
        assert len(fast._fused) == 1
        fused = fast._runnable(net)[0]
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        assert fast._runnable(net)[0] is fused  # cached while the weights are unchanged
        net.load_state_dict(CoopSegNet(width=4).state_dict())  # new weights, same module: the copy is rebuilt
        torch.testing.assert_close(fast(x, net), plain(x, net), atol=1e-4, rtol=1e-4)
        assert fast._runnable(net)[0] is not fused
        net.train()
        assert fast._runnable(net)[0] is net  # BatchNorm in training mode must not be folded
