"""Fused inference blocks (``scripts.inference.fusion``): same function as the network, oneDNN fusion really used."""

from __future__ import annotations

import copy

import pytest
import torch

import scripts.inference.fusion as infer_fusion
from scripts.inference.inferer import fused_eval_copy
from scripts.model.networks import CoopSegNet, Decoder, Encoder


def _network(width: int = 8) -> CoopSegNet:
    """An eval-mode network with non-trivial BatchNorm statistics, so folding matters."""
    torch.manual_seed(0)
    net = CoopSegNet(width=width).eval()
    generator = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=generator) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) * 1.5 + 0.5)
    return net


def _both_paths(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits = net.segment(x)
    return torch.cat([logits, net.refine_logits(logits)], dim=1)


@pytest.mark.parametrize("channels_last", [True, False])
def test_fused_network_matches_the_network(channels_last: bool) -> None:
    net = _network()
    fused = fused_eval_copy(net, channels_last=channels_last)
    x = torch.rand(3, 1, 64, 48)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected, got = _both_paths(net, x), _both_paths(fused, x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_every_block_is_replaced_and_the_original_is_untouched() -> None:
    net = _network()
    before = copy.deepcopy(net.state_dict())
    fused = fused_eval_copy(net)
    kinds = {type(m) for m in fused.modules()}
    assert not kinds & {Encoder, Decoder, torch.nn.BatchNorm2d, torch.nn.LeakyReLU}
    assert {infer_fusion.FusedEncoder, infer_fusion.FusedDecoder, infer_fusion.FusedResidualBlock} <= kinds
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_onednn_operators_are_used_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """On this CPU build the fused operators exist and carry every convolution of the inference path."""
    assert infer_fusion.ONEDNN_FUSION
    calls = {"conv": 0, "conv_add": 0}
    conv_op, add_op = infer_fusion._OPS

    def count(key, op):
        def wrapped(*args):
            calls[key] += 1
            return op(*args)

        return wrapped

    monkeypatch.setattr(infer_fusion, "_OPS", (count("conv", conv_op), count("conv_add", add_op)))
    fused = fused_eval_copy(_network(width=4))
    with torch.inference_mode():
        _both_paths(fused, torch.rand(2, 1, 32, 32).contiguous(memory_format=torch.channels_last))
    # per encoder: 2 inc + 4 blocks x (resample, shortcut, first) + final = 15; decoupler 2; per decoder 4 x 2 + 1 = 9
    assert calls == {"conv": 15 + 2 + 9 + 15 + 9, "conv_add": 4 + 4 + 4 + 4}


def test_fallback_without_the_operators_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _network()
    x = torch.rand(2, 1, 32, 48)
    with torch.inference_mode():
        expected = _both_paths(net, x)
    monkeypatch.setattr(infer_fusion, "_OPS", None)
    with torch.inference_mode():
        got = _both_paths(fused_eval_copy(net), x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_unfolded_batchnorm_is_refused() -> None:
    with pytest.raises(ValueError, match="fold BatchNorm"):
        infer_fusion.fuse_blocks(_network())
