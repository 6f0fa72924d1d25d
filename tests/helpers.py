"""Test helpers shared by several test modules: bundle copies with fresh weights, phantom volumes, NIfTI and DICOM
writers."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser, ckpt_export

from conftest import BUNDLE_ROOT
from scripts.data.phantom import generate_subject
from scripts.model.networks import CoopSegNet
from tools.bundle_copy import copy_bundle

if TYPE_CHECKING:
    from pydicom.dataset import FileDataset
    from pydicom.valuerep import DSfloat


def make_bundle_copy(root: Path, seed: int = 0, torchscript: bool = False) -> Path:
    """A copy of the bundle (configs, scripts) under ``root/bundle`` with fresh weights in ``models/model.pt``.

    With ``torchscript`` the weights are exported by ``ckpt_export`` to ``models/model.ts`` and ``model.pt`` is
    removed, as a user who downloads only the TorchScript model has it.
    """
    bundle = copy_bundle(root, seed=seed)
    if torchscript:
        ckpt_export(
            net_id="network_def",
            filepath=str(bundle / "models" / "model.ts"),
            ckpt_file=str(bundle / "models" / "model.pt"),
            meta_file=str(bundle / "configs" / "metadata.json"),
            config_file=str(bundle / "configs" / "inference.json"),
        )
        (bundle / "models" / "model.pt").unlink()
    return bundle


def make_narrow_bundle_copy(root: Path, width: int, seed: int = 0) -> Path:
    """A bundle copy (see :func:`make_bundle_copy`) whose ``models/model.pt`` holds fresh weights of a network only
    ``width`` channels wide, for fast end-to-end runs; the workflow must then be run with the same ``width``."""
    bundle = copy_bundle(root, seed=seed)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser["width"] = width
    torch.manual_seed(seed)
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle


def configured_quality_threshold(bundle_root: Path = BUNDLE_ROOT) -> float:
    """``quality_threshold`` as ``configs/inference.json`` of ``bundle_root`` sets it."""
    return float(json.loads((bundle_root / "configs" / "inference.json").read_text())["quality_threshold"])


def crop(image: np.ndarray, affine: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The centre ``size`` in-plane of ``image`` and the affine of the cropped grid."""
    start = [(n - s) // 2 for n, s in zip(image.shape[:2], size, strict=True)]
    shifted = affine.copy()
    shifted[:3, 3] = (affine @ np.array([start[0], start[1], 0.0, 1.0]))[:3]
    return np.ascontiguousarray(image[start[0] : start[0] + size[0], start[1] : start[1] + size[1]]), shifted


def phantom_volume(
    seed: int, spacing: float = 2.6, n_slices: int = 5, frame: str = "ED", size: tuple[int, int] = (50, 46)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image H, W, D float32, label uint8, affine)``: the heart region of a phantom, oblique affine.

    The default 50 x 46 pixels at 2.6 mm become about 95 x 87 at 1.36719 mm: resampled, and not a multiple of 16.
    """
    subject = generate_subject(
        np.random.default_rng(seed), spacing_range=(spacing, spacing), n_slices_range=(n_slices, n_slices)
    )
    image, label, affine = subject[frame]
    image, cropped_affine = crop(image, affine, size)
    return image, crop(label, affine, size)[0], cropped_affine


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def _lps_geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """``(axis-0 direction, axis-1 direction, axis-0 spacing, axis-1 spacing, slice step)`` of a RAS affine, in LPS.

    Array axis 0 runs along DICOM columns (the row direction cosine, ``ImageOrientationPatient[:3]``) and axis 1
    along rows (the column direction cosine, ``ImageOrientationPatient[3:]``).
    """
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    spacing_i, spacing_j = float(np.linalg.norm(affine[:3, 0])), float(np.linalg.norm(affine[:3, 1]))
    step = float(np.linalg.norm(affine[:3, 2]))
    return ras_to_lps @ affine[:3, 0] / spacing_i, ras_to_lps @ affine[:3, 1] / spacing_j, spacing_i, spacing_j, step


def _ds(value: float) -> DSfloat:
    """A decimal string of at most 16 characters, as DICOM requires (about 13 significant digits)."""
    from pydicom.valuerep import DSfloat

    return DSfloat(float(value), auto_format=True)


def _mr_instance(path: Path, tags: dict[str, object], pixels: np.ndarray) -> FileDataset:
    """One single-frame MR image instance holding ``pixels`` (rows, columns, uint16) and ``tags`` (None: omitted)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = str(tags.get("SOPInstanceUID") or generate_uid())
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    for keyword, value in tags.items():
        if value is not None and keyword != "SOPInstanceUID":
            setattr(ds, keyword, value)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    ds.is_little_endian, ds.is_implicit_VR = True, False
    return ds


def write_cine_series(
    folder: Path,
    frames: np.ndarray,
    affine: np.ndarray,
    trigger_times_ms: Sequence[float] | None = None,
    shuffle: bool = True,
    seed: int = 0,
    **overrides: object,
) -> Path:
    """Write ``frames`` (``H, W, D, F``; RAS affine of one frame, as nibabel's) as a short-axis MR cine series.

    One single-frame MR instance per (slice, phase), as scanners export cine series: ImagePositionPatient of slice
    ``k`` is ``affine @ (0, 0, k)`` (in LPS), ImageOrientationPatient, PixelSpacing, SliceThickness and
    SpacingBetweenSlices follow the affine; array axis 0 becomes DICOM columns and axis 1 rows, so ITK (and MONAI's
    ITKReader) read a single phase back as ``H, W, D``. With F > 1 (or ``trigger_times_ms``) each instance carries
    TriggerTime (default: F phases evenly over a 1000 ms RR interval), TemporalPositionIdentifier (1-based phase),
    NumberOfTemporalPositions and CardiacNumberOfImages. Values are rounded and clipped to uint16 (RescaleSlope 1).

    Args:
        folder: created if needed; the files are ``IM_<series tag>_<n>.dcm`` so several series can share a folder.
        frames: ``H, W, D, F`` (a 3D ``H, W, D`` array is one phase).
        affine: 4 x 4 RAS voxel-to-mm matrix of the ``H, W, D`` grid.
        trigger_times_ms: F trigger times (ms after the R wave).
        shuffle: name the files in a random order (seeded by ``seed``), so phases and slices interleave on disk;
            otherwise slice-major, phase-minor. InstanceNumber always counts slice-major, phase-minor from 1.
        overrides: DICOM keywords set on every instance after the defaults (``Modality="CT"``,
            ``StudyInstanceUID=...``, ``SeriesDescription=...``); ``None`` removes the attribute.
    """
    from pydicom.uid import generate_uid

    frames = frames[..., None] if frames.ndim == 3 else frames
    n_i, n_j, n_slices, n_frames = frames.shape
    col_dir, row_dir, spacing_i, spacing_j, step = _lps_geometry(affine)
    cine = n_frames > 1 or trigger_times_ms is not None
    times = list(trigger_times_ms) if trigger_times_ms is not None else [1000.0 * f / n_frames for f in range(n_frames)]
    series = {
        "Modality": "MR",
        "ImageType": ["ORIGINAL", "PRIMARY", "M", "NONE"],
        "PatientName": "Phantom^CoopSeg",
        "PatientID": "phantom",
        "PatientBirthDate": "19700101",
        "PatientSex": "O",
        "StudyInstanceUID": generate_uid(),
        "StudyID": "1",
        "StudyDate": "20240101",
        "StudyTime": "120000",
        "AccessionNumber": "A0001",
        "ReferringPhysicianName": "",
        "SeriesInstanceUID": generate_uid(),
        "SeriesNumber": 5,
        "SeriesDescription": "SAX cine" if cine else "SAX",
        "FrameOfReferenceUID": generate_uid(),
        "PositionReferenceIndicator": "",
        "Manufacturer": "CoopSeg phantom",
        "BodyPartExamined": "HEART",
        "PatientPosition": "HFS",
        "ScanningSequence": "GR",
        "SequenceVariant": "SS",
        "MRAcquisitionType": "2D",
        "MagneticFieldStrength": 1.5,
        "RepetitionTime": 3.0,
        "EchoTime": 1.5,
        "ImageOrientationPatient": [_ds(v) for v in (*col_dir, *row_dir)],
        "PixelSpacing": [_ds(spacing_j), _ds(spacing_i)],  # between rows (along axis 1), between columns (axis 0)
        "SliceThickness": _ds(step),
        "SpacingBetweenSlices": _ds(step),
        "RescaleSlope": 1,
        "RescaleIntercept": 0,
    }
    if cine:
        series.update(NumberOfTemporalPositions=n_frames, CardiacNumberOfImages=n_frames)
    folder.mkdir(parents=True, exist_ok=True)
    order = np.arange(n_slices * n_frames)
    if shuffle:
        np.random.default_rng(seed).shuffle(order)
    pixels = np.clip(np.round(frames), 0, 65535).astype(np.uint16)
    normal = np.cross(col_dir, row_dir)
    tag = str(overrides.get("SeriesInstanceUID", series["SeriesInstanceUID"]))
    for index, n in enumerate(order.tolist()):
        k, f = divmod(index, n_frames)
        position = np.diag([-1.0, -1.0, 1.0]) @ (affine @ np.array([0.0, 0.0, k, 1.0]))[:3]
        tags = {
            **series,
            "InstanceNumber": index + 1,
            "ImagePositionPatient": [_ds(v) for v in position],
            "SliceLocation": _ds(position @ normal),
        }
        if cine:
            tags.update(TriggerTime=_ds(times[f]), TemporalPositionIdentifier=f + 1)
        tags.update(overrides)
        path = folder / f"IM_{tag[-8:].replace('.', '')}_{n:05d}.dcm"
        _mr_instance(path, tags, pixels[:, :, k, f].T).save_as(str(path), write_like_original=False)
    return folder


def write_dicom_series(folder: Path, image: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``image`` (H, W, D; RAS affine as nibabel's) as a single-phase MR series, one file per slice, in order.

    Array axis 0 becomes DICOM columns and axis 1 rows, so ITK (and MONAI's ITKReader) read back ``H, W, D``.
    """
    return write_cine_series(folder, image[..., None], affine, shuffle=False)


def make_source_bundle(root: Path, weights: bool = True, seed: int = 0) -> Path:
    """A copy of the repository's bundle (code and configs, none of its models/logs) with untrained weights."""
    source = root / "bundle"
    shutil.copytree(BUNDLE_ROOT, source, ignore=shutil.ignore_patterns("models", "logs", "eval", "runs", "__pycache__"))
    (source / "models").mkdir()
    (source / "large_files.yml").unlink(missing_ok=True)  # no release recorded yet
    if weights:
        torch.manual_seed(seed)
        torch.save(CoopSegNet().state_dict(), source / "models" / "model.pt")
    return source
