"""Offloading blocking work from the trio thread.

The trio thread must never block (design §2). CPU work (hashing, zstd, AES-GCM) goes through
`run_cpu`, bounded by one limiter per trio run sized to the CPU count, so that many
concurrent uploads do not oversubscribe the cores. Blocking disk and LMDB work goes through
`run_io`, which has its own, larger limiter: waiting on a disk must not steal CPU tokens.

The limiters live in `trio.lowlevel.RunVar`s: each `trio.run` (each test, under
pytest-trio) gets fresh ones, so nothing leaks between event loops.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar, TypeVarTuple, Unpack

import trio

__all__ = ["IO_THREADS", "cpu_limiter", "io_limiter", "run_cpu", "run_io"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

IO_THREADS = 16
"""Concurrent blocking I/O calls (disk, LMDB) allowed through `run_io` per trio run."""

_CPU_LIMITER: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar(
    "blockstore_cpu_limiter"
)
_IO_LIMITER: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar(
    "blockstore_io_limiter"
)


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def cpu_limiter() -> trio.CapacityLimiter:
    """Return this trio run's shared CPU limiter (one token per usable core)."""
    try:
        return _CPU_LIMITER.get()
    except LookupError:
        limiter = trio.CapacityLimiter(_cpu_count())
        _CPU_LIMITER.set(limiter)
        return limiter


def io_limiter() -> trio.CapacityLimiter:
    """Return this trio run's shared blocking-I/O limiter (`IO_THREADS` tokens)."""
    try:
        return _IO_LIMITER.get()
    except LookupError:
        limiter = trio.CapacityLimiter(IO_THREADS)
        _IO_LIMITER.set(limiter)
        return limiter


async def run_cpu(fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
    """Run CPU-bound `fn(*args)` in a worker thread under the shared CPU limiter.

    Not abandoned on cancellation: the call finishes (it is bounded CPU work) and then the
    cancellation is delivered, so no thread outlives the caller's nursery.
    """
    return await trio.to_thread.run_sync(fn, *args, limiter=cpu_limiter())


async def run_io(fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
    """Run blocking I/O `fn(*args)` (disk, fsync, LMDB) in a worker thread under the I/O limiter.

    Each call should open and close its own LMDB transaction: transactions never cross
    threads.
    """
    return await trio.to_thread.run_sync(fn, *args, limiter=io_limiter())
