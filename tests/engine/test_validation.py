"""Validation is deployment: train.json's validation, the test-set evaluation and the inference workflow share one
window (inference.json's preprocessing, inferer and label post-processing), and training patches cover whole slices.

The distractor test is the one that tells a centre-crop validation from a deployment one: a myocardium-like ring far
from the heart, outside any centre window, which a network painting rings as myocardium (the oracle) segments there.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from app.oracle import INTENSITY, IntensityBandNet
from monai.bundle import ConfigParser
from monai.transforms import Compose, RandCropByPosNegLabeld, Spacingd

from conftest import BUNDLE_ROOT
from scripts.data.phantom import generate_subject
from scripts.data.slices import VolumeSliceDataset
from scripts.inference.inferer import CoopSegInferer

TRAIN = BUNDLE_ROOT / "configs" / "train.json"
INFERENCE = BUNDLE_ROOT / "configs" / "inference.json"
SPACING_MM = 1.36719


def _train_parser(tmp_path: Path, **overrides: object) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(TRAIN))
    parser.update({"bundle_root": str(BUNDLE_ROOT), "ckpt_dir": str(tmp_path / "models"),
                   "output_dir": str(tmp_path / "logs"), "num_workers": 0, **overrides})  # fmt: skip
    return parser


def _inference_parser() -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(INFERENCE))
    parser["bundle_root"] = str(BUNDLE_ROOT)
    return parser


def _spacing(transforms: Compose) -> list[float]:
    (spacing,) = [t for t in transforms.transforms if isinstance(t, Spacingd)]
    return [float(v) for v in spacing.spacing_transform.pixdim]


def test_validation_uses_the_inference_workflows_window_and_inferer(tmp_path: Path) -> None:
    train, inference = _train_parser(tmp_path), _inference_parser()
    validate_pre = train.get_parsed_content("validate#preprocessing")
    deployed_pre = inference.get_parsed_content("preprocessing")
    assert _spacing(validate_pre) == _spacing(deployed_pre) == [float(v) for v in inference["pixdim"]]
    cropping = ("Crop", "Pad", "Resize")
    assert not [type(t).__name__ for t in validate_pre.transforms if type(t).__name__.startswith(cropping)]
    validate_inferer, deployed_inferer = train.get_parsed_content("validate#inferer"), inference.get_parsed_content(
        "inferer"
    )
    assert type(validate_inferer) is type(deployed_inferer) is CoopSegInferer
    for name in ("divisor", "spatial_dim", "sw_batch_size", "fast", "retain_cpu_memory"):
        assert getattr(validate_inferer, name) == getattr(deployed_inferer, name), name
    assert validate_inferer.refine  # validation scores FTN and FTN + STN from one pass
    # training, validation and deployment move together when a run asks for another pixel size
    coarse = _train_parser(tmp_path, pixdim=[2.0, 2.0, -1])
    volume_pre = Compose(coarse.get_parsed_content("volume_preprocessing"))
    assert _spacing(volume_pre) == _spacing(coarse.get_parsed_content("validate#preprocessing")) == [2.0, 2.0, -1.0]


def test_training_patches_cover_the_whole_slice(tmp_path: Path) -> None:
    subject = generate_subject(np.random.default_rng(3), spacing_range=(2.6, 2.6), n_slices_range=(3, 3))
    image, label, affine = subject["ED"]  # a whole slice of 200-280 mm, about 180 px at the bundle's spacing
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "image.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "label.nii.gz")
    data = [{"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "label.nii.gz")}]

    def foreground_fractions(sampling: str) -> list[float]:
        parser = _train_parser(tmp_path, sampling=sampling, crop_size=48)
        augmentation = parser.get_parsed_content("train#slice_augmentation")
        dataset = VolumeSliceDataset(
            data, Compose(parser.get_parsed_content("volume_preprocessing")),
            Compose(augmentation, map_items=2), progress=False,
        )  # fmt: skip
        dataset.set_random_state(seed=0)
        samples = [dataset[i % len(dataset)] for i in range(40)]
        assert all(s["image"].shape[-2:] == s["image_orig"].shape[-2:] == (48, 48) for s in samples)
        return [float((s["label"] > 0).float().mean()) for s in samples]

    whole = foreground_fractions("whole_slice")
    centre = foreground_fractions("centre")
    assert min(centre) > 0.0  # every centre window holds the heart
    assert sum(f == 0.0 for f in whole) >= 4  # background patches: the network learns what is not a heart
    assert sum(f > 0.0 for f in whole) >= 10  # and patches on the heart
    parser = _train_parser(tmp_path)
    assert any(isinstance(t, RandCropByPosNegLabeld) for t in parser.get_parsed_content("train#slice_augmentation"))


def _distractor_volume(tmp_path: Path) -> tuple[dict[str, str], np.ndarray, np.ndarray]:
    """A 160 x 160 x 3 stack at the bundle's spacing: LV disc ringed by myocardium and an RV disc in the centre, and a
    myocardium-intensity ring in a corner, 60 mm from the heart and outside any centre window of 96 px; label 0
    there. Returns the datalist entry, the label and the oracle's expected mask."""
    ii, jj = np.meshgrid(np.arange(160), np.arange(160), indexing="ij")
    plane = np.zeros((160, 160), np.uint8)
    plane[np.hypot(ii - 80, jj - 108) <= 10] = 3
    plane[np.hypot(ii - 80, jj - 74) <= 18] = 2
    plane[np.hypot(ii - 80, jj - 74) <= 14] = 1
    distractor = (np.hypot(ii - 16, jj - 16) <= 8) & (np.hypot(ii - 16, jj - 16) > 4)
    label = np.repeat(plane[..., None], 3, axis=2)
    seen = plane.copy()
    seen[distractor] = 2
    lut = np.array([INTENSITY[c] for c in range(4)], np.float32)
    image = np.repeat(lut[seen][..., None], 3, axis=2)
    affine = np.diag([SPACING_MM, SPACING_MM, 8.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "ring_img.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "ring_seg.nii.gz")
    entry = {"image": str(tmp_path / "ring_img.nii.gz"), "label": str(tmp_path / "ring_seg.nii.gz")}
    return entry, label, np.repeat(seen[..., None], 3, axis=2)


def test_validation_sees_a_distractor_far_from_the_heart(tmp_path: Path) -> None:
    entry, label, expected = _distractor_volume(tmp_path)
    parser = _train_parser(tmp_path)
    parser["datalists"] = {"training": [entry], "validation": [entry]}
    parser["network"] = IntensityBandNet().eval()
    parser["validate"]["rank0_handlers"] = []
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    metrics = evaluator.state.metrics
    myo_dice = float(2 * (label == 2).sum() / ((label == 2).sum() + (expected == 2).sum()))
    assert myo_dice < 0.9  # the ring counts against the mask, as it would in the inference workflow's output
    assert metrics["val_mean_dice_stn"] == pytest.approx((1.0 + myo_dice + 1.0) / 3, abs=1e-4)
    assert metrics["val_mean_dice_ftn"] == pytest.approx(metrics["val_mean_dice_stn"], abs=1e-4)
    # the largest-component clean-up removes the ring: FTN + STN + clean-up scores as if it were not there
    assert metrics["val_mean_dice_post"] == pytest.approx(1.0)
    # the deployed output (model selection, per-class scores) is whatever inference.json's clean-up switches make it
    deployed_myo = 1.0 if json.loads(INFERENCE.read_text())["keep_largest_component"] else myo_dice
    assert metrics["val_dice_myocardium"] == pytest.approx(deployed_myo, abs=1e-4)
    assert metrics["val_dice_lv"] == pytest.approx(1.0) and metrics["val_dice_rv"] == pytest.approx(1.0)
    assert metrics["val_mean_dice"] == pytest.approx((2.0 + deployed_myo) / 3, abs=1e-4)


def test_validation_output_keys_are_the_deployments_label_codes(tmp_path: Path) -> None:
    entry, label, expected = _distractor_volume(tmp_path)
    parser = _train_parser(tmp_path)
    parser["datalists"] = {"training": [entry], "validation": [entry]}
    item = parser.get_parsed_content("validate#preprocessing")(entry)
    inferer = parser.get_parsed_content("validate#inferer")
    outputs = inferer.predict(item["image"][None], IntensityBandNet().eval(), maps=("prob_ftn",))
    item["pred"], item["pred_ftn"] = outputs["pred"][0], outputs["prob_ftn"][0]
    post = parser.get_parsed_content("validate#postprocessing")
    result = post(item)
    for key in ("pred", "pred_ftn", "pred_stn", "pred_post", "label"):
        assert tuple(result[key].shape) == (4, *label.shape), key  # one-hot on the input grid
    np.testing.assert_array_equal(torch.as_tensor(result["pred_stn"]).argmax(0).numpy(), expected)
    np.testing.assert_array_equal(torch.as_tensor(result["pred_post"]).argmax(0).numpy(), label)
