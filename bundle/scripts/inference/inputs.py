"""Inputs of the inference workflow: the volumes to segment, found in a folder or listed by name.

Accepted inputs are 3D short-axis stacks ``H, W, slices`` (slices on the last axis) and 4D cine volumes
``H, W, slices, frames``, stored as NIfTI (``.nii``/``.nii.gz``), NRRD (``.nrrd``/``.nhdr``), MetaImage
(``.mha``/``.mhd``) or a folder holding one DICOM series. Their content is checked by :mod:`scripts.volumes`; a
missing or unusable input is reported as :class:`scripts.volumes.VolumeError` naming it.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path

from ..volumes import IMAGE_SUFFIXES, VolumeError

__all__ = [
    "DEFAULT_EXCLUDE",
    "is_dicom_series_dir",
    "volume_stem",
    "find_inputs",
]

# Files the workflow writes itself, and ground-truth labels stored next to images (ACDC, the phantom).
DEFAULT_EXCLUDE = ("*_seg.*", "*_seg_ftn.*", "*_uncertainty.*", "*_disagreement.*", "*_gt.*")


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
                raise VolumeError(
                    f"{path}: not found or not an image file ({', '.join(IMAGE_SUFFIXES)}) or a DICOM series folder."
                )
            found.append(path)
    else:
        if not dataset_dir:
            raise VolumeError("no input: pass --dataset_dir <folder of volumes> or --images \"['a.nii.gz']\".")
        root = Path(dataset_dir)
        if not root.is_dir():
            raise VolumeError(f"dataset_dir {root} does not exist or is not a folder.")
        found = sorted(p for p in root.iterdir() if _wanted(p, exclude))
        if not found:
            raise VolumeError(
                f"dataset_dir {root} holds no volumes to segment: expected files ending in {', '.join(IMAGE_SUFFIXES)} "
                f"or DICOM series sub-folders (skipped names matching {', '.join(exclude)})."
            )
    return [{"image": str(p), "source": str(p)} for p in found]
