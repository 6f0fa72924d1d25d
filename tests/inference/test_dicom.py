"""DICOM short-axis series in and DICOM-SEG out: scripts/inference/dicom.py, SaveDicomSegd and the inference workflow.

Series are written by ``helpers.write_cine_series`` (one file per slice and phase, files shuffled so phases
interleave). Expected orders and coordinates are computed here from the DICOM tags, not by the code under test.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.data import MetaTensor
from monai.transforms import LoadImage
from skimage.color import rgb2lab

from helpers import make_bundle_copy, phantom_volume, write_cine_series, write_dicom_series, write_nifti
from scripts.inference.dicom import (
    CineDicomReader,
    DicomSeriesError,
    dicom_seg_paths,
    read_dicom_series,
    read_series_grid,
    write_dicom_seg,
)
from scripts.inference.outputs import CheckOutputFormatd, SaveDicomSegd
from scripts.labels import LABELS
from scripts.volumes import VolumeError

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
# SNOMED CT segmented property types of the labels (LV, myocardium with laterality left, RV)
STANDARD_TYPES = {1: ("87878005", None), 2: ("74281007", "7771000"), 3: ("53085002", None)}


# helpers ---------------------------------------------------------------------------------------------------------
def infer(bundle: Path, dataset_dir: Path, output_dir: Path, **options: object) -> list[dict]:
    """``python -m monai.bundle run --config_file <bundle>/configs/inference.json ...`` in-process; the summary."""
    configs = bundle / "configs"
    workflow = ConfigWorkflow(
        config_file=str(configs / "inference.json"),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(bundle),
        dataset_dir=str(dataset_dir),
        output_dir=str(output_dir),
        **options,
    )
    workflow.initialize()
    try:
        workflow.run()
        return workflow.parser.get_parsed_content("evaluator").state.summary
    finally:
        workflow.finalize()


def oblique_affine(spacing: tuple[float, float, float] = (1.8, 1.6, 8.0)) -> np.ndarray:
    """A RAS affine with a rotated, right-handed grid (slice axis along +normal) and an offset origin."""
    a, b = np.deg2rad(25.0), np.deg2rad(-40.0)
    rot_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rot_z = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot_z @ rot_x @ np.diag(spacing)
    affine[:3, 3] = (-40.0, 25.0, 60.0)
    return affine


def random_frames(shape: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """Distinct integer intensities ``H, W, D, F`` that survive uint16 storage exactly."""
    return np.random.default_rng(seed).integers(0, 4000, size=shape).astype(np.float32)


def instances(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(str(p)) for p in sorted(folder.glob("*.dcm"))]


def expected_index(folder: Path) -> dict[str, tuple[int, int]]:
    """SOPInstanceUID -> (slice, phase): slices ascending along IOP[:3] x IOP[3:], phases by TriggerTime (if any)."""
    datasets = instances(folder)
    orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    along = sorted({round(float(np.dot(ds.ImagePositionPatient, normal)), 3) for ds in datasets})
    times = sorted({float(ds.get("TriggerTime", 0.0)) for ds in datasets})
    return {
        ds.SOPInstanceUID: (
            along.index(round(float(np.dot(ds.ImagePositionPatient, normal)), 3)),
            times.index(float(ds.get("TriggerTime", 0.0))),
        )
        for ds in datasets
    }


def rewrite(path: Path, **tags: object) -> None:
    ds = pydicom.dcmread(str(path))
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(str(path))


def files_at_position(folder: Path, slice_index: int) -> list[Path]:
    """The files of one slice position (index ascending along the normal)."""
    index = expected_index(folder)
    return [p for p in sorted(folder.glob("*.dcm")) if index[pydicom.dcmread(str(p)).SOPInstanceUID][0] == slice_index]


def decode_seg(paths: list[Path], source: Path, shape: tuple[int, ...]) -> np.ndarray:
    """Label codes ``H, W, D, F`` from SEG files, each frame placed on the source instance it references."""
    index = expected_index(source)
    positions = {ds.SOPInstanceUID: [float(v) for v in ds.ImagePositionPatient] for ds in instances(source)}
    label = np.zeros(shape, dtype=np.uint8)
    for path in paths:
        seg = pydicom.dcmread(str(path))
        frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
        for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
            uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            np.testing.assert_allclose(item.PlanePositionSequence[0].ImagePositionPatient, positions[uid], atol=1e-3)
            k, f = index[uid]
            code = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            target = label[:, :, k, f]
            assert not target[frame.T > 0].any(), "segments overlap"
            target[frame.T > 0] = code
    return label


def dicom_lab(rgb: tuple[int, int, int]) -> np.ndarray:
    """DICOM-scaled CIELab of an sRGB colour, by scikit-image (D65)."""
    lab = rgb2lab(np.array([[rgb]], dtype=np.uint8))[0, 0]
    return np.array([lab[0] / 100.0, (lab[1] + 128) / 255.0, (lab[2] + 128) / 255.0]) * 65535


def assert_segments(seg: pydicom.Dataset) -> None:
    """Three segments: number = code, name, description, standard codes, colour, automatic CoopSeg."""
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [lbl.code for lbl in LABELS] == [1, 2, 3]
    for segment, label in zip(seg.SegmentSequence, LABELS, strict=True):
        assert segment.SegmentLabel == label.name and segment.SegmentDescription == label.description
        category = segment.SegmentedPropertyCategoryCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == ("123037004", "SCT")
        kind = segment.SegmentedPropertyTypeCodeSequence[0]
        assert kind.CodingSchemeDesignator == "SCT" and kind.CodeValue == STANDARD_TYPES[label.code][0]
        modifier = kind.get("SegmentedPropertyTypeModifierCodeSequence")
        assert (modifier[0].CodeValue if modifier else None) == STANDARD_TYPES[label.code][1]
        np.testing.assert_allclose(segment.RecommendedDisplayCIELabValue, dicom_lab(label.color), atol=1.5)
        assert segment.SegmentAlgorithmType == "AUTOMATIC" and segment.SegmentAlgorithmName == "CoopSeg"


# reading ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order_by", ["TriggerTime", "TemporalPositionIdentifier", "InstanceNumber"])
def test_shuffled_cine_reads_back_in_slice_and_frame_order(tmp_path: Path, order_by: str) -> None:
    frames, affine = random_frames((12, 10, 4, 5)), oblique_affine()
    times = [0.0, 180.5, 410.0, 600.0, 815.25]  # uneven, as arrhythmia rejection leaves them
    absent = {"TriggerTime": None} if order_by != "TriggerTime" else {}
    if order_by == "InstanceNumber":
        absent["TemporalPositionIdentifier"] = None
    write_cine_series(tmp_path / "cine", frames, affine, trigger_times_ms=times, seed=3, **absent)
    names = [p.name for p in sorted((tmp_path / "cine").glob("*.dcm"))]
    on_disk = [(ds.ImagePositionPatient[2], ds.InstanceNumber) for ds in instances(tmp_path / "cine")]
    assert on_disk != sorted(on_disk) and len(names) == 20, "files must interleave slices and phases"

    image, grid = read_dicom_series(tmp_path / "cine")
    assert image.shape == grid.shape == (12, 10, 4, 5) and image.dtype == np.float32
    np.testing.assert_array_equal(image, frames)
    np.testing.assert_allclose(grid.affine, affine, atol=1e-4)
    # world coordinates of voxels from the tags of the instance they were read from
    for i, j, k, f in [(0, 0, 0, 0), (11, 0, 1, 4), (3, 9, 3, 2), (7, 5, 2, 1)]:
        ds = pydicom.dcmread(str(grid.files[k][f]))
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        lps = np.asarray(ds.ImagePositionPatient, dtype=float)
        lps = lps + i * float(ds.PixelSpacing[1]) * iop[:3] + j * float(ds.PixelSpacing[0]) * iop[3:]
        ras = np.diag([-1.0, -1.0, 1.0]) @ lps
        np.testing.assert_allclose((grid.affine @ [i, j, k, 1.0])[:3], ras, atol=1e-3)
        assert image[i, j, k, f] == ds.pixel_array[j, i]
        if order_by == "TriggerTime":
            assert float(ds.TriggerTime) == times[f]
    loaded = LoadImage(image_only=True, reader=CineDicomReader(), ensure_channel_first=True)(str(tmp_path / "cine"))
    assert tuple(loaded.shape) == (5, 12, 10, 4) and loaded.meta["original_channel_dim"] == -1
    np.testing.assert_array_equal(loaded.numpy(), np.moveaxis(frames, -1, 0))
    np.testing.assert_allclose(np.asarray(loaded.affine), affine, atol=1e-4)
    assert loaded.meta["filename_or_obj"] == str(tmp_path / "cine")
    assert tuple(int(s) for s in loaded.meta["spatial_shape"]) == (12, 10, 4)


@pytest.mark.parametrize("flip", [False, True])
def test_single_phase_series_reads_as_itk_reads_it(tmp_path: Path, flip: bool) -> None:
    image, _, affine = phantom_volume(seed=12, n_slices=4)
    if flip:  # slice axis against the normal: both readers order slices along the normal
        affine = affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 3], [0, 0, 0, 1.0]])
    write_dicom_series(tmp_path / "sax", image, affine)
    itk = LoadImage(image_only=True)(str(tmp_path / "sax"))
    ours = LoadImage(image_only=True, reader=CineDicomReader())(str(tmp_path / "sax"))
    assert type(LoadImage(image_only=True).readers[-1]).__name__ != "CineDicomReader"
    assert tuple(ours.shape) == tuple(itk.shape) == image.shape
    torch.testing.assert_close(ours.as_tensor(), itk.as_tensor(), rtol=0, atol=0)
    np.testing.assert_allclose(np.asarray(ours.affine), np.asarray(itk.affine), atol=1e-4)
    np.testing.assert_allclose(ours.meta["original_affine"], itk.meta["original_affine"], atol=1e-4)
    assert np.isnan(ours.meta["original_channel_dim"]) and np.isnan(itk.meta["original_channel_dim"])
    channel_first = LoadImage(image_only=True, reader=CineDicomReader(), ensure_channel_first=True)
    assert tuple(channel_first(str(tmp_path / "sax")).shape) == (1, *image.shape)


def test_other_formats_still_go_to_monai_readers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image, _, affine = phantom_volume(seed=3, n_slices=3)
    write_nifti(tmp_path / "case.nii.gz", image, affine)
    reader = CineDicomReader()
    assert not reader.verify_suffix(str(tmp_path / "case.nii.gz")) and not reader.verify_suffix(str(tmp_path))
    with caplog.at_level(logging.INFO):
        ours = LoadImage(image_only=True, reader=reader)(str(tmp_path / "case.nii.gz"))
    assert "unable to load" not in caplog.text
    plain = LoadImage(image_only=True)(str(tmp_path / "case.nii.gz"))
    torch.testing.assert_close(ours.as_tensor(), plain.as_tensor())
    np.testing.assert_allclose(np.asarray(ours.affine), np.asarray(plain.affine))
    with pytest.raises(ValueError, match="not a folder holding a DICOM series"):
        CineDicomReader(fallback=False).read(str(tmp_path / "case.nii.gz"))


# validation ------------------------------------------------------------------------------------------------------
def _spoil(folder: Path, problem: str) -> None:
    files = sorted(folder.glob("*.dcm"))
    if problem == "orientation":
        rewrite(files[5], ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, 0.9, 0.43588989])
    elif problem == "spacing":
        rewrite(files[2], PixelSpacing=[1.2, 1.2])
    elif problem == "matrix":
        rewrite(files[7], Rows=12)
    elif problem == "off_line":
        for path in files_at_position(folder, 2):
            ds = pydicom.dcmread(str(path))
            rewrite(path, ImagePositionPatient=[float(ds.ImagePositionPatient[0]) + 4.0, *ds.ImagePositionPatient[1:]])
    elif problem == "missing_slice":
        for path in files_at_position(folder, 2):
            path.unlink()
    elif problem == "phases":
        files[4].unlink()


SPOILED = {
    "orientation": "mixed image orientations",
    "spacing": "varying PixelSpacing",
    "matrix": "varying Rows/Columns",
    "off_line": "not on one line along the slice normal",
    "missing_slice": "missing slice: a gap of 16.00 mm",
    "phases": "unequal number of cardiac phases per slice position",
}


@pytest.mark.parametrize("problem", sorted(SPOILED))
def test_each_bad_series_is_refused_naming_it(tmp_path: Path, problem: str) -> None:
    folder = write_cine_series(tmp_path / "cine", random_frames((10, 8, 5, 3)), oblique_affine(), seed=1)
    uid = str(pydicom.dcmread(str(next(folder.glob("*.dcm")))).SeriesInstanceUID)
    _spoil(folder, problem)
    with pytest.raises(DicomSeriesError, match=SPOILED[problem]) as err:
        read_dicom_series(folder)
    assert str(folder) in str(err.value) and "'SAX cine'" in str(err.value) and uid in str(err.value)
    assert isinstance(err.value, VolumeError)
    with pytest.raises(DicomSeriesError, match=SPOILED[problem]):  # LoadImage must not fall back to ITK
        LoadImage(image_only=True, reader=CineDicomReader())(str(folder))


def test_not_mr_too_few_positions_and_several_series_are_refused(tmp_path: Path) -> None:
    frames, affine = random_frames((10, 8, 4, 3)), oblique_affine()
    ct = write_cine_series(tmp_path / "ct", frames, affine, Modality="CT", SeriesDescription="chest")
    with pytest.raises(DicomSeriesError, match="modality CT is not MR") as err:
        read_series_grid(ct)
    assert "'chest'" in str(err.value) and str(ct) in str(err.value)
    lax = write_cine_series(tmp_path / "lax", frames[:, :, :1], affine, SeriesDescription="4ch cine")
    with pytest.raises(DicomSeriesError, match=r"1 slice position\(s\) is not a short-axis stack") as err:
        read_series_grid(lax)
    assert "'4ch cine'" in str(err.value)
    with pytest.raises(DicomSeriesError, match=r"2 slice position\(s\) is not a short-axis stack"):
        read_series_grid(write_cine_series(tmp_path / "two", frames[:, :, :2], affine))
    both = write_cine_series(tmp_path / "both", frames, affine, SeriesDescription="SAX cine")
    write_cine_series(both, frames[:, :, :, :1], affine, SeriesDescription="SAX stack")
    with pytest.raises(DicomSeriesError, match="holds 2 DICOM series") as err:
        read_series_grid(both)
    assert "'SAX cine'" in str(err.value) and "'SAX stack'" in str(err.value)
    # one phase of >= 3 positions is a valid 3D stack
    assert read_series_grid(write_cine_series(tmp_path / "stack", frames[..., :1], affine)).shape == (10, 8, 4, 1)


# DICOM-SEG -------------------------------------------------------------------------------------------------------
def test_single_phase_dicom_seg_and_saving_rules(tmp_path: Path) -> None:
    frames, affine = random_frames((12, 10, 4, 1)), oblique_affine()
    anonymised = {k: None for k in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyTime")}
    folder = write_cine_series(tmp_path / "sax", frames, affine, **anonymised)
    label = np.zeros((12, 10, 4), dtype=np.uint8)
    label[2:6, 1:4, 1] = 1
    label[6:9, 5:9, 1:3] = 3  # myocardium (2) absent: still described
    out = tmp_path / "out"
    # a bad label writes nothing
    for bad in (label[:, :, :3], np.where(label == 3, 7, label)):
        with pytest.raises(VolumeError):
            write_dicom_seg(bad, folder, out / "x.dcm")
    assert not out.exists() or not any(out.iterdir())

    save = SaveDicomSegd(keys="pred", output_dir=str(out))
    data = {"pred": MetaTensor(torch.from_numpy(label[None]), affine=torch.as_tensor(affine)), "source": str(folder)}
    written = save(data)
    assert written["pred_file"] == str(out / "sax_seg.dcm") and sorted(p.name for p in out.iterdir()) == ["sax_seg.dcm"]
    seg = pydicom.dcmread(str(out / "sax_seg.dcm"))
    source = pydicom.dcmread(str(next(folder.glob("*.dcm"))))
    assert seg.SOPClassUID == SEG_STORAGE and seg.Modality == "SEG"
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert_segments(seg)
    np.testing.assert_array_equal(decode_seg([out / "sax_seg.dcm"], folder, (12, 10, 4, 1))[..., 0], label)
    # no overwriting unless asked; a non-DICOM input or a label off the grid is refused
    before = (out / "sax_seg.dcm").read_bytes()
    with pytest.raises(FileExistsError, match="exists and is kept"):
        save(data)
    assert (out / "sax_seg.dcm").read_bytes() == before
    SaveDicomSegd(keys="pred", output_dir=str(out), overwrite=True)(data)
    write_nifti(tmp_path / "case.nii.gz", frames[..., 0], affine)
    with pytest.raises(VolumeError, match="case.nii.gz: output_format 'dicom_seg' needs a folder"):
        save({**data, "source": str(tmp_path / "case.nii.gz")})
    shifted = {**data, "pred": MetaTensor(torch.from_numpy(label[None]), affine=torch.as_tensor(affine + 0.5))}
    with pytest.raises(VolumeError, match="not the series grid"):
        SaveDicomSegd(keys="pred", output_dir=str(tmp_path / "shifted"))(shifted)
    assert sorted(p.name for p in out.iterdir()) == ["sax_seg.dcm"] and not (tmp_path / "shifted").exists()
    with pytest.raises(ValueError, match="output_format 'dicomseg' is unknown"):
        CheckOutputFormatd("dicomseg")


# the inference workflow ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle_copy(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def cine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """Folders: ``dicom/sax`` a 2-phase phantom cine series (shuffled), ``frames/{ed,es}`` its phases as single-phase
    series, ``nifti/sax.nii.gz`` its first phase; and the affine."""
    root = tmp_path_factory.mktemp("cine")
    ed, _, affine = phantom_volume(seed=8, n_slices=4, frame="ED")
    es, _, _ = phantom_volume(seed=8, n_slices=4, frame="ES")
    frames = np.round(np.stack([ed, es], axis=-1))
    write_cine_series(root / "dicom" / "sax", frames, affine, seed=5)
    write_dicom_series(root / "frames" / "ed", frames[..., 0], affine)
    write_dicom_series(root / "frames" / "es", frames[..., 1], affine)
    (root / "nifti").mkdir()
    write_nifti(root / "nifti" / "sax.nii.gz", frames[..., 0], affine)
    return root, affine


@pytest.mark.slow
def test_workflow_segments_a_dicom_cine_frame_by_frame_and_writes_dicom_seg(
    bundle: Path, cine: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    root, affine = cine
    dicom_dir = root / "dicom"
    infer(bundle, dicom_dir, tmp_path / "nifti")
    infer(bundle, root / "frames", tmp_path / "frames")
    written = nib.load(tmp_path / "nifti" / "sax_seg.nii.gz")
    assert written.shape == (50, 46, 4, 2)
    np.testing.assert_allclose(written.affine, affine, atol=1e-4)
    label = np.asarray(written.dataobj)
    assert set(np.unique(label).tolist()) <= {0, 1, 2, 3} and len(np.unique(label)) > 1
    for f, name in enumerate(("ed", "es")):  # each phase as segmenting it alone
        alone = np.asarray(nib.load(tmp_path / "frames" / f"{name}_seg.nii.gz").dataobj)
        assert (label[..., f] == alone).mean() > 0.999, f"phase {f} differs from segmenting it alone"

    summary = infer(bundle, dicom_dir, tmp_path / "seg", output_format="dicom_seg")
    paths = dicom_seg_paths(tmp_path / "seg" / "sax_seg.dcm", 2)
    assert [p.name for p in paths] == ["sax_seg_phase01.dcm", "sax_seg_phase02.dcm"]
    assert sorted(p.name for p in (tmp_path / "seg").glob("*.dcm")) == [p.name for p in paths]
    assert summary[0]["files"]["pred"] == str(paths[0])
    segs = [pydicom.dcmread(str(p)) for p in paths]
    source = pydicom.dcmread(str(next((dicom_dir / "sax").glob("*.dcm"))))
    assert len({s.SeriesInstanceUID for s in segs}) == 1 and segs[0].SeriesInstanceUID != source.SeriesInstanceUID
    assert [int(s.InstanceNumber) for s in segs] == [1, 2]
    for seg in segs:
        assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID and seg.StudyInstanceUID == source.StudyInstanceUID
        assert_segments(seg)
    index = expected_index(dicom_dir / "sax")
    for f, seg in enumerate(segs):  # each phase's instance references only that phase's source instances
        items = seg.PerFrameFunctionalGroupsSequence
        refs = {i.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID for i in items}
        assert {index[uid][1] for uid in refs} == {f}
    np.testing.assert_array_equal(decode_seg(paths, dicom_dir / "sax", label.shape), label)


@pytest.mark.slow
def test_dicom_seg_refuses_a_non_dicom_input(bundle: Path, cine: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    root, _ = cine
    with pytest.raises(Exception) as err:
        infer(bundle, root / "nifti", tmp_path / "out", output_format="dicom_seg")
    chain, error = [], err.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any("sax.nii.gz: output_format 'dicom_seg' needs a folder holding one DICOM series" in m for m in chain)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
