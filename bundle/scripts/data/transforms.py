"""Project transforms that MONAI lacks, for the reference augmentation policy (docs/method.md section 5.4).

Dictionary transforms on channel-first 2D slices ``C, H, W``; images lie in [0, 1] after volume normalisation.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import ensure_tuple_rep
from scipy.ndimage import gaussian_filter

__all__ = ["RandBrightnessFluctuationd", "RandReferenceSpatiald"]


class RandBrightnessFluctuationd(RandomizableTransform, MapTransform):
    """``x * s + b`` with ``s ~ U(scale_range)`` and ``b ~ U(shift_range)``, clipped to the input's own [min, max].

    The reference's ``RandomBrightnessFluctuation`` (p = 0.5, scale U(0.8, 1.2), shift U(-0.1, 0.1)); one draw is
    shared by all ``keys``. MONAI's ``RandScaleIntensityd`` and ``RandShiftIntensityd`` draw scale and shift with
    separate probabilities and do not clip back to the slice's own range.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        scale_range: tuple[float, float] = (0.8, 1.2),
        shift_range: tuple[float, float] = (-0.1, 0.1),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if scale_range[0] > scale_range[1] or shift_range[0] > shift_range[1]:
            raise ValueError(f"ranges must be (low, high), got scale {scale_range} and shift {shift_range}.")
        self.scale_range = scale_range
        self.shift_range = shift_range
        self._scale = 1.0
        self._shift = 0.0

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        self._scale = float(self.R.uniform(*self.scale_range))
        self._shift = float(self.R.uniform(*self.shift_range))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            img = d[key]
            low, high = img.min(), img.max()
            d[key] = torch.clamp(img * self._scale + self._shift, low, high) if isinstance(img, torch.Tensor) else (
                np.clip(img * self._scale + self._shift, low, high)
            )
        return d


class RandReferenceSpatiald(RandomizableTransform, MapTransform):
    """The reference's spatial augmentation, fused into one resampling of each key (docs/method.md section 5.4, step 4).

    For a ``C, H, W`` slice, in the reference order: flips (each axis with ``flip_prob``); an affine, always applied,
    with rotation ``U(-rotate_deg, rotate_deg)``, translation ``U(-t, t) * size`` per axis and zoom drawn
    independently per axis from ``zoom_range`` (a zoom below 1 zooms in); a rotation by an angle drawn from
    ``discrete_angles_deg``, always applied; with ``elastic_prob`` an elastic warp whose displacement per axis is
    ``U(-1, 1)`` noise, Gaussian-filtered with ``sigma = H * U(sigma_range) * 0.75`` (zero border) and scaled by
    ``alpha = H * U(alpha_range)`` (at H = 224 exactly the reference's ``MyElasticTransform``).

    The reference resamples after each step (torchsample, then scipy); composing them into one sampling grid gives the
    same geometry with one interpolation, and is several times faster than chaining MONAI's ``RandFlipd``,
    ``RandAffined``, ``Rotated`` and ``Rand2DElasticd``. Borders replicate the edge. ``mode`` is per key (bilinear
    for images, nearest for labels, whose codes therefore stay integral).
    """

    def __init__(
        self,
        keys: KeysCollection,
        mode: str | Sequence[str] = ("bilinear", "nearest"),
        flip_prob: float = 0.2,
        rotate_deg: float = 15.0,
        translate_fraction: float = 0.1,
        zoom_range: tuple[float, float] = (0.8, 1.1),
        discrete_angles_deg: Sequence[float] = (0, 45, 90, 135, 180, 225, 270, 315),
        elastic_prob: float = 0.5,
        alpha_range: tuple[float, float] = (1.5, 2.0),
        sigma_range: tuple[float, float] = (0.1, 0.2),
        sigma_scale: float = 0.75,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, 1.0)
        if not 0.0 <= flip_prob <= 1.0 or not 0.0 <= elastic_prob <= 1.0:
            raise ValueError(f"probabilities must be in [0, 1], got flip {flip_prob} and elastic {elastic_prob}.")
        if zoom_range[0] <= 0 or zoom_range[0] > zoom_range[1]:
            raise ValueError(f"zoom_range must be (low, high) with 0 < low <= high, got {zoom_range}.")
        if len(discrete_angles_deg) == 0:
            raise ValueError("discrete_angles_deg must not be empty.")
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.flip_prob = flip_prob
        self.rotate_deg = rotate_deg
        self.translate_fraction = translate_fraction
        self.zoom_range = zoom_range
        self.discrete_angles = [float(a) for a in discrete_angles_deg]
        self.elastic_prob = elastic_prob
        self.alpha_range = alpha_range
        self.sigma_range = sigma_range
        self.sigma_scale = sigma_scale
        self._grid: torch.Tensor | None = None

    def randomize(self, data: tuple[int, int]) -> None:  # type: ignore[override]
        """Draw one sampling grid ``1, H, W, 2`` (x, y in grid_sample's normalised coordinates) for size ``data``."""
        h, w = data
        flip = np.diag([-1.0 if self.R.rand() < self.flip_prob else 1.0 for _ in range(2)])  # rows, cols
        angle = np.deg2rad(self.R.uniform(-self.rotate_deg, self.rotate_deg))
        angle += np.deg2rad(self.discrete_angles[self.R.randint(len(self.discrete_angles))])
        shift = np.array([self.R.uniform(-1, 1) * self.translate_fraction * h,
                          self.R.uniform(-1, 1) * self.translate_fraction * w])
        zoom = np.diag([self.R.uniform(*self.zoom_range), self.R.uniform(*self.zoom_range)])
        cos, sin = np.cos(angle), np.sin(angle)
        matrix = flip @ zoom @ np.array([[cos, -sin], [sin, cos]])
        rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
        centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
        points = np.stack([rows, cols]) - centre[:, None, None]
        if self.R.rand() < self.elastic_prob:
            alpha = h * self.R.uniform(*self.alpha_range)
            sigma = h * self.R.uniform(*self.sigma_range) * self.sigma_scale
            for axis in range(2):
                noise = self.R.uniform(-1, 1, size=(h, w))
                points[axis] += gaussian_filter(noise, sigma, mode="constant") * alpha
        source = np.einsum("ij,jhw->ihw", matrix, points) + (flip @ shift)[:, None, None] + centre[:, None, None]
        normalised = np.stack([2 * source[1] / max(w - 1, 1) - 1, 2 * source[0] / max(h - 1, 1) - 1], axis=-1)
        self._grid = torch.as_tensor(normalised[None], dtype=torch.float32)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        first = next(self.key_iterator(d), None)
        if first is None:
            return d
        self.randomize(tuple(d[first].shape[-2:]))
        for key, mode in self.key_iterator(d, self.mode):
            img = torch.as_tensor(d[key])
            out = F.grid_sample(img[None].float(), self._grid, mode=mode, padding_mode="border", align_corners=True)
            d[key] = out[0].to(img.dtype) if not img.is_floating_point() else out[0]
        return d
