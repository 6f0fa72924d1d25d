"""Weight averaging: an exponential moving average (EMA) of the network's weights, kept beside the trained network.

At a constant learning rate a single snapshot is wherever the last noisy steps left the weights; the average of the
recent weights is a settled model. One constant-rate run then yields, at every budget of ``checkpoint_iterations``,
both the raw snapshot (``model_iter<N>.pt``) and the averaged model (``model_ema_iter<N>.pt``), each a flat
``CoopSegNet`` state dict loadable like ``models/model.pt``.

The average is PyTorch's ``torch.optim.swa_utils.AveragedModel``, updated after every iteration with
``w_avg <- decay * w_avg + (1 - decay) * w`` (the first update copies the weights, so there is no start-up bias).
``decay`` 0.995 weights the last ~200 iterations (half-life 138).

**BatchNorm buffers are averaged too** (``use_buffers=True``): each layer's ``running_mean`` and ``running_var``
follow the same EMA as the weights, so the statistics stem from the same stretch of training as the averaged weights
(they are themselves a momentum-0.1 average of batch statistics under the moving weights). They are not recomputed
for the averaged weights with a pass over the training data (``torch.optim.swa_utils.update_bn``): that pass would
cost an epoch per saved model and draw augmentations from the training streams. ``num_batches_tracked`` (an integer)
is copied from the network.

The average is part of the resumable training state (:class:`~scripts.engine.checkpoints.SaveTrainingState`), so a
resumed run continues it exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from ignite.engine import Engine, Events
from torch.optim.swa_utils import AveragedModel

from .checkpoints import SaveAtIterations
from .trainer import inner_network

__all__ = ["SaveAveragedAtIterations", "UpdateAveragedNetwork", "averaged_network", "ema_multi_avg_fn"]

logger = logging.getLogger(__name__)


def ema_multi_avg_fn(decay: float) -> Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor], torch.Tensor], None]:
    """``AveragedModel``'s ``multi_avg_fn`` for an EMA: floating tensors ``avg <- decay * avg + (1 - decay) * new``,
    other tensors (BatchNorm's ``num_batches_tracked``) copied from the network."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}.")

    @torch.no_grad()
    def update(averaged: Sequence[torch.Tensor], current: Sequence[torch.Tensor], _n: torch.Tensor) -> None:
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(list(averaged), list(current), 1.0 - decay)
        else:
            for avg, new in zip(averaged, current, strict=True):
                avg.copy_(new)

    return update


def averaged_network(network: torch.nn.Module, enabled: bool = True, decay: float = 0.995) -> AveragedModel | None:
    """The EMA of ``network``'s weights and BatchNorm buffers (a DDP or ``CooperativeStep`` wrapper is unwrapped), or
    None when not ``enabled`` (train.json's ``weight_averaging`` false)."""
    if not enabled:
        return None
    return AveragedModel(inner_network(network), multi_avg_fn=ema_multi_avg_fn(decay), use_buffers=True)


class UpdateAveragedNetwork:
    """Update ``averaged`` from ``network`` after every training iteration.

    Attach it after the optimiser step (any training handler is) and before the handlers that save the average.
    """

    def __init__(self, averaged: AveragedModel, network: torch.nn.Module) -> None:
        if averaged is None:
            raise ValueError("no averaged network to update: set weight_averaging true.")
        self.averaged = averaged
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        self.averaged.update_parameters(inner_network(self.network))


class SaveAveragedAtIterations(SaveAtIterations):
    """:class:`~scripts.engine.checkpoints.SaveAtIterations` for the averaged network: the flat state dict of the
    average (``AveragedModel.module``) as ``<save_dir>/model_ema_iter<NNNNNN>.pt``."""

    @staticmethod
    def filename(iteration: int) -> str:
        return f"model_ema_iter{iteration:06d}.pt"
