"""Short-axis MR DICOM series: a validated image grid, a MONAI reader for it, and DICOM-SEG output on that grid.

A series is a folder of single-frame MR instances: one per slice position for a 3D stack, one per (slice position,
cardiac phase) for a cine, in any file order. :func:`read_series_grid` sorts them into a ``D x F`` grid:

* slices ``k`` by position along the slice normal ``ImageOrientationPatient[:3] x ImageOrientationPatient[3:]``,
  ascending (GDCM's and so ITK's order: a single-phase series reads exactly as MONAI's ``ITKReader`` reads it);
* phases ``f`` within a position by TriggerTime, else TemporalPositionIdentifier, else InstanceNumber.

Image arrays are ``H, W, D, F``: axis 0 runs along a DICOM row (H = Columns, the row direction cosine
``ImageOrientationPatient[:3]``), axis 1 down a column (W = Rows), axis 2 over slices, axis 3 over phases. The affine
maps voxel indices ``(i, j, k)`` to RAS millimetres (``affine @ (i, j, k, 1)``), as MONAI's readers give it.

Every problem with a series is a :class:`DicomSeriesError` naming the folder, the series (SeriesDescription and
SeriesInstanceUID) and what is wrong.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from monai.data import ImageReader
from monai.transforms import LoadImage
from monai.utils import ensure_tuple
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes as sr_codes
from pydicom.uid import generate_uid

from ..files import atomic_path
from ..labels import LABELS, METADATA_FILE, Label
from ..volumes import VolumeError
from .inputs import is_dicom_series_dir

if TYPE_CHECKING:  # highdicom is imported where DICOM-SEG is written, so NIfTI-only inference does not need it
    from highdicom.seg import Segmentation, SegmentDescription
    from highdicom.sr import CodedConcept

__all__ = [
    "CineDicomReader",
    "DicomSeriesError",
    "SeriesGrid",
    "dicom_seg_paths",
    "read_dicom_series",
    "read_series_grid",
    "rgb_to_dicom_lab",
    "write_dicom_seg",
]

logger = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
ANATOMICAL_STRUCTURE = {
    "CodeValue": "123037004",
    "CodingSchemeDesignator": "SCT",
    "CodeMeaning": "Anatomical Structure",
}
MIN_SLICES = 3
MAX_GAP = 1.5  # a gap this many times the median slice spacing is a missing slice
POSITION_TOLERANCE_MM = 0.01  # instances this close along the normal share a slice position
OFF_LINE_PIXELS = 0.1  # a position further than this fraction of a pixel from the normal line is off the stack
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR
_EXPECTED = (
    "expected one short-axis MR series of single-frame instances: one orientation and matrix, at least "
    f"{MIN_SLICES} evenly spaced slice positions on a line along the slice normal, the same number of cardiac phases "
    "at each"
)


class DicomSeriesError(VolumeError):
    """A DICOM series folder cannot be used; the message names the folder, the series and the problem.

    Attributes:
        problem: the problem alone (no folder, no series, no expectation), for callers that name the series their
            own way, e.g. a server that must not show its folders to clients.
        expected: what a usable series is ("" when it does not apply).
    """

    def __init__(self, name: str, problem: str, expected: str = _EXPECTED) -> None:
        super().__init__(f"{name}: {problem}; {expected}." if expected else f"{name}: {problem}.")
        self.problem = problem
        self.expected = expected


@dataclass(frozen=True)
class SeriesGrid:
    """The instances of one series sorted into slices and phases, with the geometry they share.

    Attributes:
        folder: the series folder.
        description: SeriesDescription ("" when absent).
        series_uid: SeriesInstanceUID.
        headers: ``D x F`` datasets without pixel data, ``headers[k][f]`` slice ``k`` (ascending along the normal),
            phase ``f``.
        files: ``D x F`` paths of those instances.
        affine: 4 x 4 RAS voxel-to-mm matrix of the ``H, W, D`` grid.
        shape: ``(H, W, D, F)``: Columns, Rows, slice positions, phases.
    """

    folder: Path
    description: str
    series_uid: str
    headers: tuple[tuple[Dataset, ...], ...]
    files: tuple[tuple[Path, ...], ...]
    affine: np.ndarray
    shape: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        """``<folder> (series '<description>' <uid>)``, how errors name the series."""
        return _series_name(self.folder, self.description, self.series_uid)


def _series_name(folder: Path, description: str, uid: str) -> str:
    return f"{folder} (series {description!r} {uid})"


# reading -------------------------------------------------------------------------------------------------------
def _read_headers(folder: Path) -> list[tuple[Path, Dataset]]:
    """``(path, header)`` of every DICOM file in ``folder`` (not recursive; hidden and non-DICOM files skipped)."""
    found = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        if getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None) == _MEDIA_STORAGE_DIRECTORY:
            continue
        if "SOPInstanceUID" in ds:
            found.append((path, ds))
    return found


def _one_series(folder: Path, instances: list[tuple[Path, Dataset]]) -> tuple[str, str]:
    """``(description, uid)`` of the one series in ``instances``; an error naming all of them otherwise."""
    series: dict[str, str] = {}
    for _, ds in instances:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), str(ds.get("SeriesDescription", "")))
    if not series:
        raise DicomSeriesError(str(folder), "holds no DICOM image instances")
    if len(series) > 1:
        listed = ", ".join(f"{desc!r} {uid}" for uid, desc in series.items())
        raise DicomSeriesError(
            str(folder),
            f"holds {len(series)} DICOM series ({listed})",
            "expected one series per folder: move each series into its own folder",
        )
    uid, description = next(iter(series.items()))
    return description, uid


def _same(values: Sequence[Sequence[float]], atol: float) -> bool:
    array = np.asarray(values, dtype=np.float64)
    return bool(np.allclose(array, array[0], atol=atol, rtol=0))


def _check_instances(name: str, headers: Sequence[Dataset]) -> None:
    """Modality MR, single-frame, geometry tags present, one orientation, pixel spacing and matrix."""
    modalities = sorted({str(ds.get("Modality", "")) for ds in headers})
    if modalities != ["MR"]:
        raise DicomSeriesError(name, f"modality {'/'.join(modalities) or 'missing'} is not MR")
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in headers):
        raise DicomSeriesError(name, "holds multi-frame (enhanced) instances, which are not read")
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
        if any(ds.get(keyword) is None for ds in headers):
            raise DicomSeriesError(name, f"instances without {keyword}")
    if not _same([ds.ImageOrientationPatient for ds in headers], atol=1e-4):
        raise DicomSeriesError(name, "mixed image orientations (ImageOrientationPatient)")
    if not _same([ds.PixelSpacing for ds in headers], atol=1e-4):
        raise DicomSeriesError(name, "varying PixelSpacing")
    if not _same([(ds.Rows, ds.Columns) for ds in headers], atol=0):
        raise DicomSeriesError(name, "varying Rows/Columns (image matrix)")


def _normal(header: Dataset) -> np.ndarray:
    """Unit slice normal (LPS): row direction cosine x column direction cosine."""
    orientation = np.asarray(header.ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


def _slice_positions(name: str, headers: Sequence[Dataset]) -> list[list[int]]:
    """Indices of ``headers`` grouped by slice position, positions ascending along the normal; checks the line."""
    positions = np.asarray([ds.ImagePositionPatient for ds in headers], dtype=np.float64)
    normal = _normal(headers[0])
    along = positions @ normal
    off_line = positions - positions[0] - np.outer(along - along[0], normal)
    limit = OFF_LINE_PIXELS * float(min(headers[0].PixelSpacing))
    worst = float(np.linalg.norm(off_line, axis=1).max())
    if worst > limit:
        raise DicomSeriesError(
            name,
            "slice positions are not on one line along the slice normal (an ImagePositionPatient is "
            f"{worst:.2f} mm off it)",
        )
    groups: list[list[int]] = []
    for index in np.argsort(along, kind="stable").tolist():
        if groups and along[index] - along[groups[-1][0]] <= POSITION_TOLERANCE_MM:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def _check_positions(name: str, distances: np.ndarray) -> None:
    """At least ``MIN_SLICES`` positions, no gap over ``MAX_GAP`` times the median spacing (``distances`` in mm)."""
    if len(distances) < MIN_SLICES:
        raise DicomSeriesError(
            name, f"{len(distances)} slice position(s) is not a short-axis stack (a single long-axis cine plane?)"
        )
    gaps = np.diff(distances)
    median = float(np.median(gaps))
    worst = int(np.argmax(gaps))
    if gaps[worst] > MAX_GAP * median:
        raise DicomSeriesError(
            name,
            f"missing slice: a gap of {gaps[worst]:.2f} mm between slice positions {worst} and {worst + 1} "
            f"(median spacing {median:.2f} mm)",
        )


def _phase_key(headers: Sequence[Dataset]) -> str:
    """The attribute ordering phases: TriggerTime, else TemporalPositionIdentifier, else InstanceNumber."""
    for keyword in ("TriggerTime", "TemporalPositionIdentifier"):
        if all(ds.get(keyword) not in (None, "") for ds in headers):
            return keyword
    return "InstanceNumber"


def _sort_phases(name: str, headers: Sequence[Dataset], groups: list[list[int]]) -> list[list[int]]:
    """Each position's indices ordered by phase; the same number of phases at every position."""
    counts = [len(g) for g in groups]
    if len(set(counts)) > 1:
        raise DicomSeriesError(
            name,
            f"unequal number of cardiac phases per slice position ({counts}, slice positions ascending along the "
            "normal)",
        )
    key = _phase_key(headers)

    def order(index: int) -> tuple[float, float]:
        value = headers[index].get(key)
        return float(value) if value not in (None, "") else math.inf, float(headers[index].get("InstanceNumber") or 0)

    return [sorted(g, key=order) for g in groups]


