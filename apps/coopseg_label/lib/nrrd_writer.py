"""Writing a label as NRRD in LPS, the format OHIF's MONAI Label panel asks for, 4D cines included.

NIfTI labels are written by the bundle's own writer (``scripts.data.nifti.write_nifti``).
"""

from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np

NRRD_SUFFIXES = (".nrrd", ".nhdr")


def save_nrrd(array: np.ndarray, affine: np.ndarray, path: str | Path, compress: bool = False) -> Path:
    """Write ``array`` (``H, W, D`` or ``H, W, D, F``) on ``affine`` (RAS) as NRRD in LPS, axis 0 fastest: a cine's
    frames are the last, non-spatial axis, so its first ``H * W * D`` values are frame 0."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)[:3]
    directions = np.full((array.ndim, 3), np.nan)  # a NaN row is "none": the frame axis has no direction
    directions[:3] = lps[:, :3].T
    header = {
        "space": "left-posterior-superior",
        "space directions": directions,
        "space origin": lps[:, 3],
        "kinds": ["domain"] * 3 + ["list"] * (array.ndim - 3),
        "encoding": "gzip" if compress else "raw",
    }
    nrrd.write(str(path), np.asarray(array), header, index_order="F")
    return Path(path)
