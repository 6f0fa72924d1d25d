"""Scoring: how much the FTN and the STN disagree on each unlabeled image, stored in the datastore.

MONAI Label runs scoring methods in the background (``/scoring/<method>``; a subprocess in server mode) when the server
starts, after training and after each "next sample", and on demand (``POST /scoring/disagreement``). Each image's
scores are stored in its datastore info under ``coopseg_scores`` together with the weights they were computed with,
so an image is scored again only when it is new or the weights changed (fine-tuning). The ``disagreement`` strategy
reads them; it never runs the network itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

logger = logging.getLogger(__name__)

SCORE_KEY = "coopseg_scores"


def weights_signature(path: Path | None) -> str:
    """Which weights a score belongs to: file name, size and modification time (changes when fine-tuning saves)."""
    if path is None:
        return ""
    stat = os.stat(path)
    return f"{Path(path).name}:{stat.st_size}:{stat.st_mtime_ns}"


class DisagreementScoring(ScoringMethod):
    """Per unlabeled image: the mean FTN-STN disagreement and the mean normalised entropy of the refined prediction.

    Args:
        task: returns the ``coopseg`` infer task (its ``uncertainty_scores``), or None when no trained weights exist.
    """

    def __init__(self, task: Callable[[], Any]) -> None:
        super().__init__("FTN-STN disagreement and entropy per unlabeled image, for the 'disagreement' strategy")
        self.task = task

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        task = self.task()
        if task is None:
            logger.warning("disagreement scoring: no trained weights yet; nothing scored.")
            return {"scored": [], "kept": [], "failed": {}, "weights": ""}
        weights = weights_signature(task.live_weights())
        scored, kept, failed = [], [], {}
        for image_id in sorted(datastore.get_unlabeled_images()):
            stored = datastore.get_image_info(image_id).get(SCORE_KEY, {})
            if stored.get("weights") == weights and not request.get("force"):
                kept.append(image_id)
                continue
            try:
                scores = task.uncertainty_scores(datastore.get_image_uri(image_id), request.get("device"))
            except Exception as e:  # an unusable image must not block the others
                logger.warning("disagreement scoring: skipping %s (%s)", image_id, e)
                failed[image_id] = str(e)[:300]
                continue
            entry = {"disagreement": scores["disagreement"], "entropy": scores["entropy"], "weights": weights}
            datastore.update_image_info(image_id, {SCORE_KEY: entry})
            scored.append(image_id)
        logger.info(
            "disagreement scoring (%s): %d scored, %d already current, %d failed", weights, len(scored), len(kept),
            len(failed),
        )  # fmt: skip
        return {"scored": scored, "kept": kept, "failed": failed, "weights": weights}
