"""Scoring: how much the FTN and the STN disagree on each unlabeled image, stored in the datastore.

MONAI Label runs scoring methods in the background (``/scoring/<method>``; a subprocess in server mode) when the server
starts, after training and after each "next sample", and on demand (``POST /scoring/disagreement``). Each image's
scores are stored in its datastore info under ``coopseg_scores`` together with the weights they were computed with,
so an image is scored again only when it is new or the weights changed (fine-tuning). The ``disagreement`` strategy
reads them; it never runs the network itself.

On a PACS, scoring is a polite client: it scores the series already retrieved (for a user, or by an earlier pass) and
retrieves at most ``retrievals`` more per pass (the request's ``retrievals`` overrides it; the app's pass at start
asks for none). An image that scoring could not use (HTTP 422: not a short-axis MR series, inconsistent geometry...)
is remembered with its reason (:class:`lib.scoring.memory.FailureMemory`) and not tried again until it changes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from .memory import FailureMemory

logger = logging.getLogger(__name__)

SCORE_KEY = "coopseg_scores"
UNUSABLE = 422  # the app's answer for an image it cannot use: remembered; other failures are tried again


def weights_signature(path: Path | None) -> str:
    """Which weights a score belongs to: file name, size and modification time (changes when fine-tuning saves)."""
    if path is None:
        return ""
    stat = os.stat(path)
    return f"{Path(path).name}:{stat.st_size}:{stat.st_mtime_ns}"


def _is_retrieved(datastore: Datastore, image_id: str) -> bool:
    """Whether scoring ``image_id`` needs no retrieval (only a PACS datastore retrieves: ``is_retrieved``)."""
    check = getattr(datastore, "is_retrieved", None)
    return bool(check(image_id)) if check is not None else True


def _version(datastore: Datastore, image_id: str) -> str:
    version = getattr(datastore, "image_version", None)
    return str(version(image_id)) if version is not None else ""


def _reason(error: Exception) -> str:
    return str(getattr(error, "detail", None) or error)[:300]


class DisagreementScoring(ScoringMethod):
    """Per unlabeled image: the mean FTN-STN disagreement and the mean normalised entropy of the refined prediction.

    Args:
        task: returns the ``coopseg`` infer task (its ``uncertainty_scores``), or None when no trained weights exist.
        retrievals: how many images not yet retrieved one pass may retrieve (a request's ``retrievals`` overrides).
        memory: the JSON file of images that could not be scored (None: not kept between passes).
    """

    def __init__(self, task: Callable[[], Any], retrievals: int = 2, memory: Path | None = None) -> None:
        super().__init__(
            "FTN-STN disagreement and entropy per unlabeled image, for the 'disagreement' strategy; on a PACS only "
            f"retrieved series and at most {retrievals} more per pass (params: retrievals, force)"
        )
        self.task = task
        self.retrievals = int(retrievals)
        self.memory = memory

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        result: dict[str, Any] = {"scored": [], "kept": [], "failed": {}, "skipped": {}, "not_retrieved": []}
        task = self.task()
        if task is None:
            logger.warning("disagreement scoring: no trained weights yet; nothing scored.")
            return {**result, "weights": ""}
        weights = weights_signature(task.live_weights())
        budget = int(request.get("retrievals", self.retrievals))
        failures = FailureMemory(self.memory)
        for image_id in sorted(datastore.get_unlabeled_images()):
            stored = datastore.get_image_info(image_id).get(SCORE_KEY, {})
            if stored.get("weights") == weights and not request.get("force"):
                result["kept"].append(image_id)
                continue
            version = _version(datastore, image_id)
            known = failures.reason(image_id, version)
            if known is not None and not request.get("force"):
                result["skipped"][image_id] = known
                continue
            if not _is_retrieved(datastore, image_id):
                if budget <= 0:
                    result["not_retrieved"].append(image_id)
                    continue
                budget -= 1
            try:
                scores = task.uncertainty_scores(datastore.get_image_uri(image_id), request.get("device"))
            except Exception as e:  # an unusable image must not block the others
                reason = _reason(e)
                logger.warning("disagreement scoring: skipping %s: %s", image_id, reason)
                result["failed"][image_id] = reason
                if getattr(e, "status_code", None) == UNUSABLE:
                    failures.remember(image_id, version, reason)
                continue
            failures.forget(image_id)
            entry = {"disagreement": scores["disagreement"], "entropy": scores["entropy"], "weights": weights}
            datastore.update_image_info(image_id, {SCORE_KEY: entry})
            result["scored"].append(image_id)
        failures.save()
        logger.info(
            "disagreement scoring (%s): %d scored, %d already current, %d failed, %d skipped (failed before, "
            "unchanged), %d not retrieved (at most %d retrievals per pass)", weights, len(result["scored"]),
            len(result["kept"]), len(result["failed"]), len(result["skipped"]), len(result["not_retrieved"]),
            int(request.get("retrievals", self.retrievals)),
        )  # fmt: skip
        return {**result, "weights": weights}
