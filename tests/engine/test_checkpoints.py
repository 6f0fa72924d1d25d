"""Checkpoint files are never half-written and never lost while being replaced (``AtomicCheckpointSaver``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from scripts.engine.checkpoints import AtomicCheckpointSaver, SaveTrainingState, latest_training_state


class Killed(Exception):
    """Stands for a process killed while ``torch.save`` was writing."""


def _save_cut_short(obj, f, *args, **kwargs) -> None:
    """Write the first bytes of a checkpoint, then stop, as a killed process would."""
    with open(f, "wb") as handle:
        handle.write(b"PK\x03\x04 part of a checkpoint")
    raise Killed("killed while saving")


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _weights(path: Path) -> torch.Tensor:
    return torch.load(path, map_location="cpu", weights_only=True)["weight"]


def test_an_interrupted_save_keeps_the_previous_training_state_whole(tmp_path: Path, monkeypatch) -> None:
    network = torch.nn.Linear(2, 2)
    engine = Engine(lambda engine, batch: None)
    AtomicCheckpointSaver(
        str(tmp_path), save_dict={"model": network}, file_prefix="state", epoch_level=True, save_interval=1, n_saved=1
    ).attach(engine)
    engine.run([0], max_epochs=2)
    kept = tmp_path / "state_model_epoch=2.pt"
    assert _listing(tmp_path) == [kept.name]  # epoch 1 removed once epoch 2 was complete: n_saved=1 holds
    saved = network.weight.detach().clone()

    with torch.no_grad():
        network.weight.add_(1.0)
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", _save_cut_short)
        with pytest.raises(Killed):
            engine.run([0], max_epochs=3)
    # MONAI's CheckpointSaver removes epoch 2 before it writes epoch 3 in place: nothing whole would be left.
    assert _listing(tmp_path) == [kept.name]
    assert torch.equal(_weights(kept), saved)


def test_the_best_model_file_is_replaced_only_by_a_complete_one(tmp_path: Path, monkeypatch) -> None:
    network = torch.nn.Linear(2, 2)
    scores = iter([0.5, 0.7, 0.9])

    def validate(engine: Engine, batch) -> None:
        engine.state.metrics["dice"] = next(scores)

    saver = AtomicCheckpointSaver(
        str(tmp_path), save_dict={"model": network}, save_key_metric=True, key_metric_name="dice",
        key_metric_filename="model.pt",
    )  # fmt: skip
    validator = Engine(validate)
    saver.attach(validator)
    validator.run([0], max_epochs=1)
    best = tmp_path / "model.pt"
    saved = network.weight.detach().clone()

    with torch.no_grad():
        network.weight.mul_(-1.0)
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", _save_cut_short)
        with pytest.raises(Killed):
            validator.run([0], max_epochs=1)
    assert _listing(tmp_path) == ["model.pt"]
    assert torch.equal(_weights(best), saved)

    validator = Engine(validate)  # an engine stopped by an exception does not run again
    saver.attach(validator)
    validator.run([0], max_epochs=1)
    assert _listing(tmp_path) == ["model.pt"]
    assert torch.equal(_weights(best), network.weight.detach())


def test_states_of_earlier_runs_give_way_to_the_first_complete_state(tmp_path: Path) -> None:
    for epoch in (7, 9):  # left by a resumed run and by the run it resumed
        torch.save({"stale": torch.zeros(1)}, tmp_path / f"training_state_checkpoint_epoch={epoch}.pt")
    (tmp_path / "model.pt").write_bytes(b"not a training state, kept")
    network = torch.nn.Linear(2, 2)
    engine = Engine(lambda engine, batch: None)
    SaveTrainingState(tmp_path, network, torch.optim.SGD(network.parameters(), lr=0.1)).attach(engine)
    engine.run([0], max_epochs=2)
    assert _listing(tmp_path) == ["model.pt", "training_state_checkpoint_epoch=2.pt"]
    assert latest_training_state(tmp_path) == tmp_path / "training_state_checkpoint_epoch=2.pt"
