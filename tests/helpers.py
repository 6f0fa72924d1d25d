"""Test helpers shared by several test modules: bundle copies with fresh weights, phantom volumes, NIfTI and DICOM
writers."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ckpt_export

from conftest import BUNDLE_ROOT
from scripts.data.phantom import generate_subject
from scripts.model.networks import CoopSegNet


def make_bundle_copy(root: Path, seed: int = 0, torchscript: bool = False) -> Path:
    """A copy of the bundle (configs, scripts) under ``root/bundle`` with fresh weights in ``models/model.pt``.

    With ``torchscript`` the weights are exported by ``ckpt_export`` to ``models/model.ts`` and ``model.pt`` is
    removed, as a user who downloads only the TorchScript model has it.
    """
    bundle = root / "bundle"
    shutil.copytree(BUNDLE_ROOT / "configs", bundle / "configs")
    shutil.copytree(BUNDLE_ROOT / "scripts", bundle / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    (bundle / "models").mkdir(parents=True)
    torch.manual_seed(seed)
    torch.save(CoopSegNet().state_dict(), bundle / "models" / "model.pt")
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


def write_dicom_series(folder: Path, image: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``image`` (H, W, D; RAS affine as nibabel's) as an MR DICOM series, one file per slice.

    Array axis 0 becomes DICOM columns and axis 1 rows, so ITK (and MONAI's ITKReader) read back ``H, W, D``.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    col_dir = ras_to_lps @ affine[:3, 0] / np.linalg.norm(affine[:3, 0])  # along array axis 0 (DICOM columns)
    row_dir = ras_to_lps @ affine[:3, 1] / np.linalg.norm(affine[:3, 1])  # along array axis 1 (DICOM rows)
    spacing_i, spacing_j = np.linalg.norm(affine[:3, 0]), np.linalg.norm(affine[:3, 1])
    thickness = float(np.linalg.norm(affine[:3, 2]))
    series, study, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    pixels = np.clip(np.round(image), 0, 65535).astype(np.uint16)
    for k in range(image.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"slice{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientName, ds.PatientID = "MR", "Phantom^CoopSeg", "phantom"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_ref
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageOrientationPatient = [float(v) for v in (*col_dir, *row_dir)]
        ds.ImagePositionPatient = [float(v) for v in ras_to_lps @ (affine @ np.array([0.0, 0.0, k, 1.0]))[:3]]
        ds.PixelSpacing = [float(spacing_j), float(spacing_i)]  # between rows, between columns
        ds.SliceThickness = thickness
        ds.Rows, ds.Columns = image.shape[1], image.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(str(folder / f"slice{k:03d}.dcm"), ds, write_like_original=False)
    return folder


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
