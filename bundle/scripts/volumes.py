"""Reading and checking short-axis volumes and their labels: the one validator of training, inference and the app.

Accepted images are 3D short-axis stacks ``H, W, slices`` (slices on the last axis) and 4D cine volumes
``H, W, slices, frames``, as NIfTI, NRRD, MetaImage (the files of :data:`IMAGE_SUFFIXES`) or a folder holding one
DICOM series. Loaded channel-first, an
image is ``F, H, W, D`` (F = 1 for a stack, the frames of a cine otherwise). A label is one volume ``1, H, W, D`` of
the image's shape holding the integer codes of :mod:`scripts.labels`. Every problem is a :class:`VolumeError` whose
message names the file, what is wrong and what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.transforms import LoadImage, Transform

from .labels import NUM_CLASSES

__all__ = [
    "IMAGE_SUFFIXES",
    "VolumeError",
    "ValidateVolumed",
    "check_image",
    "check_label",
    "check_label_file",
    "load_volume",
]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
"""Image files accepted everywhere (inference inputs, the MONAI Label app's studies): NIfTI, NRRD, MetaImage."""

_EXPECTED = "a 3D short-axis stack (H, W, slices) or a 4D cine volume (H, W, slices, frames)"


class VolumeError(ValueError):
    """A volume or label cannot be used; the message names the file, the problem and what was expected."""


def _shape(array: torch.Tensor | np.ndarray) -> tuple[int, ...]:
    return tuple(int(s) for s in array.shape)


def check_image(image: torch.Tensor | np.ndarray, source: str, max_frames: int | None = None) -> None:
    """Raise :class:`VolumeError` unless ``image`` (channel-first ``F, H, W, D``) is a usable volume.

    Checks: three spatial axes, an in-plane size of at least 4 x 4, at most ``max_frames`` frames (None: any), finite
    intensities.
    """
    shape = _shape(image)
    spatial = shape[1:]
    if len(spatial) != 3:
        kind = {1: "1D", 2: "2D"}.get(len(spatial), f"{len(spatial)}D")
        raise VolumeError(f"{source}: is a {kind} image of shape {spatial}; expected {_EXPECTED}.")
    if min(spatial[:2]) < 4 or spatial[2] < 1:
        raise VolumeError(f"{source}: in-plane size {spatial[:2]} is too small; expected {_EXPECTED}.")
    if max_frames is not None and shape[0] > max_frames:
        raise VolumeError(
            f"{source}: has {shape[0]} frames (or channels) of shape {spatial}; expected "
            + ("a single 3D short-axis stack (H, W, slices)." if max_frames == 1 else f"at most {max_frames} frames.")
        )
    values = torch.as_tensor(image)
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        what = "NaN" if bool(torch.isnan(values).any()) else "infinite"
        raise VolumeError(f"{source}: {bad} of {values.numel()} voxels are {what}; expected finite intensities.")


def check_label(
    label: torch.Tensor | np.ndarray,
    image_shape: tuple[int, ...],
    source: str,
    image_source: str = "its image",
    num_classes: int = NUM_CLASSES,
) -> None:
    """Raise :class:`VolumeError` unless ``label`` (``1, H, W, D``) fits an image of spatial shape ``image_shape``
    and holds only the integer codes ``0 .. num_classes - 1``."""
    shape = _shape(label)
    if len(shape) != len(image_shape) + 1 or shape[0] != 1:
        raise VolumeError(f"{source}: label of shape {shape}; expected one label volume (1 channel, H, W, slices).")
    if shape[1:] != tuple(image_shape):
        raise VolumeError(
            f"{source}: label shape {shape[1:]} does not match the image shape {tuple(image_shape)} of {image_source}."
        )
    values = torch.unique(torch.as_tensor(label))
    bad = [v for v in values.tolist() if not float(v).is_integer() or not 0 <= v < num_classes]
    if bad:
        raise VolumeError(
            f"{source}: unexpected label values {bad[:8]}; expected integer codes 0..{num_classes - 1} "
            "(0 background, 1 LV, 2 myocardium, 3 RV)."
        )


def load_volume(path: str | os.PathLike, name: str | None = None):  # -> MetaTensor, channel-first
    """Load an image file or DICOM series folder channel-first (a ``MetaTensor``), as the workflows do.

    Raises :class:`VolumeError` naming the file (``name``, default its base name) when it cannot be read: missing,
    not an image, corrupt or truncated.
    """
    path = str(path)
    name = name or os.path.basename(path)
    if not os.path.exists(path):
        raise VolumeError(f"{name}: no such file or folder.")
    try:
        return LoadImage(image_only=True, ensure_channel_first=True)(path)
    except Exception as e:  # every reader failed: report the first cause, not MONAI's reader list
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise VolumeError(
            f"{name}: cannot be read as an image (NIfTI, NRRD, MetaImage or a DICOM series); the "
            f"file may be corrupt, truncated or of another type ({type(cause).__name__}: {str(cause)[:200]})."
        ) from e


def check_label_file(
    label_path: str | os.PathLike,
    image_path: str | os.PathLike,
    num_classes: int = NUM_CLASSES,
    label_name: str | None = None,
    image_name: str | None = None,
) -> tuple[int, ...]:
    """Load a label file and its image and check that they fit (:func:`check_label`); returns the spatial shape.

    A 4D cine image takes a 4D label (one label frame per image frame, stored as channels once loaded).
    """
    name = label_name or os.path.basename(str(label_path))
    image_name = image_name or os.path.basename(str(image_path))
    label = load_volume(label_path, f"label {name}")
    image = load_volume(image_path, image_name)
    frames = image.shape[0]
    if frames > 1 and label.shape[0] == frames:  # a cine label: check each frame against the image grid
        for f in range(frames):
            check_label(label[f : f + 1], tuple(image.shape[1:]), f"label {name} frame {f}", image_name, num_classes)
    else:
        check_label(label, tuple(image.shape[1:]), f"label {name}", image_name, num_classes)
    return tuple(label.shape[1:])


def _source(data: Mapping[Hashable, object], key: Hashable) -> str:
    meta = getattr(data.get(key), "meta", None) or {}
    return str(data.get("source") or meta.get("filename_or_obj", f"<{key}>"))


class ValidateVolumed(Transform):
    """Dictionary transform: check a loaded, channel-first image (and its label, when present); data unchanged.

    Args:
        image_key: the image, ``F, H, W, D``.
        label_key: the label, ``1, H, W, D`` (None or absent from the data: image only).
        max_frames: the most frames an image may have (1 for training, which reads 3D stacks; None: any).
        num_classes: labels hold codes ``0 .. num_classes - 1``.
        input_grid: compare the label with the image's grid as read (``meta["spatial_shape"]``), for an image that
            was resampled after loading (validation keeps labels on the input grid); else with its current shape.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str | None = None,
        max_frames: int | None = None,
        num_classes: int = NUM_CLASSES,
        input_grid: bool = False,
    ) -> None:
        self.image_key = image_key
        self.label_key = label_key
        self.max_frames = max_frames
        self.num_classes = num_classes
        self.input_grid = input_grid

    def _image_grid(self, image: torch.Tensor) -> tuple[int, ...]:
        meta = getattr(image, "meta", None) or {}
        if self.input_grid and meta.get("spatial_shape") is not None:
            return tuple(int(v) for v in np.asarray(meta["spatial_shape"]).ravel())
        return _shape(image)[1:]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Mapping[Hashable, torch.Tensor]:
        image = data[self.image_key]
        source = _source(data, self.image_key)
        check_image(image, source, self.max_frames)
        if self.label_key is not None and self.label_key in data:
            label_source = str(getattr(data[self.label_key], "meta", {}).get("filename_or_obj", self.label_key))
            check_label(data[self.label_key], self._image_grid(image), label_source, source, self.num_classes)
        return data
