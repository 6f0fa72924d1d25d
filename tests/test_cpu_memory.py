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

# In a bare, fresh process (the setting is process-wide, and glibc adapts its thresholds to earlier frees): one large
# block is allocated, written and freed, and glibc's own accounting (mallinfo2) says where it came from and whether the
# heap kept it. The block is far above glibc's default threshold (128 KiB), so the two cases differ by the allocator's
# rules alone, on any CPU.
ALLOCATOR_SCRIPT = textwrap.dedent(
    """
    import ctypes, json, sys
    sys.path.insert(0, {bundle!r})
    from scripts.cpu_memory import retain_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    applied = retain_freed_memory() if {retain} else False
    size = {size}
    before = libc.mallinfo2()
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    allocated = libc.mallinfo2()
    libc.free(block)
    freed = libc.mallinfo2()
    print(json.dumps({{
        "applied": applied,
        "mapped": allocated.hblkhd - before.hblkhd,
        "heap_growth": allocated.arena - before.arena,
        "heap_after_free": freed.arena,
        "heap_before": before.arena,
    }}))
    """
)


def _allocator(retain: bool, size: int) -> dict:
    script = ALLOCATOR_SCRIPT.format(bundle=str(BUNDLE_ROOT), retain=retain, size=size)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_retain_freed_memory_applies_on_glibc_and_is_idempotent() -> None:
    from scripts.cpu_memory import retain_freed_memory

    assert retain_freed_memory() is IS_GLIBC
    assert retain_freed_memory() is IS_GLIBC  # a second call changes nothing and reports the same


@pytest.mark.skipif(not IS_GLIBC, reason="the allocator setting exists only in glibc's malloc")
@pytest.mark.parametrize("size", [30 << 20, 64 << 20], ids=["30MiB", "64MiB_above_the_threshold_cap"])
def test_large_blocks_stay_on_the_heap_and_are_kept_after_free(size: int) -> None:
    """The mechanism, by glibc's own accounting: with the setting a large block (below and above the 32 MiB that
    ``M_MMAP_THRESHOLD`` can reach) comes from the heap and its memory stays there after ``free`` (the next call
    reuses it without page faults); without it the block is mapped separately and handed back to the OS on ``free``."""
    kept = _allocator(True, size)
    assert kept["applied"] is True
    assert kept["mapped"] == 0 and kept["heap_growth"] >= size
    assert kept["heap_after_free"] >= kept["heap_before"] + size  # not trimmed: the pages stay with the process
    default = _allocator(False, size)
    assert default["applied"] is False
    assert default["mapped"] >= size and default["heap_growth"] < size


# In a fresh process: a worker thread allocates a small block (served from an arena, never mapped) and keeps it while
# glibc's malloc_info lists the arenas ("<heap nr=...>") into a file.
ARENA_SCRIPT = textwrap.dedent(
    """
    import ctypes, json, re, sys, tempfile, threading
    sys.path.insert(0, {bundle!r})
    from scripts.cpu_memory import single_malloc_arena

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    applied = single_malloc_arena() if {single} else False
    held, report = [], tempfile.NamedTemporaryFile(suffix=".xml", delete=False).name

    def work():
        held.append(libc.malloc(64 << 10))
        stream = libc.fopen(report.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    print(json.dumps({{"applied": applied, "arenas": len(re.findall("<heap nr=", open(report).read()))}}))
    """
)


@pytest.mark.skipif(not IS_GLIBC, reason="the arena setting exists only in glibc's malloc")
@pytest.mark.parametrize(("single", "expected_arenas"), [(True, 1), (False, 2)])
def test_single_malloc_arena_makes_threads_share_the_main_heap(single: bool, expected_arenas: int) -> None:
    """Without the setting a worker thread gets an arena of its own (2 in all); with it, it allocates from the main
    heap (1), so freed memory is shared by all threads."""
    script = ARENA_SCRIPT.format(bundle=str(BUNDLE_ROOT), single=single)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"applied": single, "arenas": expected_arenas}


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


@pytest.mark.parametrize(("retain", "calls"), [(True, 1), (False, 0)])
def test_inferer_applies_the_setting_on_cpu_when_asked(
    monkeypatch: pytest.MonkeyPatch, retain: bool, calls: int
) -> None:
    import scripts.inference.inferer as inferer_module

    seen: list[bool] = []
    monkeypatch.setattr(inferer_module, "retain_freed_memory", lambda: seen.append(True) or True)
    inferer_module.CoopSegInferer(retain_cpu_memory=retain, fast=False)(torch.rand(1, 1, 32, 32, 2), _BatchRecorder())
    assert len(seen) == calls


def test_configs_wire_the_setting() -> None:
    train = json.loads((BUNDLE_ROOT / "configs" / "train.json").read_text())
    infer = json.loads((BUNDLE_ROOT / "configs" / "inference.json").read_text())
    assert train["retain_cpu_memory"] is True and infer["retain_cpu_memory"] is True
    assert train["train"]["trainer"]["retain_cpu_memory"] == "@retain_cpu_memory"
    assert infer["inferer"]["retain_cpu_memory"] == "@retain_cpu_memory"


class _FakeLibc:
    """A C library whose ``mallopt`` answers ``answer`` and records its calls."""

    def __init__(self, answer: int) -> None:
        self.answer, self.calls = answer, []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return self.answer


@pytest.mark.parametrize("libc", [None, _FakeLibc(0)], ids=["not glibc", "mallopt refuses"])
def test_without_glibc_or_when_mallopt_refuses_nothing_is_claimed(monkeypatch: pytest.MonkeyPatch, libc) -> None:
    """The fallback where the allocator cannot be switched: both calls report False and the process goes on."""
    import scripts.cpu_memory as cpu_memory

    monkeypatch.setattr(cpu_memory, "_glibc", lambda: libc)
    monkeypatch.setattr(cpu_memory, "_applied", None)  # as in a fresh process
    assert cpu_memory.retain_freed_memory() is False
    assert cpu_memory.single_malloc_arena() is False
    if libc is not None:
        assert libc.calls[0] == (cpu_memory._M_MMAP_THRESHOLD, cpu_memory.MMAP_THRESHOLD)