def _affine(first: Dataset, last: Dataset, n_slices: int) -> np.ndarray:
    """RAS voxel-to-mm matrix from the first and last slice's headers (column spacing along axis 0)."""
    orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    origin = np.asarray(first.ImagePositionPatient, dtype=np.float64)
    step = (np.asarray(last.ImagePositionPatient, dtype=np.float64) - origin) / max(n_slices - 1, 1)
    lps = np.eye(4)
    lps[:3, 0] = orientation[:3] * column_spacing
    lps[:3, 1] = orientation[3:] * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


def read_series_grid(folder: str | os.PathLike) -> SeriesGrid:
    """Headers of the one short-axis MR series in ``folder``, validated and sorted (:class:`SeriesGrid`).

    Raises :class:`DicomSeriesError` when the folder holds no or several series, the series is not MR, has mixed
    orientations, varying pixel spacing or matrix, positions off one line along the normal, a missing slice (a gap
    over 1.5 x the median spacing), unequal phases per position, or fewer than 3 positions.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomSeriesError(str(folder), "no such folder")
    instances = _read_headers(folder)
    description, uid = _one_series(folder, instances)
    name = _series_name(folder, description, uid)
    headers = [ds for _, ds in instances]
    _check_instances(name, headers)
    groups = _slice_positions(name, headers)
    normal = _normal(headers[0])
    _check_positions(name, np.asarray([np.dot(headers[g[0]].ImagePositionPatient, normal) for g in groups]))
    groups = _sort_phases(name, headers, groups)
    first = headers[groups[0][0]]
    return SeriesGrid(
        folder=folder,
        description=description,
        series_uid=uid,
        headers=tuple(tuple(headers[i] for i in g) for g in groups),
        files=tuple(tuple(instances[i][0] for i in g) for g in groups),
        affine=_affine(first, headers[groups[-1][0]], len(groups)),
        shape=(int(first.Columns), int(first.Rows), len(groups), len(groups[0])),
    )


def _pixels(path: Path, name: str) -> np.ndarray:
    """One instance's stored values with RescaleSlope/Intercept applied, ``Columns, Rows`` float32."""
    try:
        ds = pydicom.dcmread(str(path))
        values = ds.pixel_array.astype(np.float32)
    except Exception as e:  # corrupt, truncated or compressed without a decoder
        raise DicomSeriesError(
            name, f"cannot decode the pixels of {path.name} ({type(e).__name__}: {e})", expected=""
        ) from e
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    return (values * slope + intercept).T


