"""Validation as deployment: whole volumes through the inference workflow's own pipeline, scored on the input grid.

The evaluator runs the deployment inferer (:class:`scripts.inference.inferer.CoopSegInferer`, whole slices) once per
volume and keeps both predictions of that pass, FTN(x) and STN(FTN(x)), as class probabilities on the preprocessed
grid. :class:`DeploymentOutputsd` then maps each to label codes on the volume's input grid with the deployment's
label post-processing (:meth:`scripts.inference.deployment.DeploymentConfig.label_postprocessing`), so the Dice that
selects ``model.pt`` is computed on exactly the masks the inference workflow and the MONAI Label app return.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.transforms import MapTransform
from monai.utils.enums import CommonKeys as Keys

from ..inference.inferer import FTN_PROB
from ..inference.quality import QUALITY_KEYS, frame_quality_scores
from .trainer import enabled_handlers, inner_network

__all__ = ["PROBABILITY_KEYS", "CooperativeEvaluator", "DeploymentOutputsd"]

PROBABILITY_KEYS = {"ftn": "pred_ftn", "ftn_stn": Keys.PRED}
"""Evaluator outputs (class probabilities ``F * K, H, W, D`` on the preprocessed grid) of the FTN and of FTN + STN."""


class CooperativeEvaluator(SupervisedEvaluator):
    """Whole-volume validation of both predictions of one FTN pass, through the deployment inferer.

    Output per batch: ``image`` and ``label`` as given, ``pred`` the class probabilities of STN(FTN(x)) and
    ``pred_ftn`` those of FTN(x) (``B, F * K, H, W, D`` on the image's grid), and each volume's quality scores
    ``disagreement_score``, ``entropy_score`` (``B``; worst frame), computed as the inference workflow computes them
    (:func:`scripts.inference.quality.frame_quality_scores`). ``inferer`` must provide
    ``predict(inputs, network, maps)`` (:class:`scripts.inference.inferer.CoopSegInferer` with ``refine=True``).
    Takes ``SupervisedEvaluator``'s arguments; ``None`` entries of ``val_handlers`` (handlers disabled on this
    process) are skipped.
    """

    def __init__(self, *args: Any, val_handlers: Sequence | None = None, **kwargs: Any) -> None:
        super().__init__(*args, val_handlers=enabled_handlers(val_handlers), **kwargs)
        if not hasattr(self.inferer, "predict") or not getattr(self.inferer, "refine", False):
            raise ValueError(
                "CooperativeEvaluator needs the deployment inferer with refine=True (CoopSegInferer), which returns "
                f"FTN and FTN + STN probabilities from one pass; got {type(self.inferer).__name__}."
            )

    def _iteration(self, engine: CooperativeEvaluator, batchdata: dict[str, torch.Tensor]) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        net = inner_network(engine.network)  # the inferer needs segment() and refine_logits(), not the wrappers
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        autocast = torch.autocast(inputs.device.type, **engine.amp_kwargs) if engine.amp else nullcontext()
        with engine.mode(engine.network), autocast:
            outputs = engine.inferer.predict(inputs, net, maps=(FTN_PROB,))
        engine.state.output[Keys.PRED] = outputs[Keys.PRED]
        engine.state.output[PROBABILITY_KEYS["ftn"]] = outputs[FTN_PROB]
        scores = frame_quality_scores(outputs[FTN_PROB], outputs[Keys.PRED], inputs.shape[1])
        for key in QUALITY_KEYS:
            engine.state.output[key] = scores[key].amax(dim=1)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class DeploymentOutputsd(MapTransform):
    """Label codes on the input grid for each named output, by the deployment's label post-processing.

    Args:
        outputs: ``{output key: (probability key, pipeline)}``; ``pipeline`` maps ``{"pred": probabilities, "image":
            preprocessed image}`` to ``{"pred": label codes F, H, W, D on the input grid}`` (a
            :meth:`scripts.inference.deployment.DeploymentConfig.label_postprocessing`).
        image_key: the preprocessed image whose applied operations the pipeline inverts.

    The probability keys are replaced by nothing: each output key receives its label codes, other keys are kept.
    """

    def __init__(self, outputs: Mapping[str, tuple[str, Callable]], image_key: str = Keys.IMAGE) -> None:
        super().__init__(list(outputs))
        self.outputs = {str(k): (str(src), pipeline) for k, (src, pipeline) in outputs.items()}
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        sources = {src: d[src] for src, _ in self.outputs.values()}
        for key, (src, pipeline) in self.outputs.items():
            probabilities = sources[src] if isinstance(sources[src], MetaTensor) else MetaTensor(sources[src])
            d[key] = pipeline({self.image_key: d[self.image_key], Keys.PRED: probabilities})[Keys.PRED]
        return d
