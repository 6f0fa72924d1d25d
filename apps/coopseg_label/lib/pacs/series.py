"""A DICOM series as the app serves it, and a submitted label back as DICOM-SEG, both through the bundle's code.

The bundle's ``scripts.inference.dicom`` reads the series (``read_dicom_series``: slices along the normal, phases by
trigger time, whatever the order of the files) and writes DICOM-SEG on it (``write_dicom_seg``: the standard coded
segments, each frame referencing the source instance it was drawn on). A cine with several phases per slice
position becomes a 4D NIfTI ``H, W, slices, phases``, a single-phase series a 3D one, on the series' own grid, so the
masks inferred on the NIfTI lie on the series' voxels.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle_code import bundle_module
from ..errors import http_error, problem_of, sentence

logger = logging.getLogger(__name__)

INFO_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "PatientID", "Modality", "SeriesDescription", "StudyDate")


def _compact(image: np.ndarray) -> np.ndarray:
    """``image`` as int16 or uint16 when its values are integers in range (scanner data), else float32."""
    if image.size and np.array_equal(image, np.round(image)):
        low, high = float(image.min()), float(image.max())
        for dtype in (np.int16, np.uint16):
            limits = np.iinfo(dtype)
            if limits.min <= low and high <= limits.max:
                return image.astype(dtype)
    return image.astype(np.float32)


def series_to_nifti(bundle: Path, series_dir: Path, name: str, target: Path) -> dict[str, Any]:
    """Convert the series in ``series_dir`` to the NIfTI ``target`` (4D for a cine); returns its datastore info.

    A series the bundle cannot use (not MR, not a short-axis stack, inconsistent geometry) is an HTTP 422 that says
    the problem and names ``name`` (the cache folder stays in the server log).
    """
    dicom = bundle_module(bundle, "inference.dicom")
    try:
        image, grid = dicom.read_dicom_series(series_dir)
    except dicom.VolumeError as e:
        raise http_error(422, sentence(problem_of(e), f"in series {name}"), str(e)) from e
    cine = grid.shape[3] > 1
    bundle_module(bundle, "data.nifti").write_nifti(_compact(image if cine else image[..., 0]), grid.affine, target)
    first = grid.headers[0][0]
    info = {k: str(first.get(k, "")) for k in INFO_KEYWORDS}
    info.update(shape=list(grid.shape), frames=grid.shape[3], instances=grid.shape[2] * grid.shape[3])
    logger.info("series %s (%s): %s -> %s", name, grid.description, "x".join(map(str, grid.shape)), target.name)
    return info


def label_to_dicom_seg(bundle: Path, label_file: str, series_dir: Path, name: str, out_dir: Path) -> list[Path]:
    """Write the submitted label ``label_file`` on the series in ``series_dir`` as DICOM-SEG files in ``out_dir``.

    The label must be the series' grid: its shape ``H, W, slices`` (``H, W, slices, phases`` for a cine), its affine
    the series' and its values the bundle's label codes; otherwise an HTTP 422 names ``name`` and the problem and
    nothing is written.
    """
    volumes = bundle_module(bundle, "volumes")
    dicom = bundle_module(bundle, "inference.dicom")
    try:
        label = volumes.load_volume(label_file, f"label for series {name}")
        grid = dicom.read_series_grid(series_dir)
        codes = np.moveaxis(np.asarray(label), 0, -1)  # F, H, W, D -> H, W, D, F
        return dicom.write_dicom_seg(codes, grid, out_dir / "seg.dcm", affine=np.asarray(label.affine))
    except (volumes.VolumeError, dicom.VolumeError) as e:
        cause = problem_of(e, f"label for series {name}")
        raise http_error(422, sentence(cause, f"for series {name}", "nothing was stored"), str(e)) from e
