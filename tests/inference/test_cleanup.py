"""The label clean-up of the inference workflow: largest connected component per structure and hole filling of the
blood pools, frame by frame, each an ``inference.json`` switch read by validation and evaluation too."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import FillHoles, KeepLargestConnectedComponent

from conftest import BUNDLE_ROOT
from scripts.inference.deployment import CLEANUP_SWITCHES, DeploymentConfig, config_value
from scripts.inference.outputs import PerFramed

INFERENCE = BUNDLE_ROOT / "configs" / "inference.json"


def _frames() -> np.ndarray:
    """``2, 40, 40, 3`` label codes: a heart in both frames; frame 0 has a hole in its LV on slice 1, frame 1 a
    myocardium blob far from the heart on slice 2."""
    ii, jj = np.meshgrid(np.arange(40), np.arange(40), indexing="ij")
    plane = np.zeros((40, 40), np.uint8)
    plane[np.hypot(ii - 20, jj - 14) <= 9] = 2
    plane[np.hypot(ii - 20, jj - 14) <= 6] = 1
    plane[np.hypot(ii - 20, jj - 30) <= 5] = 3
    frames = np.repeat(np.repeat(plane[None, :, :, None], 3, axis=3), 2, axis=0)
    frames[0, 19:22, 13:16, 1] = 0  # a hole in the LV blood pool
    frames[1, 1:4, 35:38, 2] = 2  # a blob far from the heart
    return frames


def test_per_frame_cleanup_touches_each_frame_alone() -> None:
    frames = _frames()
    data = {"pred": MetaTensor(torch.as_tensor(frames), meta={"note": "kept"})}
    largest = PerFramed("pred", KeepLargestConnectedComponent(applied_labels=[1, 2, 3], is_onehot=False,
                                                               independent=True))(data)["pred"]  # fmt: skip
    assert isinstance(largest, MetaTensor) and largest.meta["note"] == "kept" and largest.dtype == torch.uint8
    expected = frames.copy()
    expected[1, 1:4, 35:38, 2] = 0  # only frame 1's blob goes; frame 0 is untouched
    np.testing.assert_array_equal(largest.numpy(), expected)
    filled = PerFramed("pred", FillHoles(applied_labels=[1, 3]), per_slice=True)(data)["pred"].numpy()
    assert (filled[0, 19:22, 13:16, 1] == 1).all()  # the hole is closed, slice by slice
    changed = filled != frames
    assert changed.sum() == 9 and changed[0, :, :, 1].sum() == 9  # and nothing else moves


def test_the_clean_up_switches_of_inference_json(tmp_path) -> None:
    deployment = DeploymentConfig(INFERENCE, {"bundle_root": str(BUNDLE_ROOT)})
    assert set(deployment.cleanup) == set(CLEANUP_SWITCHES)
    assert deployment.cleanup == {name: bool(config_value(INFERENCE, name)) for name in CLEANUP_SWITCHES}
    names = lambda compose: [type(t).__name__ for t in compose.transforms]  # noqa: E731
    assert names(deployment.label_postprocessing(keep_largest_component=False, fill_holes=False)) == [
        "Invertd", "FrameArgmaxd"
    ]  # fmt: skip
    both = deployment.label_postprocessing(keep_largest_component=True, fill_holes=True)
    assert names(both) == ["Invertd", "FrameArgmaxd", "PerFramed", "PerFramed"]
    assert isinstance(both.transforms[2].transform, KeepLargestConnectedComponent)
    assert isinstance(both.transforms[3].transform, FillHoles) and both.transforms[3].per_slice
    with pytest.raises(ValueError, match="unknown clean-up switches"):
        deployment.label_postprocessing(smooth=True)
