# Copyright (c) CoopSeg contributors.
# Licensed under the Apache License, Version 2.0.
"""Keep freed CPU memory in the process for reuse, instead of handing it back to the OS after every network call.

Why: a forward pass over a 10-slice 224 x 224 stack allocates and frees about 0.5 GB of activations, most of them
blocks of 8-32 MiB. glibc's malloc serves such blocks with ``mmap`` or returns them to the OS when the top of the heap
is free (``M_MMAP_THRESHOLD`` / ``M_TRIM_THRESHOLD``), so the next call page-faults all of that memory in again:
measured on the 2-core development machine, 140,000 minor page faults per forward, half the inference time, and
40,000-60,000 per cooperative training iteration (96 x 96, batch 12). Raising both thresholds makes malloc keep and
reuse the blocks: 0 faults per call after the first. glibc maps blocks above 32 MiB whatever the threshold, and
training at the reference's setting (192 x 192, batch 10 + 10) has many (a 16-channel activation is 47 MiB): 0.5 to
1.5 million page faults per cooperative iteration. ``M_MMAP_MAX`` 0 serves those from the heap too, and kept there
they fault no more: 6.5 s instead of 9.0 s per cooperative iteration there (median of three runs of each, alternated,
2-core AMD EPYC), for a peak resident memory of 6.3 GB instead of 5.1 GB. The price, everywhere, is that the
process's resident memory stays at its peak instead of shrinking between calls.

This changes the whole process's allocator, so it is applied once, only by components that are configured to
(``CoopSegInferer(retain_cpu_memory=True)``, ``CooperativeTrainer(retain_cpu_memory=True)``), and only when they run on
the CPU. It is a no-op where malloc is not glibc's (macOS, Windows, musl): :func:`retain_freed_memory` then returns
False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "retain_freed_memory", "single_malloc_arena"]

logger = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

MMAP_THRESHOLD = 32 * 1024 * 1024
"""Blocks up to this size come from the heap (glibc accepts at most 32 MiB on 64-bit); with ``M_MMAP_MAX`` 0, larger
ones do too."""
TRIM_THRESHOLD = 1024 * 1024 * 1024
"""Free memory at the top of the heap is returned to the OS only beyond this much."""

_lock = threading.Lock()
_applied: bool | None = None


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    # gnu_get_libc_version exists only in glibc, whose mallopt parameters these are
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def retain_freed_memory() -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` to :data:`MMAP_THRESHOLD`, ``M_TRIM_THRESHOLD`` to :data:`TRIM_THRESHOLD` and
    ``M_MMAP_MAX`` to 0 (no block is mapped on its own), once per process; True if they are in effect (now or from an
    earlier call), False where this is not glibc or ``mallopt`` refused.

    A thread whose own arena cannot hold a large block is served from the main heap (glibc retries there), so this
    is safe with worker threads; :func:`single_malloc_arena` keeps them all on the main heap from the start."""
    global _applied
    with _lock:
        if _applied is None:
            libc = _glibc()
            _applied = bool(
                libc is not None
                and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                and libc.mallopt(_M_MMAP_MAX, 0)
            )
            if _applied:
                logger.info(
                    "CPU memory: freed blocks are kept on the heap for reuse (glibc mallopt), whatever their size"
                )
        return _applied


def single_malloc_arena() -> bool:
    """Make every thread allocate from glibc's main heap (``mallopt(M_ARENA_MAX, 1)``); True when glibc accepted it.

    For servers that run the network in a pool of worker threads (the MONAI Label app). glibc gives each thread an
    arena of its own, and the thresholds of :func:`retain_freed_memory` act on the main heap only: each new arena is
    faulted in again (measured: 140,000 page faults per 3-frame pass of a 224 x 224 x 10 cine in a pool of two
    threads, none in the main thread) and keeps its own peak, so memory grows with the number of threads that ever
    ran a request. With one arena, freed memory is reused by whichever thread runs next and the process keeps one peak.
    Arenas that already exist stay, so call it before worker threads start allocating. A no-op (False) where malloc is
    not glibc's.
    """
    libc = _glibc()
    applied = bool(libc is not None and libc.mallopt(_M_ARENA_MAX, 1))
    if applied:
        logger.info("CPU memory: one malloc arena for all threads (worker threads reuse freed memory)")
    return applied
