"""Exports of network_def: TorchScript by `monai.bundle ckpt_export` and ONNX, FTN + STN and FTN only, vs eager."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from monai.bundle import ckpt_export
from monai.data import load_net_with_metadata

from conftest import BUNDLE_ROOT
from scripts.export import export_onnx
from scripts.model.networks import CoopSegNet

INFERENCE = BUNDLE_ROOT / "configs" / "inference.json"
META = BUNDLE_ROOT / "configs" / "metadata.json"
WIDTH = 4


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CoopSegNet]:
    torch.manual_seed(3)
    net = CoopSegNet(width=WIDTH).eval()
    path = tmp_path_factory.mktemp("w") / "model.pt"
    torch.save(net.state_dict(), path)
    return path, net


def _x(*shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(1))


def test_ckpt_export_cli_ftn_stn(weights: tuple[Path, CoopSegNet], tmp_path: Path) -> None:
    """The documented command, with the configs embedded in the TorchScript file."""
    ckpt, net = weights
    ts = tmp_path / "model.ts"
    args = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
            "--ckpt_file", str(ckpt), "--meta_file", str(META), "--config_file", str(INFERENCE),
            "--width", str(WIDTH)]  # fmt: skip
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    scripted, meta, extra = load_net_with_metadata(str(ts), more_extra_files=("inference.json",))
    assert meta["version"] == json.loads(META.read_text())["version"]
    assert json.loads(extra["inference.json"])["network_def"]["_target_"] == "scripts.model.networks.CoopSegNet"
    x = _x(2, 1, 48, 80)
    with torch.no_grad():
        torch.testing.assert_close(scripted.eval()(x), net(x), rtol=1e-4, atol=1e-5)


def test_ckpt_export_ftn_only(weights: tuple[Path, CoopSegNet], tmp_path: Path) -> None:
    ckpt, net = weights
    ts = tmp_path / "model_ftn.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(ckpt), meta_file=str(META),
                config_file=str(INFERENCE), width=WIDTH, **{"network_def#refine": False})  # fmt: skip
    scripted = torch.jit.load(str(ts)).eval()
    x = _x(1, 1, 64, 64)
    with torch.no_grad():
        out = scripted(x)
        torch.testing.assert_close(out, net.segment(x), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(out, net(x), atol=1e-3), "the FTN-only export returned the refined output"


@pytest.mark.parametrize("refine", [True, False])
def test_onnx_export_matches_eager(weights: tuple[Path, CoopSegNet], tmp_path: Path, refine: bool) -> None:
    ckpt, net = weights
    path = tmp_path / f"model_{refine}.onnx"
    assert export_onnx(str(ckpt), str(path), refine=refine, width=WIDTH) < 1e-4  # checked on two other shapes
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == ["pred"]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _x(3, 1, 32, 112)  # another batch size and shape than the export's 1 x 64 x 64: dynamic axes
    (got,) = session.run(["pred"], {"image": x.numpy()})
    with torch.no_grad():
        expected = (net(x) if refine else net.segment(x)).numpy()
    assert got.shape == (3, 4, 32, 112)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
    assert (got.argmax(1) == expected.argmax(1)).mean() > 0.999