def read_dicom_series(folder: str | os.PathLike) -> tuple[np.ndarray, SeriesGrid]:
    """The image ``H, W, D, F`` (float32, rescaled values) of the series in ``folder`` and its :class:`SeriesGrid`."""
    grid = read_series_grid(folder)
    image = np.empty(grid.shape, dtype=np.float32)
    for k, row in enumerate(grid.files):
        for f, path in enumerate(row):
            values = _pixels(path, grid.name)
            if values.shape != grid.shape[:2]:
                raise DicomSeriesError(grid.name, f"{path.name} holds {values.shape[::-1]} pixels")
            image[:, :, k, f] = values
    return image, grid


# MONAI reader ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Series:
    image: np.ndarray  # H, W, D, F
    grid: SeriesGrid


@dataclass(frozen=True)
class _Delegated:
    reader: ImageReader
    image: Any


@dataclass(frozen=True)
class _Failed:
    error: Exception


class CineDicomReader(ImageReader):
    """MONAI ``ImageReader`` for a folder holding one short-axis MR series, single-phase or cine.

    ``get_data`` gives ``H, W, D`` for a single-phase series (no channel, exactly as ``ITKReader`` reads it) and
    ``H, W, D, F`` for a cine with ``original_channel_dim = -1`` (frames as channels, like a 4D NIfTI cine), with
    ``affine``/``original_affine`` (RAS), ``spatial_shape``, ``spacing`` and ``space`` metadata; ``LoadImage`` adds
    ``filename_or_obj``.

    ``verify_suffix`` accepts DICOM series folders only. ``LoadImage(reader=CineDicomReader())`` calls ``read`` for
    every path, so other paths (NIfTI, NRRD, MetaImage) are handed to the reader MONAI's own selection picks for them
    (``fallback=True``) and come out as without this reader; with ``fallback=False`` ``read`` raises for them.

    ``LoadImage`` tries its other readers when ``read`` raises, and ``ITKReader`` would then read a rejected cine as
    one stack of all its instances. So a failure of a path this reader takes (a :class:`DicomSeriesError`, or the
    delegated reader's error) is raised by ``get_data`` instead, and reaches the caller as it would without this reader.
    """

    def __init__(self, fallback: bool = True) -> None:
        super().__init__()
        self.fallback = fallback
        self._defaults: list[ImageReader] | None = None

    def verify_suffix(self, filename: Sequence[os.PathLike | str] | os.PathLike | str) -> bool:
        paths = ensure_tuple(filename)
        return len(paths) == 1 and is_dicom_series_dir(paths[0])

    def _default_reader(self, data: Sequence[os.PathLike | str] | os.PathLike | str) -> ImageReader:
        """The reader ``LoadImage`` would pick for ``data`` without this one (last registered first)."""
        if self._defaults is None:
            self._defaults = LoadImage(image_only=True).readers
        for reader in reversed(self._defaults):
            if reader.verify_suffix(data):
                return reader
        raise ValueError(f"{data}: no MONAI reader for this file type.")

    def read(
        self, data: Sequence[os.PathLike | str] | os.PathLike | str, **kwargs: Any
    ) -> _Series | _Delegated | _Failed:
        if not self.verify_suffix(data) and not self.fallback:
            raise ValueError(f"{data}: not a folder holding a DICOM series.")
        try:
            if self.verify_suffix(data):
                return _Series(*read_dicom_series(ensure_tuple(data)[0]))
            reader = self._default_reader(data)
            return _Delegated(reader, reader.read(data, **kwargs))
        except Exception as e:  # raised by get_data, so that LoadImage does not try other readers
            return _Failed(e)

    def get_data(self, img: _Series | _Delegated | _Failed) -> tuple[np.ndarray, dict[str, Any]]:
        if isinstance(img, _Failed):
            raise img.error
        if isinstance(img, _Delegated):
            return img.reader.get_data(img.image)
        cine = img.grid.shape[3] > 1
        affine = img.grid.affine.copy()
        meta = {
            "affine": affine,
            "original_affine": affine.copy(),
            "spatial_shape": np.asarray(img.grid.shape[:3]),
            "spacing": np.linalg.norm(affine[:3, :3], axis=0),
            "original_channel_dim": -1 if cine else float("nan"),
            "space": "RAS",
        }
        return (img.image if cine else img.image[..., 0]), meta


