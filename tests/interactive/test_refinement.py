"""The refinement of one slice: a correction fixes the region that shares its mistake and nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import synthetic
import torch

from scripts.interactive.annotator import click_in, slice_dice
from scripts.interactive.refinement import RefinementSettings, refine_slice, stn_shape_prior


@pytest.fixture
def case() -> dict[str, np.ndarray]:
    truth, image = synthetic.truth_and_image()
    mask = synthetic.wrong_mask(truth)
    return {"truth": truth, "image": image, "mask": mask, "probs": synthetic.model_probs(mask)}


def refine(case: dict, seeds: np.ndarray, method: str = "shape") -> np.ndarray:
    probs = refine_slice(
        case["image"],
        case["probs"],
        case["mask"],
        seeds,
        synthetic.identity_shape_prior,
        RefinementSettings(method=method),
    )
    assert probs.shape == case["probs"].shape
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    return probs.argmax(axis=0)


def seeds_at(shape: tuple[int, int], points: np.ndarray, label: int) -> np.ndarray:
    seeds = np.full(shape, -1, dtype=np.int16)
    seeds[points[:, 0], points[:, 1]] = label
    return seeds


def test_without_corrections_the_mask_stays(case: dict) -> None:
    out = refine(case, np.full(case["mask"].shape, -1, dtype=np.int16))
    np.testing.assert_array_equal(out, case["mask"])


@pytest.mark.parametrize("method", ["shape", "geodesic"])
def test_one_click_restores_a_missed_structure_without_leaking(case: dict, method: str) -> None:
    truth, mask = case["truth"], case["mask"]
    missed = (truth == 3) & (mask != 3)
    out = refine(case, seeds_at(mask.shape, click_in(missed), 3), method)
    rv = out == 3
    near_heart = np.zeros_like(rv)
    near_heart[:, 30:] = True
    recovered = (rv & (truth == 3)).sum() / (truth == 3).sum()
    assert recovered > 0.95
    assert not (rv & near_heart & (truth != 3)).any()  # the edge of the RV stops it: no LV, myocardium or background
    np.testing.assert_array_equal(out[truth != 3], mask[truth != 3])  # everything else as it was


def test_a_background_click_removes_a_false_structure_only(case: dict) -> None:
    truth, mask = case["truth"], case["mask"]
    false_rv = (mask == 3) & (truth == 0)
    out = refine(case, seeds_at(mask.shape, click_in(false_rv), 0))
    assert not (out[false_rv] == 3).any()
    np.testing.assert_array_equal(out[~false_rv], mask[~false_rv])


def test_two_clicks_fix_the_slice(case: dict) -> None:
    truth, mask = case["truth"], case["mask"]
    assert slice_dice(mask, truth) < 0.7
    seeds = seeds_at(mask.shape, click_in((truth == 3) & (mask != 3)), 3)
    seeds[tuple(click_in((mask == 3) & (truth == 0))[0])] = 0
    assert slice_dice(refine(case, seeds), truth) > 0.97


def test_seeds_keep_their_label_even_against_the_model(case: dict) -> None:
    seeds = np.full(case["mask"].shape, -1, dtype=np.int16)
    seeds[48, 40] = 2  # myocardium in the middle of the LV blood pool: the user has the last word
    seeds[10, 80] = 1
    out = refine(case, seeds)
    assert out[48, 40] == 2 and out[10, 80] == 1


def test_graph_cut_fixes_the_scribbled_label_against_the_rest(case: dict) -> None:
    truth, mask = case["truth"], case["mask"]
    missed = (truth == 3) & (mask != 3)
    seeds = np.full(mask.shape, -1, dtype=np.int16)
    seeds[missed] = 3  # a scribble over the whole missed region: the cut keeps it and the rest stays
    seeds[24:30, 40] = 0
    out = refine(case, seeds, method="graphcut")
    assert (out[missed] == 3).all()
    np.testing.assert_array_equal(out[truth == 1], 1)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="method"):
        RefinementSettings(method="magic")
    with pytest.raises(ValueError, match="reach"):
        RefinementSettings(reach=0)


def test_stn_shape_prior_pads_to_the_network_and_returns_probabilities() -> None:
    calls = []

    class Shape(torch.nn.Module):
        def refine_logits(self, logits: torch.Tensor) -> torch.Tensor:
            calls.append(tuple(logits.shape))
            return torch.flip(logits, dims=[1])  # class 0 <-> 3, 1 <-> 2: visible in the output

    probs = synthetic.model_probs(synthetic.wrong_mask(synthetic.truth_and_image()[0])[:90, :70])
    out = stn_shape_prior(Shape())(probs)
    assert calls == [(1, 4, 96, 80)]
    assert out.shape == probs.shape
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out.argmax(axis=0), 3 - probs.argmax(axis=0))


def test_settings_per_kind_come_from_inference_json_and_bad_ones_are_named() -> None:
    import json

    from scripts import bundle_root
    from scripts.interactive.refinement import settings_for

    config = json.loads((Path(bundle_root()) / "configs" / "inference.json").read_text())["interactive_refinement"]
    assert settings_for("scribbles", config).method == "shape"
    assert settings_for("clicks", config) == RefinementSettings(method="geodesic")
    assert settings_for("clicks", None) == RefinementSettings()  # no section: the defaults
    with pytest.raises(ValueError, match=r"interactive_refinement\.clicks: unknown setting\(s\) \['reech'\]"):
        settings_for("clicks", {"clicks": {"reech": 3}})
    with pytest.raises(ValueError, match="kind must be one of"):
        settings_for("boxes", config)
    with pytest.raises(ValueError, match="method must be one of"):
        settings_for("scribbles", {"scribbles": {"method": "magic"}})
