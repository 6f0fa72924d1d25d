"""Fused inference blocks (``scripts.inference.fusion``): same function as the network, oneDNN fusion really used;
and the nets under the private PyTorch APIs of fast inference: a missing fused operator, a fused operator that
disagrees with ``conv2d`` (caught by the self-check at first use), the switch that turns it off, and tensors without
version counters (the inferer's cache of the fused copy)."""

from __future__ import annotations

import copy
import logging
import types

import pytest
import torch

import scripts.inference.fusion as infer_fusion
import scripts.inference.inferer as inferer_module
from scripts.inference.inferer import CoopSegInferer, fused_eval_copy
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

    assert infer_fusion.onednn_fusion_active()  # the self-check passed before the operators are counted
    monkeypatch.setattr(infer_fusion, "_OPS", (count("conv", conv_op), count("conv_add", add_op)))
    fused = fused_eval_copy(_network(width=4))
    with torch.inference_mode():
        _both_paths(fused, torch.rand(2, 1, 32, 32).contiguous(memory_format=torch.channels_last))
    # per encoder: 2 inc + 4 blocks x (resample, shortcut, first) + final = 15; decoupler 2; per decoder 4 x 2 + 1 = 9
    assert calls == {"conv": 15 + 2 + 9 + 15 + 9, "conv_add": 4 + 4 + 4 + 4}


def test_fallback_without_the_operators_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PyTorch without the private operator: the lookup finds nothing and conv2d runs instead."""
    net = _network()
    x = torch.rand(2, 1, 32, 48)
    with torch.inference_mode():
        expected = _both_paths(net, x)
    monkeypatch.setattr(torch.ops, "mkldnn", types.SimpleNamespace())  # no _convolution_pointwise
    assert infer_fusion._onednn_ops() is None
    monkeypatch.setattr(infer_fusion, "_OPS", infer_fusion._onednn_ops())
    assert not infer_fusion.onednn_fusion_active()
    with torch.inference_mode():
        got = _both_paths(fused_eval_copy(net), x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_the_environment_switch_turns_the_operators_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(infer_fusion.SWITCH, value)
    assert infer_fusion._onednn_ops() is None
    monkeypatch.setenv(infer_fusion.SWITCH, "1")
    assert infer_fusion._onednn_ops() is not None


def test_a_fused_operator_that_disagrees_is_not_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The self-check at first use compares the fused operators with conv2d; a wrong one is dropped for the process,
    with a warning, and the network's output stays right."""
    conv_op, add_op = infer_fusion._OPS
    calls = []

    def wrong(op):
        def run(*args):
            calls.append(1)
            return op(*args).add_(0.5)

        return run

    net = _network()
    x = torch.rand(2, 1, 32, 48).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = _both_paths(net, x)
    monkeypatch.setattr(infer_fusion, "_OPS", (wrong(conv_op), add_op))
    monkeypatch.setattr(infer_fusion, "_CHECKED", None)  # not checked yet, as at the first use in a process
    with caplog.at_level(logging.WARNING, logger=infer_fusion.__name__), torch.inference_mode():
        got = _both_paths(fused_eval_copy(net), x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert infer_fusion.onednn_fusion_active() is False
    assert len(calls) == 2, "only the self-check ran the wrong operator (two layouts)"
    assert "disagrees with conv2d" in caplog.text
    # the conv + add operator is checked too
    monkeypatch.setattr(infer_fusion, "_OPS", (conv_op, wrong(add_op)))
    monkeypatch.setattr(infer_fusion, "_CHECKED", None)
    assert infer_fusion.onednn_fusion_active() is False
    # and the real operators pass
    assert infer_fusion._self_check((conv_op, add_op))


def test_a_fused_operator_that_fails_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args):
        raise RuntimeError("no kernel for this CPU")

    monkeypatch.setattr(infer_fusion, "_OPS", (broken, broken))
    monkeypatch.setattr(infer_fusion, "_CHECKED", None)
    net = _network(width=4)
    with torch.inference_mode():
        _both_paths(fused_eval_copy(net), torch.rand(1, 1, 32, 32))
    assert infer_fusion.onednn_fusion_active() is False


def test_without_tensor_version_counters_the_fused_copy_is_rebuilt_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inferer caches its fused copy by the weights' version counters (``Tensor._version``, private); without
    them it cannot tell a stale copy, so it rebuilds the copy at every call and still follows weight changes."""

    def no_version(self):
        raise AttributeError("_version")

    net = _network(width=4)
    x = torch.rand(1, 1, 32, 32, 2)
    fast, plain = CoopSegInferer(retain_cpu_memory=False), CoopSegInferer(retain_cpu_memory=False, fast=False)
    monkeypatch.setattr(torch.Tensor, "_version", property(no_version))
    assert inferer_module._state_versions(net) is None
    built = []
    real_copy = inferer_module.fused_eval_copy
    monkeypatch.setattr(inferer_module, "fused_eval_copy", lambda network: built.append(1) or real_copy(network))
    for _ in range(2):
        torch.testing.assert_close(fast(x, net), plain(x, net), rtol=1e-4, atol=1e-4)
        with torch.no_grad():
            net.segmentation_decoder.final_conv.bias.add_(0.3)  # in place: the weights change between calls
    assert len(built) == 2 and not fast._fused


def test_unfolded_batchnorm_is_refused() -> None:
    with pytest.raises(ValueError, match="fold BatchNorm"):
        infer_fusion.fuse_blocks(_network())