# DICOM-SEG -------------------------------------------------------------------------------------------------------
def rgb_to_dicom_lab(rgb: Sequence[int]) -> list[int]:
    """sRGB 0-255 -> DICOM ``RecommendedDisplayCIELabValue`` (CIELab, D65 white, scaled to 0-65535).

    L* 0..100 maps to 0..65535, a* and b* -128..127 to 0..65535 (PS3.3 C.10.7.1.1).
    """
    srgb = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(srgb > 0.04045, ((srgb + 0.055) / 1.055) ** 2.4, srgb / 12.92)
    to_xyz = np.array(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
    )
    xyz = to_xyz @ linear / np.array([0.95047, 1.0, 1.08883])
    delta = 6.0 / 29.0
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4.0 / 29.0)
    lab = np.array([116.0 * f[1] - 16.0, 500.0 * (f[0] - f[1]), 200.0 * (f[1] - f[2])])
    scaled = np.array([lab[0] / 100.0, (lab[1] + 128.0) / 255.0, (lab[2] + 128.0) / 255.0]) * 65535.0
    return [int(v) for v in np.clip(np.round(scaled), 0, 65535)]


def _code(item: dict[str, str]) -> CodedConcept:
    from highdicom.sr import CodedConcept

    return CodedConcept(item["CodeValue"], item["CodingSchemeDesignator"], item["CodeMeaning"])


