"""Inputs of the inference workflow: finding volumes, and checking that a file is a usable short-axis volume.

Accepted inputs are 3D short-axis stacks ``H, W, slices`` (slices on the last axis) and 4D cine volumes
``H, W, slices, frames``, stored as NIfTI (``.nii``/``.nii.gz``), NRRD (``.nrrd``/``.nhdr``), MetaImage
(``.mha``/``.mhd``) or a folder holding one DICOM series. Every problem is reported as :class:`InputVolumeError`
naming the file, what is wrong and what was expected.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Transform

__all__ = [
    "IMAGE_SUFFIXES",
    "DEFAULT_EXCLUDE",
    "InputVolumeError",
    "is_dicom_series_dir",
    "volume_stem",
    "find_inputs",
    "ValidateVolumed",
    "check_volume",
    "load_volume",
    "check_label_for_image",
]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Files the workflow writes itself, and ground-truth labels stored next to images (ACDC, the phantom).
DEFAULT_EXCLUDE = ("*_seg.*", "*_seg_ftn.*", "*_uncertainty.*", "*_disagreement.*", "*_gt.*")
_EXPECTED = "a 3D short-axis stack (H, W, slices) or a 4D cine volume (H, W, slices, frames)"


class InputVolumeError(ValueError):
    """An input cannot be segmented; the message names the file, the problem and what was expected."""


def is_dicom_series_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder with at least one DICOM file (``.dcm`` suffix or the ``DICM`` preamble)."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    for f in folder.iterdir():
        if not f.is_file():
            continue
        if f.suffix.lower() == ".dcm":
            return True
        try:
            with open(f, "rb") as fh:
                fh.seek(128)
                if fh.read(4) == b"DICM":
                    return True
        except OSError:
            continue
    return False


def volume_stem(path: str | os.PathLike) -> str:
    """File name without its image suffix (``case1.nii.gz -> case1``); a DICOM folder's own name."""
    name = Path(str(path).rstrip("/\\")).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def _wanted(path: Path, exclude: Sequence[str]) -> bool:
    if path.name.startswith("."):
        return False
    if _is_image_file(path):
        return not any(fnmatch.fnmatch(path.name, pattern) for pattern in exclude)
    return is_dicom_series_dir(path)


def find_inputs(
    dataset_dir: str | None = None, images: Sequence[str] | None = None, exclude: Sequence[str] = DEFAULT_EXCLUDE
) -> list[dict[str, str]]:
    """The volumes to segment as ``[{"image": path, "source": path}, ...]`` (sorted by name).

    Args:
        dataset_dir: folder scanned (not recursively) for image files and DICOM series sub-folders.
        images: explicit files or DICOM folders; when given, ``dataset_dir`` is only used to resolve relative paths.
        exclude: glob patterns of file names skipped while scanning (by default the workflow's own outputs and
            ``*_gt.*`` ground-truth labels); hidden files are skipped too.
    """
    if images:
        base = Path(dataset_dir) if dataset_dir else Path.cwd()
        found = []
        for item in images:
            path = Path(item) if os.path.isabs(item) else base / item
            if not (_is_image_file(path) or is_dicom_series_dir(path)):
                raise InputVolumeError(
                    f"{path}: not found or not an image file ({', '.join(IMAGE_SUFFIXES)}) or a DICOM series folder."
                )
            found.append(path)
    else:
        if not dataset_dir:
            raise InputVolumeError("no input: pass --dataset_dir <folder of volumes> or --images \"['a.nii.gz']\".")
        root = Path(dataset_dir)
        if not root.is_dir():
            raise InputVolumeError(f"dataset_dir {root} does not exist or is not a folder.")
        found = sorted(p for p in root.iterdir() if _wanted(p, exclude))
        if not found:
            raise InputVolumeError(
                f"dataset_dir {root} holds no volumes to segment: expected files ending in {', '.join(IMAGE_SUFFIXES)} "
                f"or DICOM series sub-folders (skipped names matching {', '.join(exclude)})."
            )
    return [{"image": str(p), "source": str(p)} for p in found]


