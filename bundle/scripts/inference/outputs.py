"""Post-processing of the inference workflow: per-frame labels from probabilities, and atomic saving.

Arrays are channel-first with frames as channels (see :mod:`scripts.inference.inferer`); by the time these run,
``Invertd`` has mapped them back to the input's original grid.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection
from monai.data import MetaTensor
from monai.data.image_writer import resolve_writer
from monai.transforms import MapTransform, SaveImaged
from monai.utils import ensure_tuple, ensure_tuple_rep

from ..files import atomic_path
from .inputs import volume_stem

__all__ = ["FrameArgmaxd", "SaveVolumed"]

logger = logging.getLogger(__name__)


class FrameArgmaxd(MapTransform):
    """``F * K, H, W, D`` class probabilities -> ``F, H, W, D`` label codes (``dtype``, on the CPU), meta kept."""

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
