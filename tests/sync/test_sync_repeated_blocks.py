"""A file made of one block many times over (zeros, as in disk images and sparse files)
read cold on another device: read-ahead asks for each block once and the read is right."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from tests.helpers.mount_proc import MountProcess, requires_fuse
from tests.sync.conftest import Account

pytestmark = [pytest.mark.e2e, requires_fuse]

MIB = 1 << 20


def test_a_file_of_repeated_blocks_reads_back_on_another_device(
    two_mounts: tuple[MountProcess, MountProcess], account: Account
) -> None:
    a, b = two_mounts
    # Random first: the zero blocks are first met by read-ahead, several in one group.
    data = os.urandom(MIB) + bytes(20 * MIB) + os.urandom(MIB) + bytes(20 * MIB)
    (a.mnt / "image.bin").write_bytes(data)
    a.wait_synced()
    b_copy = b.mnt / "image.bin"
    for _ in range(100):  # B learns of the file through its change feed
        if b_copy.exists() and b_copy.stat().st_size == len(data):
            break
        time.sleep(0.1)
    assert hashlib.sha256(b_copy.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert b.proc is not None
    assert b.proc.poll() is None  # the mount is still serving
