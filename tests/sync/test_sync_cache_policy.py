"""Which uploaded blocks stay in the local block cache.

A file bigger than 1/16 of the cache is uploaded without copying its blocks into the cache
(it would evict what the cache holds for reading); smaller files are cached as they upload.
Either way, reading the file back gives the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from tests.helpers.mount_proc import MountProcess, requires_fuse
from tests.sync.conftest import SYNC_ENV, Account, wait_for

pytestmark = [pytest.mark.e2e, requires_fuse]

MIB = 1 << 20


def _cache_bytes(m: MountProcess) -> int:
    return int(m.status()["cache_bytes"])  # type: ignore[call-overload]


def test_large_uploads_skip_the_block_cache_small_ones_do_not(account: Account) -> None:
    home = account.device("cachepolicy")
    big, small = os.urandom(12 * MIB), os.urandom(3 * MIB)  # the cache is 64 MiB: limit 4 MiB
    m = MountProcess(home, account.root / "mnt-cp", cache_size="64M", env=SYNC_ENV).start()
    try:
        before = _cache_bytes(m)
        (m.mnt / "big.bin").write_bytes(big)
        m.wait_synced()
        time.sleep(2.5)  # status.json is rewritten every second
        assert _cache_bytes(m) - before < MIB  # not copied into the cache
        (m.mnt / "small.bin").write_bytes(small)
        m.wait_synced()
        wait_for(lambda: _cache_bytes(m) - before >= len(small) or None, "small file cached")
    finally:
        m.stop()
    other = MountProcess(account.device("reader"), account.root / "mnt-cp2", env=SYNC_ENV).start()
    try:
        assert hashlib.sha256((other.mnt / "big.bin").read_bytes()).digest() == (
            hashlib.sha256(big).digest()
        )
    finally:
        other.stop()
    m = MountProcess(home, account.root / "mnt-cp", cache_size="64M", env=SYNC_ENV).start()
    try:  # after a remount the kernel's pages are gone: the big file comes from the server
        assert (m.mnt / "big.bin").read_bytes() == big
        assert (m.mnt / "small.bin").read_bytes() == small
    finally:
        m.stop()