def _source(data: Mapping[Hashable, object], key: Hashable) -> str:
    meta = getattr(data.get(key), "meta", None) or {}
    return str(data.get("source") or meta.get("filename_or_obj", f"<{key}>"))


def check_volume(image: torch.Tensor | np.ndarray, source: str) -> None:
    """Raise :class:`InputVolumeError` unless ``image`` (channel-first, frames as channels) is a usable volume.

    Expects ``F, H, W, D`` (F = 1 for a 3D stack) with finite values and an in-plane size of at least 4 x 4.
    """
    shape = tuple(image.shape)
    spatial = shape[1:]
    if len(spatial) != 3:
        kind = {1: "1D", 2: "2D"}.get(len(spatial), f"{len(spatial)}D")
        raise InputVolumeError(f"{source}: is a {kind} image of shape {spatial}; expected {_EXPECTED}.")
    if min(spatial[:2]) < 4 or spatial[2] < 1:
        raise InputVolumeError(f"{source}: in-plane size {spatial[:2]} is too small; expected {_EXPECTED}.")
    values = torch.as_tensor(image)
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        what = "NaN" if bool(torch.isnan(values).any()) else "infinite"
        raise InputVolumeError(f"{source}: {bad} of {values.numel()} voxels are {what}; expected finite intensities.")


class ValidateVolumed(Transform):
    """Dictionary transform: :func:`check_volume` on ``data[image_key]`` (loaded, channel-first); data unchanged."""

    def __init__(self, image_key: str = "image") -> None:
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Mapping[Hashable, torch.Tensor]:
        check_volume(data[self.image_key], _source(data, self.image_key))
        return data


def load_volume(path: str | os.PathLike, name: str | None = None):  # -> MetaTensor, channel-first
    """Load an image file or DICOM series folder as the workflow does (channel-first ``MetaTensor``).

    Raises :class:`InputVolumeError` naming the file (``name``, default its base name) when it cannot be read: not
    an image, corrupt or truncated.
    """
    from monai.transforms import LoadImage

    path = str(path)
    name = name or os.path.basename(path)
    if not os.path.exists(path):
        raise InputVolumeError(f"{name}: no such file or folder.")
    try:
        return LoadImage(image_only=True, ensure_channel_first=True)(path)
    except Exception as e:  # every reader failed: report the first cause, not MONAI's reader list
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise InputVolumeError(
            f"{name}: cannot be read as an image (NIfTI, NRRD, MetaImage or a DICOM series); the "
            f"file may be corrupt, truncated or of another type ({type(cause).__name__}: {str(cause)[:200]})."
        ) from e


def check_label_for_image(
    label_path: str | os.PathLike,
    image_path: str | os.PathLike,
    num_classes: int = 4,
    label_name: str | None = None,
    image_name: str | None = None,
) -> tuple[int, ...]:
    """Check that a label file fits its image: same spatial shape, integer codes ``0 .. num_classes - 1``.

    Returns the label's spatial shape; raises :class:`InputVolumeError` naming the problem (files are named by
    ``label_name`` / ``image_name``, default their base names).
    """
    name = label_name or os.path.basename(str(label_path))
    image_name = image_name or os.path.basename(str(image_path))
    label = load_volume(label_path, f"label {name}")
    image = load_volume(image_path, image_name)
    if label.shape[0] != 1:
        raise InputVolumeError(f"label {name}: has {label.shape[0]} channels/frames; expected one label volume.")
    if tuple(label.shape[1:]) != tuple(image.shape[1:]):
        raise InputVolumeError(
            f"label {name}: shape {tuple(label.shape[1:])} does not match the image shape {tuple(image.shape[1:])} of "
            f"{image_name}."
        )
    values = torch.unique(torch.as_tensor(label))
    bad = [v for v in values.tolist() if not float(v).is_integer() or not 0 <= v < num_classes]
    if bad:
        raise InputVolumeError(
            f"label {name}: unexpected values {bad[:8]}; expected integer codes 0..{num_classes - 1} "
            "(0 background, 1 LV, 2 myocardium, 3 RV)."
        )
    return tuple(label.shape[1:])
