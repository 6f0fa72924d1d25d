"""Multi-process (DistributedDataParallel) helpers for ``configs/multi_gpu_train.json``.

``BroadcastBuffers`` makes every rank's BatchNorm statistics equal to rank 0's at the end of each epoch (DDP already
broadcasts them before each forward; this makes the full state identical at epoch boundaries, when the ranks validate
and rank 0 saves). ``rank_partition`` splits the validation volumes over the ranks. ``RankReport`` runs on every rank
and says what the rank did: iterations, the sampler epoch, the indices its ``DistributedSampler`` gave it and, at the
end, a SHA-256 of the network's state, which must be the same on every rank.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.data import partition_dataset

from ..files import write_json_atomic

__all__ = ["state_sha256", "rank_partition", "BroadcastBuffers", "RankReport"]

logger = logging.getLogger(__name__)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def state_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and values of ``module.state_dict()`` (parameters and buffers)."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class BroadcastBuffers:
    """At ``EPOCH_COMPLETED``, copy rank 0's buffers (BatchNorm running statistics) to every rank.

    Must be attached on every rank and before the rank-0-only handlers (it is a collective operation).
    """

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        for buffer in self.network.buffers():
            dist.broadcast(buffer.data, src=0)


class RankReport:
    """Per-rank log lines, and optionally ``<output_dir>/rank<r>.json``, describing this rank's training.

    Logged on every rank: each epoch's iteration count and sampler epoch; at the end the SHA-256 of ``network``'s
    state (:func:`state_sha256`). The JSON holds ``rank``, ``world_size``, ``device``, ``iterations``, ``samples``,
    ``sampler_epochs`` (the ``DistributedSampler`` epoch seen at each epoch start, so ``set_epoch`` is checkable),
    ``indices`` (per epoch, the dataset indices the sampler gave this rank) and ``state_sha256``.

    Args:
        network: the (unwrapped) network whose state is hashed.
        output_dir: where to write the JSON; empty or None writes nothing.
    """

    def __init__(self, network: torch.nn.Module, output_dir: str | os.PathLike | None = None) -> None:
        self.network = network
        self.output_dir = Path(output_dir) if output_dir else None
        self.iterations = 0
        self.samples = 0
        self.sampler_epochs: list[int | None] = []
        self.indices: list[list[int]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def epoch_started(self, engine: Engine) -> None:
        sampler = getattr(getattr(engine, "data_loader", None), "sampler", None)
        self.sampler_epochs.append(getattr(sampler, "epoch", None))
        self.indices.append([int(i) for i in sampler] if sampler is not None else [])

    def iteration_completed(self, engine: Engine) -> None:
        self.iterations += 1
        batch = engine.state.batch
        if isinstance(batch, dict) and "image" in batch:
            self.samples += int(len(batch["image"]))

    def epoch_completed(self, engine: Engine) -> None:
        rank, world = _rank_and_world()
        logger.info(
            "rank %d/%d: epoch %d done, %d iterations so far, sampler epoch %s, %d samples this epoch.",
            rank, world, engine.state.epoch, self.iterations, self.sampler_epochs[-1], len(self.indices[-1]),
        )  # fmt: skip

    def completed(self, engine: Engine) -> dict[str, Any]:
        rank, world = _rank_and_world()
        report = {
            "rank": rank,
            "world_size": world,
            "device": str(getattr(engine.state, "device", "")),
            "epochs": int(engine.state.epoch),
            "iterations": self.iterations,
            "samples": self.samples,
            "sampler_epochs": self.sampler_epochs,
            "indices": self.indices,
            "state_sha256": state_sha256(self.network),
        }
        logger.info("rank %d/%d: finished, network state sha256 %s.", rank, world, report["state_sha256"])
        if self.output_dir is not None:
            write_json_atomic(self.output_dir / f"rank{rank}.json", report, indent=None)
        return report


def rank_partition(data: Sequence[Any], rank: int | None = None, world_size: int | None = None) -> list[Any]:
    """This rank's share of ``data`` (``data[rank::world_size]``), for distributed validation.

    MONAI's metrics all-gather their buffers across ranks, so every rank must validate; each caches and scores only its
    share. Raises ``ValueError`` if some rank would get nothing (MONAI's gather needs at least one item per rank).
    """
    if rank is None or world_size is None:
        rank, world_size = _rank_and_world()
    if len(data) < world_size:
        raise ValueError(
            f"distributed validation needs at least one validation volume per process: {len(data)} volume(s) for "
            f"{world_size} processes; add validation data or use fewer processes."
        )
    return list(partition_dataset(list(data), num_partitions=world_size, shuffle=False, even_divisible=False)[rank])
