"""Resumable training: the full training state saved at every epoch end and restored with MONAI's checkpoint handlers.

A training state file ``<ckpt_dir>/training_state_checkpoint_epoch=<n>.pt`` (the newest only) holds the network,
the optimiser, the learning-rate scheduler, the weight average when one is kept, the trainer (epoch and iteration) and
the run's :class:`TrainingProgress`: every random stream (torch, CUDA, numpy, Python, and each randomizable transform
of the training dataset), the validator's best metric and the best-model saver's record. :class:`SaveTrainingState`
writes it with MONAI's ``CheckpointSaver``; :class:`ResumeTraining` restores it with MONAI's ``CheckpointLoader``
before the first iteration, so an interrupted run continues exactly where its last completed epoch left it: the same
batches, augmentations, latent masks and updates as the run that was never interrupted.

Both handlers add the engine they are attached to as ``trainer`` to the objects they save or load, so a config can
list them among the trainer's own handlers without referring to the trainer (a reference cycle).

Every checkpoint file is written losslessly (:class:`AtomicCheckpointSaver`): MONAI's ``CheckpointSaver`` writes in
place and, when it keeps ``n_saved`` files, removes the old file before writing the new one, so a run killed while
saving leaves no complete training state at all. Here a file is written to a hidden temporary sibling and renamed into
place, and a file being replaced is removed only after its successor is complete.

Exact continuation needs the data loader's workers to be started afresh each epoch (``persistent_workers=False``,
train.json's default): their random streams are then seeded from the restored main process streams.
"""

from __future__ import annotations

import logging
import random
import re
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.transforms import Randomizable

from ..files import atomic_path

__all__ = [
    "STATE_PREFIX",
    "AtomicCheckpointSaver",
    "ResumeTraining",
    "SaveAtIterations",
    "SaveTrainingState",
    "TrainingProgress",
    "best_model_record",
    "latest_training_state",
    "state_epoch",
]

logger = logging.getLogger(__name__)

STATE_PREFIX = "training_state"
_EPOCH = re.compile(r"epoch=(\d+)\.pt$")


def latest_training_state(ckpt_dir: str | Path, prefix: str = STATE_PREFIX) -> Path | None:
    """The training state file of the latest epoch in ``ckpt_dir``, or None."""
    states = ((state_epoch(path), path) for path in Path(ckpt_dir).glob(f"{prefix}_*.pt"))
    found = [(epoch, path) for epoch, path in states if epoch is not None]
    return max(found)[1] if found else None


def state_epoch(path: str | Path) -> int | None:
    """The epoch a training state file was saved after, read from its name (``..._epoch=<n>.pt``), or None."""
    match = _EPOCH.search(Path(path).name)
    return int(match.group(1)) if match else None


