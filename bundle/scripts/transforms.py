"""Project transforms that MONAI lacks, for the reference augmentation policy (method.md section 5.4).

Dictionary transforms on channel-first 2D slices ``C, H, W``; images lie in [0, 1] after volume normalisation.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Rotate, Transform
from monai.utils import ensure_tuple_rep

__all__ = ["ValidateShortAxisd", "RandBrightnessFluctuationd", "RandDiscreteRotated"]


def _source(data: Mapping[Hashable, object], key: Hashable) -> str:
    meta = getattr(data.get(key), "meta", None) or {}
    return str(meta.get("filename_or_obj", f"<{key}>"))


class ValidateShortAxisd(Transform):
    """Check a loaded, channel-first short-axis pair; raise ``ValueError`` naming the file and the problem.

    Expects the image ``1, H, W, D`` (one channel, 3D, slices last) with finite values, and, when present, a label
    of the same spatial shape holding only the integer codes ``0 .. num_classes - 1``.
    """

    def __init__(self, image_key: str = "image", label_key: str | None = "label", num_classes: int = 4) -> None:
        self.image_key = image_key
        self.label_key = label_key
        self.num_classes = num_classes

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Mapping[Hashable, torch.Tensor]:
        image = data[self.image_key]
        source = _source(data, self.image_key)
        if image.ndim != 4 or image.shape[0] != 1:
            raise ValueError(
                f"{source}: expected a single-channel 3D short-axis volume (H, W, slices), got array shape "
                f"{tuple(image.shape[1:]) if image.ndim > 1 else tuple(image.shape)} with {image.shape[0]} channel(s)."
            )
        if not bool(torch.isfinite(torch.as_tensor(image)).all()):
            raise ValueError(f"{source}: the image contains NaN or infinite values.")
        if self.label_key is None or self.label_key not in data:
            return data
        label = torch.as_tensor(data[self.label_key])
        label_source = _source(data, self.label_key)
        if tuple(label.shape[1:]) != tuple(image.shape[1:]):
            raise ValueError(
                f"{label_source}: label shape {tuple(label.shape[1:])} does not match image shape "
                f"{tuple(image.shape[1:])} of {source}."
            )
        values = torch.unique(label)
        bad = [v for v in values.tolist() if v != int(v) or not 0 <= v < self.num_classes]
        if bad:
            raise ValueError(
                f"{label_source}: unexpected label values {bad[:8]}; expected integer codes 0..{self.num_classes - 1} "
                "(0 background, 1 LV, 2 MYO, 3 RV)."
            )
        return data


class RandBrightnessFluctuationd(RandomizableTransform, MapTransform):
    """``x * s + b`` with ``s ~ U(scale_range)`` and ``b ~ U(shift_range)``, clipped to the input's own [min, max].

    The reference's ``RandomBrightnessFluctuation`` (p = 0.5, scale U(0.8, 1.2), shift U(-0.1, 0.1)); one draw is
    shared by all ``keys``.
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


class RandDiscreteRotated(RandomizableTransform, MapTransform):
    """Rotate 2D slices about their centre by an angle drawn uniformly from ``angles_deg`` (always applied).

    The reference's ``MyRandomChoiceRotate([0, 45, ..., 315])``. ``mode`` is per key (e.g. bilinear for images,
    nearest for labels); the output keeps the input size.
    """

    def __init__(
        self,
        keys: KeysCollection,
        angles_deg: Sequence[float] = (0, 45, 90, 135, 180, 225, 270, 315),
        mode: str | Sequence[str] = "bilinear",
        padding_mode: str = "border",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, 1.0)
        if len(angles_deg) == 0:
            raise ValueError("angles_deg must not be empty.")
        self.angles = [float(np.deg2rad(a)) for a in angles_deg]
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.padding_mode = padding_mode
        self._angle = 0.0

    def randomize(self, data: object = None) -> None:
        self._angle = self.angles[int(self.R.randint(len(self.angles)))]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        if self._angle == 0.0:
            return d
        rotate = Rotate(angle=self._angle, keep_size=True, padding_mode=self.padding_mode)
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = rotate(d[key], mode=mode)
        return d
