"""Writing NIfTI files the way the app serves them: the affine (RAS) stored as both sform and qform."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write ``array`` on ``affine`` (voxel index to RAS mm), sform and qform code 1, as scanners' converters do."""
    image = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    image.set_sform(image.affine, code=1)
    image.set_qform(image.affine, code=1)
    nib.save(image, str(path))
    return Path(path)
