"""The reference augmentation transforms: geometry, label integrity, determinism."""

from __future__ import annotations

import torch

from scripts.data.transforms import RandBrightnessFluctuationd, RandReferenceSpatiald

STILL = {"flip_prob": 0.0, "rotate_deg": 0.0, "translate_fraction": 0.0, "zoom_range": (1.0, 1.0),
         "discrete_angles_deg": [0], "elastic_prob": 0.0}


def _pair(size: int = 33) -> dict[str, torch.Tensor]:
    label = torch.zeros(1, size, size)
    label[0, 5:15, 8:20] = 1
    label[0, 18:25, 3:9] = 3
    image = label / 3 + 0.01 * torch.arange(size * size).reshape(1, size, size) / size**2
    return {"image": image, "label": label}


def test_identity_parameters_leave_the_slice_unchanged() -> None:
    data = _pair()
    out = RandReferenceSpatiald(["image", "label"], **STILL)(data)
    torch.testing.assert_close(out["image"], data["image"], atol=1e-5, rtol=0)
    assert torch.equal(out["label"], data["label"])


def test_discrete_rotation_and_flips() -> None:
    data = _pair()
    rotated = RandReferenceSpatiald(["image", "label"], **{**STILL, "discrete_angles_deg": [90]})(data)["label"]
    assert any(torch.equal(rotated, torch.rot90(data["label"], k, dims=(1, 2))) for k in (1, -1))
    flipped = RandReferenceSpatiald(["image", "label"], **{**STILL, "flip_prob": 1.0})(data)["label"]
    assert torch.equal(flipped, torch.flip(data["label"], dims=(1, 2)))


def test_zoom_below_one_zooms_in() -> None:
    data = _pair()
    out = RandReferenceSpatiald(["image", "label"], **{**STILL, "zoom_range": (0.8, 0.8)})(data)["label"]
    assert (out > 0).sum() > (data["label"] > 0).sum()


def test_full_policy_keeps_labels_integral_aligned_and_repeatable() -> None:
    data = _pair(64)
    transform = RandReferenceSpatiald(["image", "label"], elastic_prob=1.0)
    outs = []
    for _ in range(2):
        transform.set_random_state(7)
        outs.append(transform(data))
    assert torch.equal(outs[0]["label"], outs[1]["label"])
    torch.testing.assert_close(outs[0]["image"], outs[1]["image"])
    label, image = outs[0]["label"], outs[0]["image"]
    assert set(label.unique().tolist()) <= {0.0, 1.0, 3.0}
    # image intensity tracks the label it was drawn from (same geometry for both keys)
    inside = (label == 1) & (torch.nn.functional.max_pool2d(1.0 - (label == 1).float(), 3, 1, 1) == 0)
    assert inside.any() and (image[inside] - 1 / 3).abs().max() < 0.05
    transform.set_random_state(8)
    assert not torch.equal(transform(data)["label"], outs[0]["label"])


def test_brightness_fluctuation_clips_to_slice_range() -> None:
    image = torch.linspace(0.2, 0.7, 100).reshape(1, 10, 10)
    t = RandBrightnessFluctuationd("image", prob=1.0, scale_range=(1.2, 1.2), shift_range=(0.1, 0.1))
    out = t({"image": image})["image"]
    assert out.min() >= 0.2 and out.max() <= 0.7 and out.mean() > image.mean()
