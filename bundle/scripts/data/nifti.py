"""NIfTI helpers: reading for the dataset adapters, the bundle's one NIfTI writer, and never-clobbering writes.

Files are written atomically (:mod:`scripts.files`). An existing output is kept when its content equals what would be
written and is otherwise a :class:`~scripts.data.errors.DatasetError`: derived labels are never silently
overwritten.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .. import files
from .errors import DatasetError

__all__ = ["load_nifti", "save_nifti_atomic", "write_nifti", "copy_file_atomic"]


def load_nifti(path: str | os.PathLike) -> nib.Nifti1Image:
    """``nibabel`` image (lazy data); raises :class:`DatasetError` naming the file if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing file: {path}")
    try:
        return nib.load(str(path))
    except Exception as e:  # nibabel raises several types for corrupt files
        raise DatasetError(f"{path}: cannot be read as NIfTI ({e}).") from e


def _same_nifti(a: Path, b: Path) -> bool:
    img_a, img_b = nib.load(str(a)), nib.load(str(b))
    return (
        img_a.shape == img_b.shape
        and np.allclose(img_a.affine, img_b.affine, atol=1e-5)
        and np.array_equal(np.asanyarray(img_a.dataobj), np.asanyarray(img_b.dataobj))
    )


def _never_clobber(path: Path):
    """Translate :mod:`scripts.files`' refusal to overwrite into the adapters' :class:`DatasetError`."""
    return DatasetError(
        f"{path} already exists with different content; remove it or write to another output folder "
        "(derived files are never overwritten)."
    )


def write_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, description: str = "") -> Path:
    """Write ``array`` as NIfTI with qform and sform set to ``affine`` (mm units), atomically; replaces ``path``."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if description:
        img.header["descrip"] = description.encode()[:79]
    with files.atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def save_nifti_atomic(
    array: np.ndarray, path: str | os.PathLike, reference: nib.Nifti1Image, dtype: Any | None = None
) -> Path:
    """Write ``array`` with the geometry (affine, qform/sform, units) of ``reference``, atomically.

    Args:
        array: the voxel data, 3D (the header's dimensions follow the array).
        path: output ``.nii.gz`` path.
        reference: the source image whose geometry is kept.
        dtype: stored data type (default: the array's).
    """
    path = Path(path)
    array = np.asarray(array if dtype is None else array.astype(dtype))
    header = reference.header.copy()
    header.set_data_dtype(array.dtype)
    img = nib.Nifti1Image(array, reference.affine, header=header)
    qform, qcode = reference.get_qform(coded=True)
    sform, scode = reference.get_sform(coded=True)
    img.set_qform(qform if qform is not None else reference.affine, code=int(qcode) if qform is not None else 1)
    img.set_sform(sform if sform is not None else reference.affine, code=int(scode) if sform is not None else 1)
    # a 3D frame of a 4D cine keeps the spatial zooms only
    img.header.set_zooms(reference.header.get_zooms()[: array.ndim])
    img.header.set_slope_inter(1.0, 0.0)
    try:
        with files.atomic_path(path, overwrite=False, same=_same_nifti) as tmp:
            nib.save(img, str(tmp))
    except FileExistsError as e:
        raise _never_clobber(path) from e
    return path


def copy_file_atomic(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Byte copy of ``source`` to ``path`` (geometry and data untouched), atomically; never clobbers."""
    try:
        return files.copy_file_atomic(source, path)
    except FileExistsError as e:
        raise _never_clobber(Path(path)) from e
