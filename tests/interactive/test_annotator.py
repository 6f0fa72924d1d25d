"""The simulated annotator: where it corrects, what manual editing does, and the protocol's measures; and that the
refinement, driven by it, beats manual editing on a slice the model got wrong."""

from __future__ import annotations

import numpy as np
import pytest
import synthetic

from scripts.interactive.annotator import (
    Correction,
    InteractionCurve,
    click_in,
    largest_error_region,
    mean_dice_after,
    noi,
    paint,
    seed_map,
    simulate,
    slice_dice,
    stroke_along,
)
from scripts.interactive.refinement import RefinementSettings, refine_slice


def test_slice_dice_counts_labels_in_either_mask() -> None:
    truth = np.zeros((10, 10), dtype=np.uint8)
    truth[2:6, 2:6] = 1
    assert slice_dice(truth, truth) == 1.0
    pred = truth.copy()
    pred[8, 8] = 3  # a structure the truth lacks scores 0
    assert slice_dice(pred, truth) == pytest.approx(0.5)
    assert slice_dice(np.zeros_like(truth), np.zeros_like(truth)) is None


def test_largest_error_region_click_and_stroke() -> None:
    truth = np.zeros((40, 40), dtype=np.uint8)
    truth[5:25, 5:15] = 1  # missed entirely: 200 pixels
    truth[30:34, 30:34] = 3  # missed: 16 pixels
    pred = np.zeros_like(truth)
    region, label = largest_error_region(pred, truth)
    assert label == 1 and region.sum() == 200
    point = click_in(region)[0]
    assert region[tuple(point)] and 9 <= point[0] <= 20 and 9 <= point[1] <= 10  # 5 pixels from every border
    stroke = stroke_along(region, truth, label, brush_radius=1)
    assert len(stroke) and (truth[stroke[:, 0], stroke[:, 1]] == 1).all()
    painted = paint(pred, Correction(label, stroke, "scribble"))
    assert (painted != pred).sum() == len(stroke)  # manual editing changes exactly the voxels under the brush
    assert largest_error_region(truth, truth) is None


def test_seed_map_later_corrections_win() -> None:
    first = Correction(1, np.array([[1, 1], [2, 2]]))
    second = Correction(0, np.array([[2, 2]]))
    seeds = seed_map([first, second], (4, 4))
    assert seeds[1, 1] == 1 and seeds[2, 2] == 0 and (seeds == -1).sum() == 14


def test_measures() -> None:
    curves = [
        InteractionCurve([0.95] * 11, [], 0),
        InteractionCurve([0.5, 0.8, 0.92] + [0.92] * 8, [0.1, 0.1], 2),
        InteractionCurve([0.4] * 11, [0.1] * 10, None),
    ]
    assert mean_dice_after(curves, 0) == pytest.approx((0.95 + 0.5 + 0.4) / 3)
    assert mean_dice_after(curves, 3) == pytest.approx((0.95 + 0.92 + 0.4) / 3)
    assert noi(curves, 10) == pytest.approx(((0 + 2 + 10) / 3, 1 / 3))


def test_manual_editing_stops_at_the_target_or_the_budget() -> None:
    truth, _ = synthetic.truth_and_image()
    curve = simulate(synthetic.wrong_mask(truth), truth, "manual", max_interactions=4)
    assert len(curve.dice) == 5 and curve.dice == sorted(curve.dice)  # a perfect brush never makes it worse
    assert curve.reached is None or curve.dice[curve.reached] >= 0.9


def test_a_slice_cleared_of_false_positives_scores_one() -> None:
    truth = np.zeros((32, 32), dtype=np.uint8)
    initial = truth.copy()
    initial[4:9, 4:9] = 3  # a structure painted where there is none
    curve = simulate(initial, truth, "region")
    assert curve.dice[0] == 0.0 and curve.dice[1] == 1.0 and curve.reached == 1
    manual = simulate(initial, truth, "manual")
    assert manual.reached is not None and manual.dice[manual.reached] == 1.0


def test_region_ceiling_fixes_exactly_the_largest_error_region_per_interaction() -> None:
    truth, _ = synthetic.truth_and_image()
    initial = synthetic.wrong_mask(truth)
    region, label = largest_error_region(initial, truth)
    curve = simulate(initial, truth, "region", max_interactions=1)
    expected = initial.copy()
    expected[region] = label
    assert curve.dice[1] == pytest.approx(slice_dice(expected, truth))
    manual = simulate(initial, truth, "manual", max_interactions=1)
    assert curve.dice[1] >= manual.dice[1]  # the brush stroke covers part of the region only
    full = simulate(initial, truth, "region")
    assert full.reached is not None and full.dice == sorted(full.dice)


def test_refinement_reaches_the_target_in_half_the_interactions_of_manual_editing() -> None:
    """The protocol on the synthetic slice: the model missed the RV and called a fat blob RV (Dice 0.67)."""
    truth, image = synthetic.truth_and_image()
    initial = synthetic.wrong_mask(truth)
    probs = synthetic.model_probs(initial)

    def refine(mask: np.ndarray, corrections: list[Correction]) -> np.ndarray:
        seeds = seed_map(corrections, mask.shape)
        out = refine_slice(image, probs, mask, seeds, synthetic.identity_shape_prior, RefinementSettings())
        return out.argmax(axis=0)

    manual = simulate(initial, truth, "manual")
    assert manual.dice[0] < 0.7
    for mode in ("click", "scribble"):
        curve = simulate(initial, truth, mode, refine=refine)
        assert curve.reached is not None and curve.reached <= 3, (mode, curve.dice)
        assert manual.reached is None or curve.reached <= manual.reached / 2, (mode, curve.reached, manual.reached)
        assert curve.dice[3] >= 0.9
