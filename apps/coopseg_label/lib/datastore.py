"""A local datastore that refuses images and labels the bundle cannot use, and never loses a submitted label.

Images are 3D short-axis stacks or 4D cines (``H, W, slices, frames``, segmented frame by frame); a cine's label is
4D too (one label frame per image frame).

Checks use the bundle's own loader and validation (``scripts.volumes``). Rejections are HTTP errors that name
the image and the problem: 422 for unusable content, 404 for an unknown image id. Before a label replaces an
earlier one, the earlier file is copied to ``<studies>/.label_history/<tag>/``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from monailabel.datastore.local import LocalDatastore

from .bundle_code import bundle_module
from .errors import http_error, problem_of, sentence

logger = logging.getLogger(__name__)


def check_image_file(bundle: Path, path: str, name: str) -> tuple[int, ...]:
    """The shape ``(frames, H, W, slices)`` of a usable 3D stack (1 frame) or 4D cine; HTTP 422 naming the problem."""
    volumes = bundle_module(bundle, "volumes")
    try:
        image = volumes.load_volume(path, name)
        volumes.check_image(image, name)
    except volumes.VolumeError as e:
        raise http_error(422, sentence(problem_of(e, name), f"in {name}"), str(e)) from e
    return tuple(image.shape)


class CoopSegDatastore(LocalDatastore):
    """``LocalDatastore`` over the image files the bundle accepts (``scripts.volumes.IMAGE_SUFFIXES``: NIfTI, NRRD,
    MetaImage) that validates uploads and label submissions.

    Args:
        studies: the studies folder.
        bundle: the served bundle (its ``scripts`` check the files).
        num_classes: label codes allowed in submitted labels are ``0 .. num_classes - 1`` (default: the bundle's
            ``scripts.labels.NUM_CLASSES``).
        kwargs: passed to ``LocalDatastore``.
    """

    def __init__(self, studies: str, bundle: Path, num_classes: int | None = None, **kwargs: Any) -> None:
        self.bundle = Path(bundle)
        self.num_classes = num_classes or bundle_module(self.bundle, "labels").NUM_CLASSES
        suffixes = bundle_module(self.bundle, "volumes").IMAGE_SUFFIXES
        kwargs.setdefault("extensions", tuple(f"*{suffix}" for suffix in suffixes))
        super().__init__(studies, **kwargs)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        name = f"upload '{image_id or os.path.basename(image_filename)}'"
        check_image_file(self.bundle, image_filename, name)
        return super().add_image(image_id, image_filename, image_info)

    def image_version(self, image_id: str) -> str:
        """What changes when the image file changes: its size and modification time."""
        stat = os.stat(self.get_image_uri(image_id))
        return f"{stat.st_size}:{stat.st_mtime_ns}"

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        if image_id not in self._datastore.objects:
            raise http_error(404, sentence(f"no image '{image_id}' in the datastore", fix="upload it before its label"))
        volumes = bundle_module(self.bundle, "volumes")
        try:
            volumes.check_label_file(
                label_filename,
                self.get_image_uri(image_id),
                self.num_classes,
                label_name=f"for image '{image_id}'",
                image_name=f"image '{image_id}'",
            )
        except volumes.VolumeError as e:
            name = f"for image '{image_id}'"
            raise http_error(422, sentence(problem_of(e, f"label {name}"), f"in the label {name}"), str(e)) from e
        previous = self.get_label_uri(image_id, label_tag) if self._datastore.label(image_id, label_tag) else ""
        if previous and os.path.isfile(previous):
            history = Path(self._datastore_path) / ".label_history" / label_tag
            history.mkdir(parents=True, exist_ok=True)
            kept = history / f"{time.strftime('%Y%m%d-%H%M%S')}_{os.path.basename(previous)}"
            shutil.copy2(previous, kept)
            logger.info("previous %s label of %s kept as %s", label_tag, image_id, kept)
        return super().save_label(image_id, label_filename, label_tag, label_info)
