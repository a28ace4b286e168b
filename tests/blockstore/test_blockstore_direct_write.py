"""blockstore.direct_write: O_DIRECT writes of whole new files, and the plain fallback."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest

from blockstore import direct_write
from blockstore.direct_write import ALIGN, write_new_file


def _write(path: Path, data: bytes) -> bool:
    """Write `data` as a new file; True if the descriptor ended with O_DIRECT set."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_new_file(fd, data)
        os.fsync(fd)
        return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, 3 * ALIGN, (1 << 20) + 100])
def test_every_size_reads_back_exactly(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    direct = _write(tmp_path / "f", data)
    assert (tmp_path / "f").read_bytes() == data
    assert direct == (size >= ALIGN)  # small files are written plainly; big ones skip the cache


def test_reused_buffers_leak_nothing_past_the_end(tmp_path: Path) -> None:
    big, small = os.urandom(5 * ALIGN + 7), os.urandom(ALIGN + 3)
    _write(tmp_path / "big", big)
    _write(tmp_path / "small", small)  # from the same pooled buffer, which held `big`
    assert (tmp_path / "small").read_bytes() == small
    assert (tmp_path / "small").stat().st_size == len(small)


def test_a_device_refusing_o_direct_gets_a_plain_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    refused = []

    def picky_write(fd: int, data: bytes | memoryview) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(direct_write.os, "write", picky_write)
    data = os.urandom(3 * ALIGN + 11)
    assert _write(tmp_path / "f", data) is False
    assert refused
    assert (tmp_path / "f").read_bytes() == data


def test_a_filesystem_without_o_direct_gets_a_plain_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fcntl = fcntl.fcntl

    def no_direct(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(fd, cmd, arg)

    monkeypatch.setattr(direct_write.fcntl, "fcntl", no_direct)
    data = os.urandom(2 * ALIGN)
    assert _write(tmp_path / "f", data) is False
    assert (tmp_path / "f").read_bytes() == data