def _bundle_version() -> str:
    return str(json.loads(Path(METADATA_FILE).read_text()).get("version", "unknown"))


def _segment(label: Label, version: str) -> SegmentDescription:
    """The description of one label: codes, name, colour, automatic CoopSeg algorithm."""
    from highdicom import AlgorithmIdentificationSequence
    from highdicom.seg import SegmentDescription

    algorithm = AlgorithmIdentificationSequence(
        name="CoopSeg", family=sr_codes.cid7162.ArtificialIntelligence, version=version
    )
    segment = SegmentDescription(
        segment_number=label.code,
        segment_label=label.name,
        segmented_property_category=_code(ANATOMICAL_STRUCTURE),
        segmented_property_type=_code(label.dicom_type),
        algorithm_type="AUTOMATIC",
        algorithm_identification=algorithm,
    )
    segment.SegmentDescription = label.description
    segment.RecommendedDisplayCIELabValue = rgb_to_dicom_lab(label.color)
    if label.dicom_type_modifier:
        segment.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            _code(label.dicom_type_modifier)
        ]
    return segment


# type-2 attributes highdicom copies from the source; present (empty) in the copies it gets
_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
)


def _source(header: Dataset) -> Dataset:
    """A copy of a source header with the patient/study attributes highdicom reads (empty when absent)."""
    source = copy.deepcopy(header)
    for keyword in _PATIENT_STUDY:
        if keyword not in source:
            setattr(source, keyword, None)
    return source


def _label_codes(label: np.ndarray, grid: SeriesGrid, labels: Sequence[Label]) -> np.ndarray:
    """``label`` (``H, W, D`` or ``H, W, D, F``) as uint8 ``H, W, D, F``; its shape and codes checked."""
    array = np.asarray(label)
    array = array[..., None] if array.ndim == 3 else array
    if array.shape != grid.shape:
        raise DicomSeriesError(
            grid.name,
            f"label of shape {tuple(array.shape)} does not match the series grid {grid.shape}",
            expected="shapes are H = Columns, W = Rows, slices, phases",
        )
    codes = {0, *(lbl.code for lbl in labels)}
    values = set(np.unique(array).tolist())
    if not values <= codes:
        raise DicomSeriesError(
            grid.name, f"label values {sorted(values - codes)} are not label codes {sorted(codes)}", expected=""
        )
    return array.astype(np.uint8)


def _phase_planes(codes: np.ndarray, phase: int) -> np.ndarray:
    """Phase ``phase`` of ``H, W, D, F`` codes as ``D, Rows, Columns`` frames (slice ``k`` drawn on instance k)."""
    return np.ascontiguousarray(np.transpose(codes[:, :, :, phase], (2, 1, 0)))


def dicom_seg_paths(path: str | os.PathLike, n_phases: int) -> list[Path]:
    """The files :func:`write_dicom_seg` writes: ``path`` for one phase, ``<path stem>_phaseNN.dcm`` for a cine."""
    path = Path(path)
    if n_phases == 1:
        return [path]
    width = max(2, len(str(n_phases)))
    return [path.with_name(f"{path.stem}_phase{f + 1:0{width}d}{path.suffix}") for f in range(n_phases)]


