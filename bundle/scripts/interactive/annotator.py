"""A simulated annotator: the protocol that measures how fast corrections turn a mask into the right one.

Slices are ``H, W`` label maps (0 background, 1 LV, 2 myocardium, 3 RV). Starting from the automatic mask, each
interaction finds the largest error region (a connected region where the mask differs from the truth and the truth
has one label), corrects it in one of three ways, and records the slice's Dice; the slice is done at the target Dice
(0.90) or after ``max_interactions`` (10):

* ``click``: one point, the region's innermost pixel (largest distance to its border), on the region's true label;
* ``scribble``: a brush stroke along the region's skeleton, ``brush_radius`` pixels wide either side, kept on
  pixels of that true label (a careful annotator does not paint over a neighbouring structure);
* ``manual``: the same stroke painted into the mask (every voxel under it set to its true label, nothing else): plain
  manual editing, the baseline;
* ``region``: the whole error region set to its true label, nothing else: the best any correction confined to the
  region the user marks can do (a ceiling for refinements that change only what was marked, not a way to edit).

``click`` and ``scribble`` hand the corrections so far to a refinement function; ``manual`` and ``region`` need none.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

__all__ = [
    "MODES",
    "UNREFINED",
    "Correction",
    "InteractionCurve",
    "click_in",
    "largest_error_region",
    "mean_dice_after",
    "noi",
    "paint",
    "seed_map",
    "simulate",
    "slice_dice",
    "stroke_along",
]

MODES = ("click", "scribble", "manual", "region")
UNREFINED = ("manual", "region")
FOREGROUND = (1, 2, 3)


@dataclasses.dataclass(frozen=True)
class Correction:
    """One interaction: ``pixels`` ``N, 2`` (row, column) that the user marks as ``label``; ``kind`` is ``click``
    (one pixel) or ``scribble``."""

    label: int
    pixels: np.ndarray
    kind: str = "click"

    def seed_map(self, shape: tuple[int, int], seeds: np.ndarray | None = None) -> np.ndarray:
        """``seeds`` (``H, W`` int16, -1 where unmarked; a new one if None) with this correction drawn in."""
        seeds = np.full(shape, -1, dtype=np.int16) if seeds is None else seeds
        seeds[self.pixels[:, 0], self.pixels[:, 1]] = self.label
        return seeds


def seed_map(corrections: Sequence[Correction], shape: tuple[int, int]) -> np.ndarray:
    """All ``corrections`` as one ``H, W`` int16 map (-1 unmarked); a later correction overrides an earlier one."""
    seeds = np.full(shape, -1, dtype=np.int16)
    for correction in corrections:
        correction.seed_map(shape, seeds)
    return seeds


def slice_dice(pred: np.ndarray, truth: np.ndarray, labels: Sequence[int] = FOREGROUND) -> float | None:
    """Mean Dice over the ``labels`` present in ``pred`` or ``truth`` (a label in one only scores 0); None when the
    slice holds none of them in either."""
    scores = []
    for label in labels:
        p, t = pred == label, truth == label
        total = int(p.sum()) + int(t.sum())
        if total:
            scores.append(2.0 * int(np.logical_and(p, t).sum()) / total)
    return float(np.mean(scores)) if scores else None


def largest_error_region(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, int] | None:
    """``(region mask H, W, its true label)``: the largest 8-connected region of pixels where ``pred`` differs from
    ``truth`` and ``truth`` has one label; None when ``pred`` equals ``truth``."""
    best: tuple[int, np.ndarray, int] | None = None
    for label in np.unique(truth[pred != truth]):
        components, n = ndimage.label((pred != truth) & (truth == label), structure=np.ones((3, 3)))
        if n == 0:
            continue
        sizes = np.bincount(components.ravel())[1:]
        index = int(np.argmax(sizes))
        if best is None or sizes[index] > best[0]:
            best = (int(sizes[index]), components == index + 1, int(label))
    return None if best is None else (best[1], best[2])


def click_in(region: np.ndarray) -> np.ndarray:
    """``1, 2`` (row, column): the pixel of ``region`` farthest from its border (the first such pixel)."""
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    return np.array([np.unravel_index(int(np.argmax(depth)), region.shape)])


def stroke_along(region: np.ndarray, truth: np.ndarray, label: int, brush_radius: int = 2) -> np.ndarray:
    """``N, 2`` pixels of a brush stroke along ``region``'s skeleton: the skeleton widened by a disc of
    ``brush_radius`` pixels, on pixels whose true label is ``label``."""
    skeleton = skeletonize(region)
    if not skeleton.any():
        skeleton = np.zeros_like(region)
        skeleton[tuple(click_in(region)[0])] = True
    yy, xx = np.mgrid[-brush_radius : brush_radius + 1, -brush_radius : brush_radius + 1]
    brush = ndimage.binary_dilation(skeleton, structure=yy**2 + xx**2 <= brush_radius**2)
    return np.argwhere(brush & (truth == label))


def paint(mask: np.ndarray, correction: Correction) -> np.ndarray:
    """Manual editing: a copy of ``mask`` with the correction's pixels set to its label."""
    out = mask.copy()
    out[correction.pixels[:, 0], correction.pixels[:, 1]] = correction.label
    return out


