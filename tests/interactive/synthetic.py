"""A short-axis slice whose right mask is known and a model that gets it wrong in the ways a shifted scanner does.

The slice (``H, W``, intensities in [0, 1] with noise) holds an LV blood pool ringed by myocardium, an RV blood pool
beside it and, away from the heart, a bright fat blob as bright as blood. The "model" misses the RV (calls it
background) and calls the fat blob RV: two large error regions of the kind the simulated annotator corrects first.
"""

from __future__ import annotations

import numpy as np

SIZE = (96, 96)
LV_CENTRE, LV_RADIUS, MYO_WIDTH = (48, 40), 11, 5
RV_CENTRE, RV_RADII = (48, 70), (16, 8)
FAT_CENTRE, FAT_RADIUS = (16, 16), 8
INTENSITY = {"background": 0.15, "lv": 1.0, "myocardium": 0.3, "rv": 0.9, "fat": 0.95}


def truth_and_image(seed: int = 0, noise: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """``(truth H, W uint8 with codes 0-3, image H, W float32)``."""
    ii, jj = np.mgrid[: SIZE[0], : SIZE[1]]
    r_lv = np.hypot(ii - LV_CENTRE[0], jj - LV_CENTRE[1])
    rv = ((ii - RV_CENTRE[0]) / RV_RADII[0]) ** 2 + ((jj - RV_CENTRE[1]) / RV_RADII[1]) ** 2 <= 1
    fat = np.hypot(ii - FAT_CENTRE[0], jj - FAT_CENTRE[1]) <= FAT_RADIUS
    truth = np.zeros(SIZE, dtype=np.uint8)
    truth[rv] = 3
    truth[r_lv <= LV_RADIUS + MYO_WIDTH] = 2
    truth[r_lv <= LV_RADIUS] = 1
    image = np.full(SIZE, INTENSITY["background"], dtype=np.float32)
    for code, name in ((1, "lv"), (2, "myocardium"), (3, "rv")):
        image[truth == code] = INTENSITY[name]
    image[fat] = INTENSITY["fat"]
    image += np.random.default_rng(seed).normal(0.0, noise, SIZE).astype(np.float32)
    return truth, np.clip(image, 0.0, 1.0)


def wrong_mask(truth: np.ndarray) -> np.ndarray:
    """The model's mistakes: no RV, and the fat blob called RV."""
    ii, jj = np.mgrid[: SIZE[0], : SIZE[1]]
    mask = truth.copy()
    mask[truth == 3] = 0
    mask[np.hypot(ii - FAT_CENTRE[0], jj - FAT_CENTRE[1]) <= FAT_RADIUS] = 3
    return mask


def model_probs(mask: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    """``4, H, W`` probabilities whose argmax is ``mask`` (``confidence`` on it, the rest shared)."""
    probs = np.full((4, *mask.shape), (1.0 - confidence) / 3.0, dtype=np.float32)
    np.put_along_axis(probs, mask[None].astype(np.int64), confidence, axis=0)
    return probs


def identity_shape_prior(probs: np.ndarray) -> np.ndarray:
    """A shape prior that agrees with whatever it is given (isolates the spreading of corrections)."""
    return probs
