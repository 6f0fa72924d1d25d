"""Resumable training: a run interrupted mid-epoch and resumed with ``--resume True`` ends with exactly the weights,
optimiser state and best model of the run that was never interrupted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from conftest import BUNDLE_ROOT
from scripts.engine.checkpoints import best_model_record, latest_training_state

TINY = {
    "crop_size": 32,
    "batch_size": 2,
    "width": 4,
    "synthetic_split": {"training": 2, "validation": 1, "test": 1},
    "lr_policy": "one_cycle",
}


class CrashAt:
    """A handler that stops training with an error after ``iteration`` iterations, as a killed run would stop."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=self.iteration), self)

    def __call__(self, engine) -> None:
        raise RuntimeError(f"simulated crash at iteration {engine.state.iteration}")


def _train(tmp: Path, out: str, epochs: int, resume: bool = False, crash_at: int | None = None) -> Path:
    ckpt = tmp / out / "models"
    crash = {}
    if crash_at is not None:  # the crash handler is part of the config, so nothing else changes in the run
        crash = {
            "crash": {"_target_": f"{__name__}.CrashAt", "iteration": crash_at},
            "train#trainer#train_handlers": "$@train#handlers + @train#rank0_handlers + [@crash]",
        }
    workflow = ConfigWorkflow(
        config_file=str(BUNDLE_ROOT / "configs" / "train.json"),
        workflow_type="train",
        synthetic_cache_dir=str(tmp / "cache"),
        ckpt_dir=str(ckpt),
        output_dir=str(tmp / out / "logs"),
        epochs=epochs,
        resume=resume,
        **TINY,
        **crash,
    )
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()
    return ckpt


def _chain(error: BaseException | None) -> str:
    """The messages of an exception and its causes (MONAI wraps errors raised inside config expressions)."""
    texts = []
    while error is not None:
        texts.append(str(error))
        error = error.__cause__ or error.__context__
    return " | ".join(texts)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    reference = _train(tmp_path, "uninterrupted", epochs=3)
    per_epoch = int(_state(latest_training_state(reference))["trainer"]["iteration"]) // 3

    with pytest.raises(Exception) as crash:  # noqa: B017 - MONAI re-raises the handler's error
        _train(tmp_path, "interrupted", epochs=3, crash_at=per_epoch + 3)  # in the second epoch
    assert "simulated crash" in _chain(crash.value)
    interrupted = tmp_path / "interrupted" / "models"
    saved = latest_training_state(interrupted)
    assert saved is not None and saved.name.endswith("epoch=1.pt")
    assert not (interrupted / "model_final.pt").exists()

    resumed = _train(tmp_path, "interrupted", epochs=3, resume=True)
    final_ref, final_resumed = _state(reference / "model_final.pt"), _state(resumed / "model_final.pt")
    assert final_ref.keys() == final_resumed.keys()
    for name, value in final_ref.items():
        assert torch.equal(value, final_resumed[name]), f"{name} differs after resuming"
    # the best model (validation) and the optimiser moments agree too
    best_ref, best_resumed = _state(reference / "model.pt"), _state(resumed / "model.pt")
    assert all(torch.equal(v, best_resumed[k]) for k, v in best_ref.items())
    state_ref = _state(latest_training_state(reference))
    state_resumed = _state(latest_training_state(resumed))
    assert state_ref["trainer"]["iteration"] == state_resumed["trainer"]["iteration"] == 3 * per_epoch
    moments_ref = [s["exp_avg"] for s in state_ref["optimizer"]["state"].values()]
    moments_resumed = [s["exp_avg"] for s in state_resumed["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(moments_ref, moments_resumed, strict=True))
    assert state_ref["lr_scheduler"]["last_epoch"] == state_resumed["lr_scheduler"]["last_epoch"]
    # where the best model came from, as the robustness experiment reads it: the same for both runs
    record = best_model_record(latest_training_state(reference))
    assert record == best_model_record(latest_training_state(resumed))
    assert 1 <= record["epoch"] <= 3 and record["iteration"] == record["epoch"] * per_epoch
    assert 0.0 <= record["val_dice"] <= 1.0 and record["epochs_trained"] == 3
    no_validation = {"progress": {"best_metric": -1.0, "best_metric_epoch": -1},
                     "trainer": {"epoch_length": per_epoch, "iteration": per_epoch}}  # fmt: skip
    torch.save(no_validation, tmp_path / "unvalidated.pt")
    assert best_model_record(tmp_path / "unvalidated.pt") is None


def test_resume_without_a_saved_state_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(Exception) as failure:  # noqa: B017 - wrapped by MONAI's config evaluation
        _train(tmp_path, "fresh", epochs=1, resume=True)
    text = _chain(failure.value)
    assert "no training state" in text and str(tmp_path / "fresh" / "models") in text


def test_resume_from_an_incomplete_training_state_names_the_file(tmp_path: Path) -> None:
    models = tmp_path / "cut" / "models"
    models.mkdir(parents=True)
    cut = models / "training_state_checkpoint_epoch=3.pt"
    cut.write_bytes(b"PK\x03\x04 the first bytes of a training state")
    with pytest.raises(Exception) as failure:  # noqa: B017 - wrapped by MONAI's config evaluation
        _train(tmp_path, "cut", epochs=4, resume=True)
    text = _chain(failure.value)
    assert "not a complete training state" in text and str(cut) in text
    assert cut.read_bytes().startswith(b"PK\x03\x04 the first")  # left as it was