def _phase_text(grid: SeriesGrid, phase: int) -> str:
    if grid.shape[3] == 1:
        return "CoopSeg cardiac short-axis segmentation"
    trigger = grid.headers[0][phase].get("TriggerTime")
    at = f", trigger time {float(trigger):g} ms" if trigger not in (None, "") else ""
    return f"CoopSeg segmentation, cardiac phase {phase + 1} of {grid.shape[3]}{at}"[:64]


def _segmentation(
    codes: np.ndarray, grid: SeriesGrid, phase: int, series: dict[str, Any], segments: list[SegmentDescription]
) -> Segmentation:
    """The highdicom ``Segmentation`` of one phase: frames on, and referencing, that phase's source instances."""
    from highdicom.seg import Segmentation

    return Segmentation(
        source_images=[_source(row[phase]) for row in grid.headers],
        pixel_array=_phase_planes(codes, phase),
        segmentation_type="BINARY",
        segment_descriptions=segments,
        sop_instance_uid=generate_uid(),
        instance_number=phase + 1,
        manufacturer="CoopSeg",
        manufacturer_model_name="CoopSeg",
        device_serial_number="none",
        content_label="COOPSEG",
        content_description=_phase_text(grid, phase),
        **series,
    )


def write_dicom_seg(
    label: np.ndarray,
    series: SeriesGrid | str | os.PathLike,
    path: str | os.PathLike,
    overwrite: bool = False,
    affine: np.ndarray | None = None,
    series_description: str = "CoopSeg segmentation",
    series_number: int | None = None,
    labels: Sequence[Label] = LABELS,
) -> list[Path]:
    """Write the label map ``label`` on a series grid as a DICOM-SEG series; returns the files written.

    One SEG instance per cardiac phase (highdicom writes one instance per set of distinct slice positions): a
    single-phase series gives ``path``, a cine of F phases ``<path stem>_phase01.dcm`` .. (:func:`dicom_seg_paths`),
    all in one new series (InstanceNumber = phase, 1-based) of the source's Study and Frame of Reference. Each
    instance describes one segment per label (number = code, also when empty) and each of its frames references the
    source instance it was drawn on. The files are written atomically, all or none.

    Args:
        label: label codes ``H, W, D`` (single-phase) or ``H, W, D, F`` on the series grid (see the module doc).
        series: the source series: its folder or its :class:`SeriesGrid`.
        path: the ``.dcm`` file (its stem, for a cine); existing files are kept (``FileExistsError``) unless
            ``overwrite``.
        overwrite: replace existing files.
        affine: the label's RAS affine, if known: it must be the series grid's (0.01 mm), else ``VolumeError``.
        series_description: of the new SEG series.
        series_number: of the new series; default the source's SeriesNumber + 1000.
        labels: the segments.
    """
    grid = series if isinstance(series, SeriesGrid) else read_series_grid(series)
    if affine is not None and not np.allclose(np.asarray(affine, dtype=np.float64), grid.affine, atol=1e-2):
        raise DicomSeriesError(
            grid.name, "the label's affine is not the series grid's", expected="it must be on the source grid"
        )
    codes = _label_codes(label, grid, labels)
    paths = dicom_seg_paths(path, grid.shape[3])
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        kept = (
            f"{existing[0]} exists and is kept" if len(existing) == 1 else f"{', '.join(existing)} exist and are kept"
        )
        raise FileExistsError(f"{kept}; write elsewhere or allow overwriting.")
    version = _bundle_version()
    number = series_number if series_number is not None else int(grid.headers[0][0].get("SeriesNumber") or 0) + 1000
    shared = {
        "series_instance_uid": generate_uid(),
        "series_number": number,
        "series_description": series_description,
        "software_versions": version,
    }
    segments = [_segment(lbl, version) for lbl in labels]
    instances = [_segmentation(codes, grid, f, shared, segments) for f in range(grid.shape[3])]
    with ExitStack() as stack:
        temps = [stack.enter_context(atomic_path(p, overwrite=overwrite)) for p in paths]
        for instance, tmp in zip(instances, temps, strict=True):
            instance.save_as(str(tmp))
    logger.debug("wrote DICOM-SEG %s for %s", paths[0] if len(paths) == 1 else f"{paths[0]} ..", grid.name)
    return paths
