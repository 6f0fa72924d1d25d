"""Weight averaging: the EMA of the weights and BatchNorm buffers, saved beside the raw snapshots at the same
iterations, and continued exactly by a resumed run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from conftest import BUNDLE_ROOT
from scripts.engine.averaging import SaveAveragedAtIterations, averaged_network
from scripts.engine.checkpoints import SaveAtIterations, latest_training_state
from scripts.engine.trainer import CooperativeStep
from scripts.model.networks import CoopSegNet


def test_the_average_follows_the_ema_of_weights_and_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    net = CoopSegNet(width=4)
    assert averaged_network(net, enabled=False) is None
    averaged = averaged_network(CooperativeStep(net), decay=0.75)  # wrappers are unwrapped
    states = []
    for _ in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net.train()(torch.rand(2, 1, 32, 32))  # moves the running statistics
        states.append({k: v.clone() for k, v in net.state_dict().items()})
        averaged.update_parameters(net)
    result = averaged.module.state_dict()
    assert result.keys() == states[0].keys()
    for key, value in result.items():
        if key.endswith("num_batches_tracked"):
            assert torch.equal(value, states[-1][key]), key  # copied, not averaged
            continue
        expected = states[0][key]  # the first update copies, the later ones blend
        for state in states[1:]:
            expected = 0.75 * expected + 0.25 * state[key]
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6, msg=key)
    running = next(k for k in result if k.endswith("running_mean"))
    assert not torch.equal(result[running], states[-1][running])  # statistics averaged, not taken from the network
    with pytest.raises(ValueError, match="decay"):
        averaged_network(net, decay=1.0)


TINY = {
    "crop_size": 32,
    "pixdim": [5.0, 5.0, -1],
    "batch_size": 4,
    "num_workers": 0,
    "width": 4,
    "synthetic_split": {"training": 1, "validation": 1, "test": 1},
    "lr_policy": "constant",
    "weight_averaging": True,
    "ema_decay": 0.5,
    "val_interval": 3,  # no validation in these 1- and 2-epoch runs: only training is compared
}


def _train(tmp: Path, out: str, epochs: int, resume: bool = False) -> Path:
    ckpt = tmp / out / "models"
    workflow = ConfigWorkflow(
        config_file=str(BUNDLE_ROOT / "configs" / "train.json"), workflow_type="train",
        synthetic_cache_dir=str(tmp / "cache"), ckpt_dir=str(ckpt), output_dir=str(tmp / out / "logs"), epochs=epochs,
        resume=resume, checkpoint_iterations=[1, 2], **TINY,
    )  # fmt: skip
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()
    return ckpt


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_a_run_saves_raw_and_averaged_models_and_a_resumed_run_continues_the_average(tmp_path: Path) -> None:
    whole = _train(tmp_path, "whole", epochs=2)
    raw = {b: _load(whole / SaveAtIterations.filename(b)) for b in (1, 2)}
    ema = {b: _load(whole / SaveAveragedAtIterations.filename(b)) for b in (1, 2)}
    CoopSegNet(width=4).load_state_dict(ema[2])  # loadable like model.pt
    assert ema[1].keys() == raw[1].keys() == ema[2].keys()
    for key, value in ema[2].items():
        if key.endswith("num_batches_tracked"):
            assert torch.equal(value, raw[2][key]) and torch.equal(ema[1][key], raw[1][key])
            continue
        assert torch.equal(ema[1][key], raw[1][key]), key  # the first update copies the network
        torch.testing.assert_close(value, 0.5 * raw[1][key] + 0.5 * raw[2][key], msg=key)  # decay 0.5
    assert any(not torch.equal(ema[2][k], raw[2][k]) for k in raw[2])

    # stopped after the first epoch and resumed: the average continues where the training state left it
    _train(tmp_path, "split", epochs=1)
    resumed = _train(tmp_path, "split", epochs=2, resume=True)
    expected = _load(latest_training_state(whole))["averaged_network"]
    state = _load(latest_training_state(resumed))["averaged_network"]
    assert int(state["n_averaged"]) == int(_load(latest_training_state(whole))["trainer"]["iteration"])
    assert expected.keys() == state.keys()
    for key, value in expected.items():
        assert torch.equal(value, state[key]), f"{key} differs after resuming"
