"""The inference engine: an evaluator without labels whose inferer also returns uncertainty maps, and its summary."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents

from ..labels import LABELS, NUM_CLASSES

__all__ = ["CoopSegPredictor", "InferenceSummary"]

logger = logging.getLogger(__name__)



class CoopSegPredictor(SupervisedEvaluator):
    """``SupervisedEvaluator`` for unlabelled volumes: ``output = {"pred": ..., <maps>}`` from ``inferer.predict``.

    Takes ``SupervisedEvaluator``'s arguments plus ``maps``, a subset of :data:`scripts.inference.inferer.MAP_NAMES`;
    ``inferer`` is a :class:`scripts.inference.inferer.CoopSegInferer` (any inferer when ``maps`` is empty).
    Batches hold ``image`` ``B, F, H, W, D``; labels are not needed.
    """

    def __init__(self, *args: Any, maps: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.maps = tuple(maps)

    def _iteration(self, engine: CoopSegPredictor, batchdata: dict[str, Any]) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs = batchdata["image"].to(engine.state.device, non_blocking=engine.non_blocking)
        with engine.mode(engine.network):
            if engine.maps or hasattr(engine.inferer, "predict"):
                outputs = engine.inferer.predict(inputs, engine.network, maps=engine.maps)
            else:
                outputs = {"pred": engine.inferer(inputs, engine.network)}
        engine.state.output = outputs
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # decollation and post-processing run on this event
        return engine.state.output


class InferenceSummary:
    """Log, per volume, the files written and the volume of each structure (per frame for a 4D cine).

    Reads ``pred`` (label codes ``F, H, W, D`` on the input grid, its affine giving the voxel size) and every
    ``<key>_file`` of the post-processed outputs; ``engine.state.summary`` collects the rows.
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        engine.state.summary = []

    def iteration_completed(self, engine: Engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for out in outputs:
            label = out.get("pred")
            if label is None:
                continue
            affine = np.asarray(getattr(label, "affine", np.eye(4)), dtype=np.float64)
            voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
            codes = torch.as_tensor(label)
            frames = []
            for f in range(codes.shape[0]):
                counts = torch.bincount(codes[f].reshape(-1).long(), minlength=NUM_CLASSES)
                frames.append({lbl.abbreviation: round(float(counts[lbl.code]) * voxel_ml, 2) for lbl in LABELS})
            files = {k[: -len("_file")]: v for k, v in out.items() if isinstance(k, str) and k.endswith("_file")}
            row = {"shape": tuple(codes.shape[1:]), "frames": frames, "files": files}
            engine.state.summary.append(row)
            volumes = "; ".join(
                ("" if len(frames) == 1 else f"frame {i}: ") + ", ".join(f"{k} {v:.1f} ml" for k, v in fr.items())
                for i, fr in enumerate(frames)
            )
            logger.info("%s -> %s | %s", files.get("pred", "?"), row["shape"], volumes)

    def completed(self, engine: Engine) -> None:
        n = len(engine.state.summary)
        written = sum(len(r["files"]) for r in engine.state.summary)
        logger.info("segmented %d volume(s), wrote %d file(s).", n, written)
