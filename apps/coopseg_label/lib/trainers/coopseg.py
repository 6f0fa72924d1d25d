"""The ``coopseg`` trainer: the bundle's cooperative training (train.json, ``CooperativeTrainer``) on submitted labels.

A thin ``BundleTrainTask``: both networks (FTN and STN are one ``network`` whose flat state dict is
``models/model.pt``) are warm-started from the live weights, strictly; the empty ``run_id`` Slicer sends means the
default ``run``; with too few labels to split off validation, validation uses the training labels, so the bundle's
key-metric checkpoint ``models/model.pt`` is written and goes live for the next inference. Training reads 3D stacks:
labels of 4D cines are left out (with a warning) until the bundle trains on cine frames.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import torch
from monai.handlers import CheckpointLoader
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleTrainTask

from ..bundle_code import bundle_module

logger = logging.getLogger(__name__)


def _is_cine(path: str) -> bool:
    """Whether a NIfTI image has frames (a 4th axis longer than 1); other formats count as 3D stacks."""
    if not str(path).endswith((".nii", ".nii.gz")):
        return False
    shape = nib.load(str(path)).shape
    return len(shape) > 3 and shape[3] > 1


class CoopSegTrainTask(BundleTrainTask):
    """Fine-tune FTN + STN cooperatively on the datastore's final labels (see the module docstring).

    Args:
        path: the served working bundle (``configs``, ``scripts``, ``models``).
        conf: the app's ``--conf`` options.
        max_epochs: default epochs offered to clients.
    """

    def __init__(self, path: str, conf: dict[str, str], max_epochs: int = 10) -> None:
        super().__init__(path, conf, load_strict=True)
        self.default_max_epochs = max_epochs

    def config(self) -> dict[str, Any]:
        """MONAI Label's bundle trainer options (device, pretrained, multi-GPU, gpus, tracking, ...) with this app's
        default epochs; ``model_filename`` offers only flat weights, not resumable training states."""
        config = super().config()
        config["max_epochs"] = self.default_max_epochs
        config["model_filename"] = [f for f in config.get("model_filename", []) if not f.startswith("training_state")]
        return config

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict:
        request = dict(request)
        if not request.get("run_id"):  # Slicer sends "", which would make monai.bundle run resolve everything
            request["run_id"] = "run"
        if not datastore.datalist():
            raise ValueError(
                "no submitted labels: save at least one final label (Slicer: Submit Label; REST: PUT /datastore/label)"
                " before training."
            )
        return super().__call__(request, datastore)

    def _partition_datalist(self, datalist: list[dict], request: dict, shuffle: bool = False):
        cines = [d for d in datalist if _is_cine(d["image"])]
        if cines:
            logger.warning("leaving out %d cine label(s): training reads 3D stacks.", len(cines))
            datalist = [d for d in datalist if d not in cines]
        if not datalist:
            raise ValueError("every submitted label belongs to a 4D cine; training needs labels of 3D stacks.")
        train, val = super()._partition_datalist(datalist, request, shuffle)
        if not train:
            train = list(datalist)
        if val is not None and len(val) == 0:
            logger.warning("only %d labelled image(s): validating on the training labels.", len(datalist))
            val = list(train)
        return train, val

    def _load_checkpoint(self, model_pytorch: str, pretrained: bool, train_handlers: list) -> None:
        """Warm-start from ``models/model.pt``, or from the state dict of ``models/model.ts`` when only that exists."""
        train_handlers[:] = [h for h in train_handlers if h.get("_target_") != CheckpointLoader.__name__]
        if not pretrained:
            return
        weights = bundle_module(Path(self.bundle_path), "weights")
        load_path = Path(model_pytorch)
        if not load_path.is_file():
            live = weights.find_weights(Path(self.bundle_path) / "models")
            if live is not None and live.suffix == ".ts":  # CheckpointLoader reads state dicts: convert it once
                cache = Path(self.bundle_path) / "cache"
                cache.mkdir(exist_ok=True)
                load_path = cache / "warm_start_from_model_ts.pt"
                torch.save(weights.load_state_dict(live), load_path)
        if not load_path.is_file():
            logger.warning("no weights to warm-start from in %s: training from scratch.", load_path.parent)
            return
        logger.info("warm-starting FTN + STN from %s", load_path)
        train_handlers.insert(
            0,
            {
                "_target_": CheckpointLoader.__name__,
                "load_path": str(load_path),
                "load_dict": {self.model_dict_key: f"$@{self.const.key_network()}"},
                "strict": True,
                "map_location": "cpu",
            },
        )
