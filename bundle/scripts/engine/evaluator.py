"""Whole-volume validation of both predictions of one FTN pass: STN(FTN(x)) and FTN(x)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from ..inference.quality import QUALITY_KEYS, quality_scores
from .trainer import enabled_handlers, unwrap_network

__all__ = ["CooperativeEvaluator"]


class CooperativeEvaluator(SupervisedEvaluator):
    """Whole-volume validation that scores both predictions from one FTN pass.

    ``pred`` is STN(FTN(x)) (the model-selection output) and ``pred_ftn`` is FTN(x), both logits from the
    evaluator's ``inferer`` (a ``SliceInferer`` for 3D volumes); ``disagreement_score`` and ``entropy_score`` are each
    volume's quality scores (:func:`scripts.inference.quality.quality_scores`). Takes ``SupervisedEvaluator``'s
    arguments; ``None`` entries of ``val_handlers`` (handlers disabled on this process) are skipped.
    """

    def __init__(self, *args: Any, val_handlers: Sequence | None = None, **kwargs: Any) -> None:
        super().__init__(*args, val_handlers=enabled_handlers(val_handlers), **kwargs)

    def _iteration(self, engine: CooperativeEvaluator, batchdata: dict[str, torch.Tensor]) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        net = unwrap_network(engine.network)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        autocast = torch.autocast(inputs.device.type, **engine.amp_kwargs) if engine.amp else nullcontext()
        with engine.mode(engine.network), autocast:
            refined, ftn = engine.inferer(inputs, net.predict_both)
        engine.state.output[Keys.PRED] = refined
        engine.state.output["pred_ftn"] = ftn
        # per volume: how much FTN and STN disagree (the quality score inference reports), before discretisation
        scores = [
            quality_scores(torch.softmax(ftn[i : i + 1].float(), 1), torch.softmax(refined[i : i + 1].float(), 1))
            for i in range(ftn.shape[0])
        ]
        for key in QUALITY_KEYS:
            engine.state.output[key] = torch.tensor([s[key] for s in scores])
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
