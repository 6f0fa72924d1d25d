"""Active learning: the unlabeled image on which the FTN and the STN disagree most (or the most uncertain one)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from ..errors import http_error

logger = logging.getLogger(__name__)

METRICS = ("disagreement", "entropy")


class Disagreement(Strategy):
    """Pick the unlabeled image with the highest mean FTN-STN disagreement (``metric="disagreement"``, default) or
    the highest mean normalised entropy of the STN-refined prediction (``metric="entropy"``).

    Scores come from the ``coopseg`` model (``CoopSegInferTask.uncertainty_scores``) and are cached per image file
    and weights file (path and modification time), so only new images or new weights cost an inference. Images the
    bundle cannot read are skipped with a warning.

    Args:
        task: returns the ``coopseg`` infer task, or None when no trained weights exist.
    """

    def __init__(self, task: Callable[[], Any]) -> None:
        super().__init__("Unlabeled image where FTN and STN disagree most (params: metric = disagreement | entropy)")
        self.task = task
        self._cache: dict[tuple, dict[str, float]] = {}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        metric = request.get("metric", "disagreement")
        if metric not in METRICS:
            raise http_error(422, f"unknown metric '{metric}'; use one of {', '.join(METRICS)}.")
        images = datastore.get_unlabeled_images()
        if not images:
            return None
        task = self.task()
        if task is None:
            raise http_error(503, "the disagreement strategy needs trained weights; see GET /info/ (or use random).")
        weights = task.live_weights()
        best: tuple[float, str] | None = None
        for image_id in sorted(images):
            path = datastore.get_image_uri(image_id)
            key = (path, os.path.getmtime(path), str(weights), os.path.getmtime(weights) if weights else 0)
            if key not in self._cache:
                try:
                    self._cache[key] = task.uncertainty_scores(path, request.get("device"))
                except Exception as e:  # an unusable image must not block the others
                    logger.warning("disagreement: skipping %s (%s)", image_id, e)
                    continue
            score = self._cache[key][metric]
            if best is None or score > best[0]:
                best = (score, image_id)
        if best is None:
            return None
        logger.info("disagreement: selected %s (%s %.4f of %d unlabeled)", best[1], metric, best[0], len(images))
        return {"id": best[1], metric: best[0]}
