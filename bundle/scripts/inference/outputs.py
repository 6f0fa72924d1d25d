"""Post-processing of the inference workflow: per-frame labels from probabilities, and atomic saving.

Arrays are channel-first with frames as channels (see :mod:`scripts.inference.inferer`); by the time these run,
``Invertd`` has mapped them back to the input's original grid. Labels are saved as volumes (``output_format``
``"nifti"``: NIfTI or any format MONAI writes, :class:`SaveVolumed`) or as DICOM-SEG on the input DICOM series
(``"dicom_seg"``, :class:`SaveDicomSegd`); :class:`CheckOutputFormatd` checks the choice before an input is read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection
from monai.data import MetaTensor
from monai.data.image_writer import resolve_writer
from monai.transforms import MapTransform, SaveImaged, Transform
from monai.utils import ensure_tuple, ensure_tuple_rep

from ..files import atomic_path
from ..volumes import VolumeError
from .dicom import read_series_grid, write_dicom_seg
from .inputs import is_dicom_series_dir, volume_stem

__all__ = ["OUTPUT_FORMATS", "CheckOutputFormatd", "FrameArgmaxd", "PerFramed", "SaveDicomSegd", "SaveVolumed"]

OUTPUT_FORMATS = ("nifti", "dicom_seg")
"""``nifti``: label volumes in ``output_ext`` (NIfTI by default); ``dicom_seg``: DICOM-SEG on DICOM series inputs."""

logger = logging.getLogger(__name__)


class FrameArgmaxd(MapTransform):
    """``F * K, H, W, D`` class probabilities -> ``F, H, W, D`` label codes (``dtype``, on the CPU), meta kept.

    MONAI's ``AsDiscreted(argmax=True)`` takes the argmax over all channels; here the channels hold several frames of
    ``K`` classes each, and the argmax is taken per frame.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int = 4,
        dtype: torch.dtype = torch.uint8,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.num_classes = num_classes
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            prob = d[key]
            channels = prob.shape[0]
            if channels % self.num_classes:
                raise ValueError(f"{key}: {channels} channels is not a multiple of num_classes={self.num_classes}.")
            raw = prob.as_tensor() if isinstance(prob, MetaTensor) else torch.as_tensor(prob)
            k = self.num_classes
            # max over the leading axis of each frame's K channels: several times faster than argmax(dim=1) on CPU
            label = torch.stack([raw[f * k : (f + 1) * k].max(dim=0).indices for f in range(channels // k)])
            label = label.to(device="cpu", dtype=self.dtype)
            d[key] = MetaTensor(label, meta=prob.meta) if isinstance(prob, MetaTensor) else label
        return d


class PerFramed(MapTransform):
    """Apply a MONAI array transform to each frame of ``F, H, W, D`` label codes (and, with ``per_slice``, to each
    slice ``1, H, W`` of each frame), meta kept.

    MONAI's label clean-up transforms read a label map as one channel; here the channels are the frames of a cine.
    ``per_slice`` makes an N-d operation 2D: hole filling in a short-axis slice, where a blood pool's hole is open
    towards the next slice in 3D.
    """

    def __init__(
        self, keys: KeysCollection, transform: Transform, per_slice: bool = False, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = transform
        self.per_slice = per_slice

    def _run(self, array: torch.Tensor) -> torch.Tensor:
        out = self.transform(array)
        return out.as_tensor() if isinstance(out, MetaTensor) else torch.as_tensor(out)

    def _apply(self, frame: torch.Tensor) -> torch.Tensor:
        if not self.per_slice:
            return self._run(frame)
        return torch.stack([self._run(frame[..., s].clone()) for s in range(frame.shape[-1])], dim=-1)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            raw = label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(label)
            frames = [self._apply(raw[f : f + 1].clone()).to(raw.dtype) for f in range(raw.shape[0])]
            out = torch.cat(frames, dim=0)
            d[key] = MetaTensor(out, meta=label.meta) if isinstance(label, MetaTensor) else out
        return d


class SaveVolumed(SaveImaged):
    """Write ``F, H, W, D`` arrays as ``<output_dir>/<input stem>_<postfix><output_ext>``, atomically.

    A ``SaveImaged`` variant (so tools that drop ``SaveImaged`` from a bundle's post-processing, like MONAI Label's
    ``BundleInferTask``, drop it too) with per-key file names, no resampling and no overwriting.

    A 3D input (F = 1) gives a 3D file ``H, W, D``; a 4D cine gives ``H, W, D, F``. The affine is the array's own
    (the input's, after ``Invertd``); nothing is resampled. Each file is written to a hidden temporary name in
    ``output_dir`` and renamed into place, so a crash never leaves a half-written output; an existing output is kept
    and the transform raises, unless ``overwrite``. The written path is stored under ``<key>_file``.

    Args:
        keys: the arrays to write.
        output_dir: where to write (created if needed).
        output_postfix: per key, the file name suffix (``"seg"`` -> ``case1_seg.nii.gz``).
        output_ext: ``.nii.gz`` (default), ``.nii``, ``.nrrd``, ``.mha`` ...
        output_dtype: per key, the stored data type.
        overwrite: replace existing outputs.
        source_key: the data key holding the input path (names the output); the array's ``filename_or_obj``
            otherwise.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str,
        output_postfix: str | Sequence[str] = "seg",
        output_ext: str = ".nii.gz",
        output_dtype: DtypeLike | Sequence[DtypeLike] = np.uint8,
        overwrite: bool = False,
        source_key: str = "source",
        allow_missing_keys: bool = False,
    ) -> None:
        output_ext = output_ext if output_ext.startswith(".") else f".{output_ext}"
        postfixes = ensure_tuple_rep(output_postfix, len(ensure_tuple(keys)))
        dtypes = ensure_tuple_rep(output_dtype, len(postfixes))
        super().__init__(
            keys,
            output_dir=output_dir,
            output_postfix=postfixes[0],
            output_ext=output_ext,
            resample=False,
            output_dtype=dtypes[0],
            separate_folder=False,
            allow_missing_keys=allow_missing_keys,
        )
        self.output_dir = Path(output_dir)
        self.output_postfix = postfixes
        self.output_ext = output_ext
        self.output_dtype = dtypes
        self.overwrite = overwrite
        self.source_key = source_key
        self.writer_cls = resolve_writer(self.output_ext.lstrip("."))[0]

    def output_path(self, source: str, postfix: str) -> Path:
        return self.output_dir / f"{volume_stem(source)}_{postfix}{self.output_ext}"

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key, postfix, dtype in self.key_iterator(d, self.output_postfix, self.output_dtype):
            array = d[key]
            meta = array.meta if isinstance(array, MetaTensor) else {}
            source = str(d.get(self.source_key) or meta.get("filename_or_obj") or key)
            path = self.output_path(source, postfix)
            if path.exists() and not self.overwrite:
                raise FileExistsError(
                    f"{path} exists and is kept; choose another --output_dir or pass --overwrite True."
                )
            self.output_dir.mkdir(parents=True, exist_ok=True)
            values = array.as_tensor() if isinstance(array, MetaTensor) else torch.as_tensor(array)
            values = values.detach().cpu()
            writer = self.writer_cls(output_dtype=dtype)
            if values.shape[0] == 1:  # 3D: MONAI's writers add a trailing channel; drop it (keep a 1-slice axis)
                writer.set_data_array(values[0], channel_dim=None, squeeze_end_dims=False)
                if writer.data_obj.ndim == values.ndim:
                    writer.data_obj = writer.data_obj[..., 0]
                if hasattr(writer, "channel_dim"):
                    writer.channel_dim = None
            else:
                writer.set_data_array(values, channel_dim=0, squeeze_end_dims=False)
            affine = meta.get("affine")
            writer.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
            with atomic_path(path) as tmp:
                writer.write(str(tmp))
            d[f"{key}_file"] = str(path)
            logger.debug("wrote %s %s", path, tuple(values.shape))
        return d


def _source_of(data: Mapping[Hashable, object], key: Hashable, source_key: str) -> str:
    """The input path of ``data``: ``data[source_key]``, else ``data[key]``'s ``filename_or_obj``, else the key."""
    meta = getattr(data.get(key), "meta", None) or {}
    return str(data.get(source_key) or meta.get("filename_or_obj") or key)


def _require_dicom_series(source: str) -> None:
    if not is_dicom_series_dir(source):
        raise VolumeError(
            f"{source}: output_format 'dicom_seg' needs a folder holding one DICOM series as input (DICOM-SEG "
            "references the source instances); use output_format 'nifti' for NIfTI, NRRD or MetaImage inputs."
        )


class CheckOutputFormatd(Transform):
    """Check ``output_format`` (at construction) and that each input suits it, before the input is read.

    ``"dicom_seg"`` needs a DICOM series folder as input; any input suits ``"nifti"`` (then a no-op). The input path
    is ``data[source_key]``, else ``data[image_key]`` when it is a path.
    """

    def __init__(self, output_format: str = "nifti", source_key: str = "source", image_key: str = "image") -> None:
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format {output_format!r} is unknown; choose one of {', '.join(OUTPUT_FORMATS)}.")
        self.output_format = output_format
        self.source_key = source_key
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, object]) -> Mapping[Hashable, object]:
        if self.output_format == "dicom_seg":
            image = data.get(self.image_key)
            path = data.get(self.source_key) or (image if isinstance(image, str | os.PathLike) else None)
            _require_dicom_series(str(path) if path else _source_of(data, self.image_key, self.source_key))
        return data


class SaveDicomSegd(MapTransform):
    """Write ``F, H, W, D`` label codes on a DICOM series input as DICOM-SEG, ``<output_dir>/<stem>_<postfix>.dcm``.

    The sibling of :class:`SaveVolumed` for DICOM inputs: same names (the input folder's name as stem), written
    atomically, an existing output kept (the transform raises) unless ``overwrite``. The label must lie on the input
    series' grid (after ``Invertd`` it does; its affine is checked). A cine (F > 1) gives one SEG instance per phase,
    ``<stem>_<postfix>_phase01.dcm`` .., in one SEG series (see :func:`scripts.inference.dicom.write_dicom_seg`).
    A non-DICOM input raises :class:`scripts.volumes.VolumeError` naming it; nothing is written then. The written
    path (the first file for a cine) is stored under ``<key>_file``, all of them under ``<key>_files``.

    Args:
        keys: the label maps to write.
        output_dir: where to write (created if needed).
        output_postfix: per key, the file name suffix (``"seg"`` -> ``case1_seg.dcm``).
        overwrite: replace existing outputs.
        source_key: the data key holding the input path (the DICOM series folder); the array's ``filename_or_obj``
            otherwise.
        series_description: of the SEG series written.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str,
        output_postfix: str | Sequence[str] = "seg",
        overwrite: bool = False,
        source_key: str = "source",
        series_description: str = "CoopSeg segmentation",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_postfix = ensure_tuple_rep(output_postfix, len(self.keys))
        self.overwrite = overwrite
        self.source_key = source_key
        self.series_description = series_description

    def output_path(self, source: str, postfix: str) -> Path:
        return self.output_dir / f"{volume_stem(source)}_{postfix}.dcm"

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key, postfix in self.key_iterator(d, self.output_postfix):
            source = _source_of(d, key, self.source_key)
            _require_dicom_series(source)
            label = d[key]
            values = label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(label)
            affine = label.meta.get("affine") if isinstance(label, MetaTensor) else None
            try:
                written = write_dicom_seg(
                    np.moveaxis(values.detach().cpu().numpy(), 0, -1),  # F, H, W, D -> H, W, D, F
                    read_series_grid(source),
                    self.output_path(source, postfix),
                    overwrite=self.overwrite,
                    affine=None if affine is None else np.asarray(affine, dtype=np.float64),
                    series_description=self.series_description,
                )
            except FileExistsError as e:
                raise FileExistsError(f"{e} Choose another --output_dir or pass --overwrite True.") from e
            d[f"{key}_file"], d[f"{key}_files"] = str(written[0]), [str(p) for p in written]
            logger.debug("wrote %s %s", written[0], tuple(values.shape))
        return d