Refine = Callable[[np.ndarray, list[Correction]], np.ndarray]
"""``refine(current mask H, W, corrections so far) -> new mask H, W``."""


@dataclasses.dataclass
class InteractionCurve:
    """One slice's Dice after 0, 1, ... interactions (``dice[k]`` after k; a finished slice keeps its last value),
    and the seconds each refinement took."""

    dice: list[float]
    seconds: list[float]
    reached: int | None
    """Interactions needed to reach the target (0: the automatic mask did), None if not within the budget."""


def simulate(
    initial: np.ndarray,
    truth: np.ndarray,
    mode: str,
    refine: Refine | None = None,
    max_interactions: int = 10,
    target: float = 0.90,
    brush_radius: int = 2,
) -> InteractionCurve | None:
    """Run the protocol on one slice; None for a slice with no foreground in ``initial`` or ``truth``.

    A slice whose truth holds no structure but whose mask does (false positives beyond the heart) starts at Dice 0;
    once every false positive is gone, prediction and truth agree and the slice scores 1.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if mode not in UNREFINED and refine is None:
        raise ValueError(f"mode {mode!r} needs a refine function.")
    score = slice_dice(initial, truth)
    if score is None:
        return None
    mask, corrections = initial, []
    dice, seconds = [score], []
    reached = 0 if score >= target else None
    while reached is None and len(corrections) < max_interactions:
        found = largest_error_region(mask, truth)
        if found is None:
            break
        region, label = found
        if mode == "click":
            correction = Correction(label, click_in(region), "click")
        elif mode == "region":
            correction = Correction(label, np.argwhere(region), "scribble")
        else:
            correction = Correction(label, stroke_along(region, truth, label, brush_radius), "scribble")
        corrections.append(correction)
        start = time.perf_counter()
        mask = paint(mask, correction) if mode in UNREFINED else refine(mask, list(corrections))
        seconds.append(time.perf_counter() - start)
        score = slice_dice(mask, truth)
        dice.append(1.0 if score is None else score)  # None: no structure in either, the mask is right
        if dice[-1] >= target:
            reached = len(corrections)
    dice += [dice[-1]] * (max_interactions + 1 - len(dice))
    return InteractionCurve(dice, seconds, reached)


def mean_dice_after(curves: Sequence[InteractionCurve], k: int) -> float:
    """Mean over slices of the Dice after ``k`` interactions."""
    return float(np.mean([c.dice[k] for c in curves]))


def noi(curves: Sequence[InteractionCurve], max_interactions: int = 10) -> tuple[float, float]:
    """``(mean NoI, share not reached)``: mean number of interactions to the target, a slice that does not reach it
    counting as ``max_interactions``; and the share of such slices."""
    counts = [c.reached if c.reached is not None else max_interactions for c in curves]
    return float(np.mean(counts)), float(np.mean([c.reached is None for c in curves]))
