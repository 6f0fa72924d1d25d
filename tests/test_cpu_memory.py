"""CPU memory reuse (``scripts.cpu_memory``) and the CPU slice batching of ``CoopSegInferer``."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import BUNDLE_ROOT
from scripts.model.networks import CoopSegNet

IS_GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# One 10 x 224 x 224 stack through the inferer three times in a fresh process; prints the minor page faults of the
# third call. The first call warms up (fused copy, oneDNN primitives), the second settles the allocator.
FAULTS_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import torch
    sys.path.insert(0, {bundle!r})
    from scripts.inference.inferer import CoopSegInferer
    from scripts.model.networks import CoopSegNet

    torch.set_num_threads(1)
    net = CoopSegNet().eval()
    inferer = CoopSegInferer(retain_cpu_memory={retain})
    x = torch.rand(1, 1, 224, 224, 10)
    for _ in range(2):
        inferer(x, net)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    inferer(x, net)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults_of_one_call(retain: bool) -> int:
    script = FAULTS_SCRIPT.format(bundle=str(BUNDLE_ROOT), retain=retain)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.strip().splitlines()[-1])


def test_retain_freed_memory_applies_on_glibc_and_is_idempotent() -> None:
    from scripts.cpu_memory import retain_freed_memory

    assert retain_freed_memory() is IS_GLIBC
    assert retain_freed_memory() is IS_GLIBC  # a second call changes nothing and reports the same


@pytest.mark.skipif(not IS_GLIBC, reason="the allocator setting exists only in glibc's malloc")
def test_inference_reuses_memory_instead_of_page_faulting_it_in() -> None:
    """Without the setting every call maps its ~0.5 GB of activations afresh; with it, the memory is reused."""
    kept, released = _faults_of_one_call(True), _faults_of_one_call(False)
    assert released > 20_000, f"expected the default allocator to fault activations in again, got {released}"
    assert kept < 0.05 * released, (kept, released)


class _BatchRecorder(torch.nn.Module):
    """A plain network that records the slices per call and returns 4-class logits."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return torch.zeros(x.shape[0], 4, *x.shape[2:])


@pytest.mark.parametrize(
    ("shape", "sw_batch_size", "expected"),
    [
        ((224, 224, 23), 0, [10, 10, 3]),  # 2**19 pixels per call: 10 slices of 224 x 224
        ((250, 250, 9), 0, [8, 1]),  # padded to 256 x 256: 8 slices
        ((32, 32, 5), 0, [5]),  # small slices: all at once
        ((224, 224, 7), 3, [3, 3, 1]),  # an explicit size wins
    ],
)
def test_cpu_slice_batches(shape: tuple[int, int, int], sw_batch_size: int, expected: list[int]) -> None:
    from scripts.inference.inferer import CoopSegInferer

    net = _BatchRecorder().eval()
    inferer = CoopSegInferer(sw_batch_size=sw_batch_size, fast=False, retain_cpu_memory=False)
    out = inferer(torch.rand(1, 1, *shape), net)
    assert net.batches == expected
    assert out.shape == (1, 4, *shape)


def test_all_slices_in_one_call_off_the_cpu() -> None:
    from scripts.inference.inferer import CoopSegInferer

    assert CoopSegInferer()._slices_per_call(40, [256, 256], on_cpu=False) == 40
    assert CoopSegInferer()._slices_per_call(40, [256, 256], on_cpu=True) == 8


@pytest.mark.parametrize(("retain", "calls"), [(True, 1), (False, 0)])
def test_trainer_applies_the_setting_on_cpu_when_asked(
    monkeypatch: pytest.MonkeyPatch, retain: bool, calls: int
) -> None:
    import scripts.engine.trainer as trainer_module

    seen: list[bool] = []
    monkeypatch.setattr(trainer_module, "retain_freed_memory", lambda: seen.append(True) or True)
    net = CoopSegNet(width=4)
    trainer_module.CooperativeTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[],
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.0),
        epoch_length=1,
        retain_cpu_memory=retain,
    )
    assert len(seen) == calls


def test_configs_wire_the_setting() -> None:
    train = json.loads((BUNDLE_ROOT / "configs" / "train.json").read_text())
    infer = json.loads((BUNDLE_ROOT / "configs" / "inference.json").read_text())
    assert train["retain_cpu_memory"] is True and infer["retain_cpu_memory"] is True
    assert train["train"]["trainer"]["retain_cpu_memory"] == "@retain_cpu_memory"
    assert infer["inferer"]["retain_cpu_memory"] == "@retain_cpu_memory"
