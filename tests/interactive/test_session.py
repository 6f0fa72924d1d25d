"""One frame on its own grid: the mapping to the network grid, the automatic mask as the bundle's workflow gives it,
and a refinement that changes only what the correction reaches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Invertd
from scipy import ndimage

from conftest import BUNDLE_ROOT
from helpers import phantom_volume, write_nifti
from scripts.interactive.grid import SliceGrid
from scripts.interactive.refinement import RefinementSettings
from scripts.interactive.session import FrameRefiner, label_cleanup
from scripts.model.networks import CoopSegNet


def scaled_affine(spacing: float, origin: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    return np.array([[spacing, 0, 0, origin[0]], [0, spacing, 0, origin[1]], [0, 0, 8.0, 0], [0, 0, 0, 1]], dtype=float)


def test_grid_maps_labels_points_and_probabilities() -> None:
    native = scaled_affine(2.0)
    network = scaled_affine(1.0, origin=(-0.4, -0.4))  # in-plane resampling to half the spacing
    grid = SliceGrid(native, network, (20, 16), (40, 32))
    labels = np.zeros((20, 16), dtype=np.int16)
    labels[5:12, 4:9] = 2
    on_network = grid.labels_to_network(labels)
    assert on_network.shape == (40, 32) and (on_network == 2).sum() == pytest.approx(4 * 35, rel=0.15)
    np.testing.assert_array_equal(grid.labels_to_native(on_network), labels)
    np.testing.assert_array_equal(grid.points_to_network(np.array([[5, 4], [0, 0]])), [[10, 8], [0, 0]])
    probs = np.stack([on_network == c for c in range(3)]).astype(np.float32)
    np.testing.assert_array_equal(grid.probs_to_native(probs).argmax(axis=0), labels)
    # a native grid finer than the network's: a single marked pixel still reaches the network grid
    fine = SliceGrid(scaled_affine(0.5), scaled_affine(1.0, origin=(0.25, 0.25)), (40, 40), (20, 20))
    seeds = np.full((40, 40), -1, dtype=np.int16)
    seeds[17, 23] = 3
    assert (fine.seeds_to_network(seeds) == 3).sum() >= 1
    with pytest.raises(ValueError, match="slices"):
        SliceGrid(native, scaled_affine(1.0) @ np.diag([1, 1, 2.0, 1]), (20, 16), (40, 32))


@pytest.fixture(scope="module")
def frame(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A phantom stack at 2.6 mm (resampled by the preprocessing), fresh weights, the bundle's transforms."""
    root = tmp_path_factory.mktemp("frame")
    image, truth, affine = phantom_volume(seed=3, n_slices=3)
    path = write_nifti(root / "case.nii.gz", image, affine)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "inference.json"))
    parser["bundle_root"] = str(BUNDLE_ROOT)
    preprocessing = parser.get_parsed_content("preprocessing")
    torch.manual_seed(0)
    network = CoopSegNet().eval()
    data = preprocessing({"image": str(path)})
    return {"data": data, "truth": truth, "network": network, "preprocessing": preprocessing, "parser": parser}


def test_automatic_mask_is_the_workflows_mask(frame: dict) -> None:
    data, truth = frame["data"], frame["truth"]
    refiner = FrameRefiner.from_preprocessed(data["image"], 0, truth.shape, frame["network"])
    assert refiner.image.shape[:2] != truth.shape[:2]  # resampled: the mapping is exercised
    ours = np.stack([refiner.automatic_mask(k) for k in range(truth.shape[2])], axis=-1)
    inferer = frame["parser"].get_parsed_content("inferer")
    with torch.no_grad():
        data = {**data, "pred": inferer(data["image"][None], frame["network"])[0]}
    inverted = Invertd(keys="pred", transform=frame["preprocessing"], orig_keys="image", nearest_interp=False)(data)
    workflow = inverted["pred"].argmax(dim=0).numpy()
    assert ours.shape == workflow.shape == truth.shape
    assert (ours == workflow).mean() > 0.999


def test_automatic_volume_is_the_delivered_mask(frame: dict) -> None:
    """With the bundle's label clean-up (largest connected component per structure), the mask the workflow delivers:
    the mask a user starts correcting."""
    data, truth = frame["data"], frame["truth"]
    parser = frame["parser"]
    refiner = FrameRefiner.from_preprocessed(data["image"], 0, truth.shape, frame["network"])
    cleaned = refiner.automatic_volume(label_cleanup(parser.get_parsed_content("label_postprocessing")))
    inferer = parser.get_parsed_content("inferer")
    with torch.no_grad():
        data = {**data, "pred": inferer(data["image"][None], frame["network"])[0]}
    delivered = parser.get_parsed_content("label_postprocessing")
    for transform in delivered:
        data = transform(data)
    delivered = data["pred"][0].numpy()
    raw = refiner.automatic_volume()
    assert cleaned.shape == delivered.shape == truth.shape
    assert (raw != delivered).sum() > 100  # the untrained network's scattered labels: the clean-up matters here
    assert (cleaned == delivered).mean() > 0.999
    with pytest.raises(ValueError, match="FrameArgmaxd"):
        label_cleanup([])


def test_refine_changes_only_what_the_correction_reaches(frame: dict) -> None:
    data, truth = frame["data"], frame["truth"]
    geodesic = RefinementSettings(method="geodesic")
    refiner = FrameRefiner.from_preprocessed(data["image"], 0, truth.shape, frame["network"], settings=geodesic)
    k = 1
    prior = truth[..., k].copy()
    seeds = np.full(prior.shape, -1, dtype=np.int16)
    np.testing.assert_array_equal(refiner.refine(k, prior, seeds), prior)
    lv = truth[..., k] == 1
    centre = tuple(np.argwhere(lv)[lv.sum() // 2])
    prior[lv] = 0  # the LV blood pool missed
    seeds[centre] = 1
    out = refiner.refine(k, prior, seeds)
    assert out[centre] == 1
    assert 2 * ((out == 1) & lv).sum() / ((out == 1).sum() + lv.sum()) > 0.9  # bright, ringed by dark myocardium
    np.testing.assert_array_equal(out[~lv], prior[~lv])
    # with the shape prior (here an untrained STN, which reconstructs nothing sensible) pixels change only near the
    # corrected region: within shape_radius network pixels (about 5 of these 2.6 mm pixels), plus resampling
    shape = FrameRefiner.from_preprocessed(data["image"], 0, truth.shape, frame["network"])
    out = shape.refine(k, prior, seeds)
    far = ndimage.distance_transform_edt(~lv) > 8
    np.testing.assert_array_equal(out[far], prior[far])
    with pytest.raises(ValueError, match="slice"):
        refiner.refine(k, prior[:-1], seeds)


def test_excluded_marks_take_the_current_or_next_most_likely_label(frame: dict) -> None:
    data, truth = frame["data"], frame["truth"]
    refiner = FrameRefiner.from_preprocessed(data["image"], 0, truth.shape, frame["network"])
    prior = truth[..., 1]
    pixels = np.array([np.argwhere(prior == 2)[0], np.argwhere(prior == 3)[0]])
    labels = refiner.resolve_excluded(1, pixels, 3, prior)
    assert labels[0] == 2 and labels[1] != 3