def best_model_record(state_path: str | Path) -> dict[str, Any] | None:
    """Where the best model (``model.pt``) of a run came from, read from one of its training state files.

    Returns ``{"epoch", "iteration", "val_dice", "epochs_trained", "iterations_trained"}``: the epoch whose validation
    gave the best key metric, the iteration it ended at (validation runs at epoch ends), that metric, and how far the
    run had come when the state was saved. None when no validation had run yet.
    """
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    progress, trainer = state.get("progress", {}), state.get("trainer", {})
    epoch = int(progress.get("best_metric_epoch", -1))
    if epoch < 1:
        return None
    epoch_length, trained = int(trainer["epoch_length"]), int(trainer["iteration"])
    return {"epoch": epoch, "iteration": epoch * epoch_length, "val_dice": float(progress["best_metric"]),
            "epochs_trained": trained // epoch_length, "iterations_trained": trained}  # fmt: skip


def _is_complete(path: Path) -> bool:
    """Whether ``path`` is a whole ``torch.save`` archive: a zip file with its central directory (written last)."""
    try:
        with zipfile.ZipFile(path):
            return True
    except (zipfile.BadZipFile, OSError):
        return False


class _LosslessDiskSaver(DiskSaver):
    """An ignite ``DiskSaver`` that writes each file atomically and removes replaced files only after the next save.

    Args:
        dirname: where files go (created if needed).
        filename: a fixed file name used instead of the one ignite builds (MONAI's ``final_filename`` and
            ``key_metric_filename``), or None.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, require_empty=False)
        self.filename = filename
        self._to_remove: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        name = self.filename or filename
        with atomic_path(self.dirname / name) as tmp:
            torch.save(checkpoint, tmp, **self.kwargs)
        for old in self._to_remove:
            if old != name:
                (self.dirname / old).unlink(missing_ok=True)
        self._to_remove = []

    def remove(self, filename: str) -> None:
        """Called by ignite before it saves the replacement: remember the file, remove it after that save."""
        self._to_remove.append(self.filename or filename)

    def remove_after_next_save(self, filenames: list[str]) -> None:
        """Files of ``dirname`` written by an earlier process, to be replaced by the next complete save."""
        self._to_remove.extend(filenames)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) whose files are never half-written and never lost while replaced.

    Each file is written to a hidden temporary sibling and renamed into place; a file that a newer one replaces
    (``n_saved``, a better key metric, the same fixed name) is removed only after the newer one is complete. A run
    killed at any moment therefore leaves the previous checkpoint or the new one, whole.
    """

    def __init__(self, save_dir: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(save_dir, *args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                fixed = getattr(checkpoint.save_handler, "filename", None)
                checkpoint.save_handler = _LosslessDiskSaver(self.save_dir, filename=fixed)

    def replace_after_next_save(self, filenames: list[str]) -> None:
        """Remove ``filenames`` of ``save_dir`` (written by an earlier process) once the next interval save is
        complete, as ``n_saved`` would have if this process had written them."""
        if self._interval_checkpoint is None:
            raise ValueError("replace_after_next_save needs interval saving (save_interval > 0).")
        self._interval_checkpoint.save_handler.remove_after_next_save(filenames)


def _randomizables(obj: Any, seen: set[int] | None = None) -> Iterator[Randomizable]:
    """Every ``Randomizable`` reachable from ``obj`` through attributes, lists and dicts, in a fixed order."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, (str, bytes, int, float, torch.Tensor, np.ndarray)):
        return
    seen.add(id(obj))
    if isinstance(obj, Randomizable):
        yield obj
    if isinstance(obj, (list, tuple)):
        children: list[Any] = list(obj)
    elif isinstance(obj, dict):
        children = list(obj.values())
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        children = [v for k, v in vars(obj).items() if not k.startswith("__")]
    else:
        return
    for child in children:
        yield from _randomizables(child, seen)


def _numpy_state(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.as_tensor(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}  # fmt: skip


def _numpy_restore(state: Mapping[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]


class TrainingProgress:
    """What a resumed run needs besides the network, optimiser, scheduler and trainer (a ``state_dict`` object).

    Args:
        dataset: the training dataset; the random state of every randomizable transform in it is kept.
        validator: the evaluator of ``ValidationHandler``; its best metric and epoch are kept.
        best_checkpoint: the ``CheckpointSaver`` that writes the best model; its record of the best score is kept, so
            a resumed run replaces ``model.pt`` only with a better model, as the uninterrupted run would.

    All states are tensors and numbers, so the file loads with ``torch.load(weights_only=True)``.
    """

    def __init__(self, dataset: Any = None, validator: Engine | None = None, best_checkpoint: Any = None) -> None:
        self.dataset = dataset
        self.validator = validator
        self.best_checkpoint = best_checkpoint

    def _best_record(self) -> Any:
        return getattr(self.best_checkpoint, "_key_metric_checkpoint", None)

    def state_dict(self) -> dict[str, Any]:
        version, mt_state, gauss = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state(np.random.get_state()),
            "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64),
                       "gauss": float("nan") if gauss is None else float(gauss)},  # fmt: skip
            "transforms": [_numpy_state(r.R.get_state()) for r in _randomizables(self.dataset)],
        }
        if self.validator is not None:
            state["best_metric"] = float(self.validator.state.best_metric)
            state["best_metric_epoch"] = int(self.validator.state.best_metric_epoch)
        record = self._best_record()
        if record is not None:
            state["best_saved"] = [
                {"priority": float(item.priority), "filename": item.filename} for item in record._saved
            ]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        np.random.set_state(_numpy_restore(state["numpy"]))
        python = state["python"]
        gauss = None if np.isnan(python["gauss"]) else python["gauss"]
        random.setstate((python["version"], tuple(int(v) for v in python["state"]), gauss))
        transforms = list(_randomizables(self.dataset))
        if len(transforms) != len(state["transforms"]):
            raise ValueError(
                f"the training state holds {len(state['transforms'])} random transform states but the training "
                f"dataset has {len(transforms)} randomizable transforms: resume with the configuration it was saved "
                "with."
            )
        for transform, saved in zip(transforms, state["transforms"], strict=True):
            transform.R.set_state(_numpy_restore(saved))
        if self.validator is not None and "best_metric" in state:
            self.validator.state.best_metric = state["best_metric"]
            self.validator.state.best_metric_epoch = state["best_metric_epoch"]
        record = self._best_record()
        if record is not None and "best_saved" in state:
            record.load_state_dict({"_saved": [(s["priority"], s["filename"]) for s in state["best_saved"]]})


class _TrainingState:
    """The objects of a training state file; ``trainer`` is the engine the handler is attached to."""

    def __init__(
        self,
        ckpt_dir: str | Path,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any = None,
        dataset: Any = None,
        validator: Engine | None = None,
        best_checkpoint: Any = None,
        averaged_network: torch.nn.Module | None = None,
    ) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.objects: dict[str, Any] = {"model": network, "optimizer": optimizer}
        if lr_scheduler is not None:
            self.objects["lr_scheduler"] = lr_scheduler
        if averaged_network is not None:  # the weight average (scripts.engine.averaging), continued on resume
            self.objects["averaged_network"] = averaged_network
        self.objects["progress"] = TrainingProgress(dataset, validator, best_checkpoint)

    def objects_for(self, engine: Engine) -> dict[str, Any]:
        return {**self.objects, "trainer": engine}


class SaveTrainingState(_TrainingState):
    """Save the training state every ``interval`` epochs (:class:`AtomicCheckpointSaver`; the newest file is kept, and
    the states of earlier processes in ``ckpt_dir`` are removed once this run's first state is complete).

    Args:
        ckpt_dir: where ``training_state_checkpoint_epoch=<n>.pt`` is written.
        network, optimizer, lr_scheduler: the trained objects (the scheduler may be None).
        dataset, validator, best_checkpoint: see :class:`TrainingProgress`.
        averaged_network: the weight average of :mod:`scripts.engine.averaging`, or None.
        interval: epochs between saves (1: every epoch).

    Attach it after the validation handler, so the saved state includes that epoch's validation.
    """

    def __init__(self, ckpt_dir: str | Path, *args: Any, interval: int = 1, **kwargs: Any) -> None:
        super().__init__(ckpt_dir, *args, **kwargs)
        if interval < 1:
            raise ValueError(f"interval must be >= 1 epoch, got {interval}.")
        self.interval = interval

    def attach(self, engine: Engine) -> None:
        saver = AtomicCheckpointSaver(
            save_dir=str(self.ckpt_dir),
            save_dict=self.objects_for(engine),
            file_prefix=STATE_PREFIX,
            epoch_level=True,
            save_interval=self.interval,
            n_saved=1,
        )
        # states left by earlier processes (the one resumed from, or a previous run's, already backed up) give way to
        # this run's first complete state: one file remains, and it is this run's
        earlier = sorted(p.name for p in self.ckpt_dir.glob(f"{STATE_PREFIX}_*.pt"))
        saver.replace_after_next_save(earlier)
        saver.attach(engine)


class ResumeTraining(_TrainingState):
    """Restore the latest training state of ``ckpt_dir`` before the first iteration (MONAI ``CheckpointLoader``).

    Takes the arguments of :class:`SaveTrainingState` (without ``interval``) plus ``map_location``. Raises
    ``FileNotFoundError`` naming ``ckpt_dir`` when there is nothing to resume, and ``ValueError`` naming the file when
    the latest training state is incomplete (cut short by a version that wrote in place). The run then continues at the
    epoch after the saved one and stops at the configured number of epochs.
    """

    def __init__(self, ckpt_dir: str | Path, *args: Any, map_location: Any = None, **kwargs: Any) -> None:
        super().__init__(ckpt_dir, *args, **kwargs)
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        path = latest_training_state(self.ckpt_dir)
        if path is None:
            raise FileNotFoundError(
                f"resume: no training state ({STATE_PREFIX}_*.pt) in {self.ckpt_dir}; it is written at the end of "
                "every epoch of a run with the same --ckpt_dir. Start without --resume to train from the beginning."
            )
        if not _is_complete(path):
            raise ValueError(
                f"resume: {path} is not a complete training state (no zip central directory): it was cut short while "
                "being written. Move it out of the way to resume from an earlier state in the same folder, if any, or "
                "start without --resume."
            )
        logger.info("resuming training from %s", path)
        objects = self.objects_for(engine)
        CheckpointLoader(load_path=str(path), load_dict=objects, map_location=self.map_location).attach(engine)


class SaveAtIterations:
    """Save the network's flat state dict as ``<save_dir>/model_iter<NNNNNN>.pt`` after each listed iteration.

    For learning curves: one run yields the model at several training budgets (e.g. 250, 500, 1000, 1500 iterations),
    each loadable like ``models/model.pt``. Files are written atomically and an existing one is replaced (a resumed
    run writes the same weights again). MONAI's ``CheckpointSaver`` saves at a fixed interval; these budgets are
    irregular.

    Args:
        save_dir: where the files go.
        network: the trained network (a DDP wrapper is unwrapped).
        iterations: the iteration counts (1-based, as ``engine.state.iteration``) after which to save.
    """

    def __init__(self, save_dir: str | Path, network: torch.nn.Module, iterations: list[int]) -> None:
        if any(int(i) < 1 for i in iterations):
            raise ValueError(f"iterations must be >= 1, got {list(iterations)}.")
        self.save_dir = Path(save_dir)
        self.network = network
        self.iterations = sorted({int(i) for i in iterations})

    @staticmethod
    def filename(iteration: int) -> str:
        return f"model_iter{iteration:06d}.pt"

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=self._due), self)

    def _due(self, engine: Engine, event: int) -> bool:
        return event in self.iterations

    def __call__(self, engine: Engine) -> None:
        state = getattr(self.network, "module", self.network).state_dict()
        path = self.save_dir / self.filename(engine.state.iteration)
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        logger.info("saved the model at iteration %d: %s", engine.state.iteration, path)
