"""Active learning: the unlabeled image on which the FTN and the STN disagree most, by the stored scores.

Scores come from the ``disagreement`` scoring method (:mod:`lib.scoring.disagreement`), which MONAI Label runs in the
background; this strategy only reads them from the datastore. An image handed out by this strategy is not handed out
again (to anyone) for ``lease_seconds``, so annotators working at the same time get different images, and one
annotator asking again gets the next one; when every candidate is leased, the one leased longest ago is chosen.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from ..errors import http_error, sentence
from ..scoring import SCORE_KEY

logger = logging.getLogger(__name__)

METRICS = ("disagreement", "entropy")


class Disagreement(Strategy):
    """Pick the unlabeled image with the highest stored score (``metric``: ``disagreement``, default, or ``entropy``).

    Images without a score yet rank after every scored one. Responds 409 when no image has a score.

    Args:
        lease_seconds: how long an image handed out by this strategy is kept from being handed out again.
    """

    def __init__(self, lease_seconds: float = 3600.0) -> None:
        super().__init__(
            "Unlabeled image where FTN and STN disagree most, by the stored scores; concurrent annotators get "
            "different images (params: metric = disagreement | entropy)"
        )
        self.lease_seconds = float(lease_seconds)

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        metric = request.get("metric", "disagreement")
        if metric not in METRICS:
            raise http_error(422, sentence(f"unknown metric '{metric}'", fix=f"use one of {', '.join(METRICS)}"))
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        strategy = request.get("strategy", "disagreement")
        now = time.time()
        candidates = []
        for image_id in images:
            info = datastore.get_image_info(image_id)
            score = info.get(SCORE_KEY, {}).get(metric)
            leased_at = info.get("strategy", {}).get(strategy, {}).get("ts", 0)
            free = now - leased_at >= self.lease_seconds
            # free images first, then the highest score (unscored last), then the oldest lease, then the id
            candidates.append((not free, score is None, -(score or 0.0), leased_at, image_id))
        if all(c[1] for c in candidates):
            raise http_error(
                409,
                sentence(
                    "no image has a disagreement score yet (scoring runs in the background)",
                    fix="POST /scoring/disagreement starts it; use the strategy 'random' meanwhile",
                ),
            )
        leased, _, negative_score, _, image_id = min(candidates)
        logger.info(
            "disagreement: selected %s (%s %.4f; %d unlabeled, %d leased)", image_id, metric, -negative_score,
            len(images), sum(c[0] for c in candidates),
        )  # fmt: skip
        return {"id": image_id, metric: -negative_score, "reissued": bool(leased)}
