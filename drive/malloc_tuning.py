"""Keep glibc from giving block-sized buffers back to the kernel after every use.

Why: every block on its way through the server or the mount passes through a few buffers of
0.25-8 MiB (a TLS read, a decrypted body, a wire frame). glibc serves allocations above
its mmap threshold (128 KiB at first) with a fresh mmap and unmaps them on free, so each
buffer's pages are faulted in and zeroed again, and it trims the heap's top as soon as
128 KiB are free there. On the 2-core VMs we measure on, a fresh 1 MiB costs about 0.5 ms
in page faults, as much as hashing it. Raising the mmap and trim thresholds keeps those
pages in the heap for the next block: `bench/mount_bench.py`'s cold read went from 245 to
279-295 MiB/s and the mount's CPU per MiB from 3.3 to 2.9 ms with this alone.

The cost is memory that stays mapped after a burst: at most about `TRIM_THRESHOLD_BYTES`
above what is in use per malloc arena (`ARENA_MAX` of them), and only in processes that
moved big blocks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["tune_malloc"]

log = logging.getLogger(__name__)

MMAP_THRESHOLD_BYTES = 32 << 20
"""Allocations below this come from the heap (block frames are at most 8 MiB, upload
batches about 8 MiB). glibc refuses more than 32 MiB on 64-bit."""
TRIM_THRESHOLD_BYTES = 128 << 20
TOP_PAD_BYTES = 16 << 20
ARENA_MAX = 2
"""malloc arenas (glibc's default is 8 per core). Each worker thread that moved blocks got
an arena of its own, and each kept up to `TRIM_THRESHOLD_BYTES` of freed buffers: after a
1 GiB upload the mount held 472 MB RSS, with 2 arenas 248 MB (server 199 -> 168 MB), at the
same speed (the threads' allocations are a few big buffers, not a contended hot path)."""

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_malloc() -> bool:
    """Apply the thresholds above; False (and nothing changed) where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
            (_M_TOP_PAD, TOP_PAD_BYTES),
            (_M_ARENA_MAX, ARENA_MAX),
        )
    )
    if not ok:
        log.debug("mallopt refused a setting; glibc defaults partly apply")
    return ok
