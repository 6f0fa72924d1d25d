"""2D training slices drawn from cached, preprocessed 3D short-axis volumes (docs/method.md section 5.3)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset
from monai.transforms import Randomizable
from monai.utils import MAX_SEED

__all__ = ["EMPTY_SLICE_RULES", "VolumeSliceDataset"]

EMPTY_SLICE_RULES = ("keep", "replace")
"""What a slice with an empty label becomes: ``keep`` it (a slice with no heart, e.g. the atria above the base), or
``replace`` it by a random labelled slice of the same volume (the reference)."""

logger = logging.getLogger(__name__)


class VolumeSliceDataset(Randomizable, torch.utils.data.Dataset):
    """Every slice of every volume, as a 2D sample ``{"image": 1, H, W, "label": 1, H, W, ...}``.

    Volumes are ``1, H, W, D`` after ``volume_transform`` (load, channel first, normalise, resample), which runs once
    per volume and is cached. The index enumerates all ``D`` slices of every volume. ``empty_slices`` says what a
    slice whose label is empty becomes: ``keep`` trains on it as it is, as inference segments every slice of a stack
    (basal slices through the atria hold no ventricle, and a network that never saw them labels the atria LV);
    ``replace`` serves a random labelled slice of the same volume instead, the reference's rule, so empty slices are
    never trained on and labelled ones are drawn more often. ``slice_transform`` (augmentation) runs on every draw.

    Args:
        data: MONAI-style list of ``{"image": path, "label": path, ...}``; the ``data`` key that MONAI Label and
            overrides such as ``train#dataset#data`` replace.
        volume_transform: deterministic 3D preprocessing, output ``image``/``label`` of shape ``1, H, W, D``.
        slice_transform: 2D transforms applied to each drawn slice (random augmentation and cropping); a patch sampler
            in it returns a list of one sample, which is unwrapped.
        empty_slices: ``keep`` or ``replace`` (see above and :data:`EMPTY_SLICE_RULES`).
        cache_num_workers: workers that preprocess volumes into the cache.
        progress: show the caching progress bar.
    """

    def __init__(
        self,
        data: Sequence[dict[str, Any]],
        volume_transform: Callable,
        slice_transform: Callable | None = None,
        empty_slices: str = "replace",
        cache_num_workers: int = 0,
        progress: bool = True,
    ) -> None:
        if len(data) == 0:
            raise ValueError("VolumeSliceDataset got an empty data list: no training volumes were given.")
        if empty_slices not in EMPTY_SLICE_RULES:
            raise ValueError(f"empty_slices must be one of {EMPTY_SLICE_RULES}, got {empty_slices!r}.")
        self.empty_slices = empty_slices
        self.volumes = CacheDataset(
            data, transform=volume_transform, cache_rate=1.0, num_workers=cache_num_workers, progress=progress
        )
        self.slice_transform = slice_transform
        self.index: list[tuple[int, int]] = []
        self.labelled_slices: list[list[int]] = []
        for v in range(len(self.volumes)):
            label = self.volumes[v]["label"]
            depth = label.shape[-1]
            labelled = [s for s in range(depth) if bool((label[..., s] > 0).any())]
            if not labelled:
                source = data[v].get("label", v) if isinstance(data[v], dict) else v
                raise ValueError(f"training label {source} has no foreground voxel (expected codes 1 LV, 2 MYO, 3 RV).")
            self.labelled_slices.append(labelled)
            self.index.extend((v, s) for s in range(depth))
        empty = len(self.index) - sum(len(lab) for lab in self.labelled_slices)
        logger.info("%d training slices from %d volumes (%d without a label, %s).", len(self.index), len(self.volumes),
                    empty, "kept" if empty_slices == "keep" else "replaced by labelled slices")  # fmt: skip

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> Randomizable:
        """Seed this dataset's slice draws and, from them, every random transform of ``slice_transform``.

        MONAI's data loaders call this with a seed per worker (per epoch when workers are not persistent), so
        augmentation is reproducible from the training seed.
        """
        super().set_random_state(seed, state)
        if isinstance(self.slice_transform, Randomizable):
            self.slice_transform.set_random_state(seed=int(self.R.randint(MAX_SEED)))
        return self

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        v, s = self.index[i]
        labelled = self.labelled_slices[v]
        empty = s not in labelled
        if empty and self.empty_slices == "replace":
            s, empty = labelled[int(self.R.randint(len(labelled)))], False
        volume = self.volumes[v]
        sample = {
            "image": torch.as_tensor(volume["image"][..., s]).clone(),
            "label": torch.as_tensor(volume["label"][..., s]).clone(),
            "volume_index": v,
            "slice_index": s,
        }
        if self.slice_transform is None:
            return sample
        with warnings.catch_warnings():
            if empty:  # a foreground/background patch sampler says, every time, that it found no foreground
                warnings.filterwarnings("ignore", message="Num foregrounds 0")
            out = self.slice_transform(sample)
        while isinstance(out, list):  # patch samplers (RandCropByPosNegLabeld ...) return num_samples=1 patches
            if len(out) != 1:
                raise ValueError(f"slice_transform returned {len(out)} samples for one slice; use num_samples=1.")
            out = out[0]
        return out
