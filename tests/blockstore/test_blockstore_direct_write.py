"""blockstore.direct_write: O_DIRECT writes of whole new files, and the plain fallback."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest

from blockstore import direct_write
from blockstore.direct_write import (
    ALIGN,
    DIRECT_MIN_BYTES,
    open_direct,
    pread_direct,
    pwrite_direct,
    write_new_file,
)


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


# -- pwrite_direct / pread_direct: big aligned I/O on an existing file -------------------


def _pair(path: Path) -> tuple[int, int]:
    """A buffered and an O_DIRECT descriptor of one new file (tmp_path is on a disk)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    dfd = open_direct(path)
    assert dfd is not None, "the test directory's filesystem should support O_DIRECT"
    return fd, dfd


def test_direct_writes_and_buffered_writes_mix_into_one_coherent_file(tmp_path: Path) -> None:
    fd, dfd = _pair(tmp_path / "f")
    try:
        expect = bytearray(4 << 20)
        big = os.urandom(1 << 20)
        assert pwrite_direct(dfd, big, 0) == len(big)  # aligned, big: bypasses the cache
        expect[0 : 1 << 20] = big
        small = os.urandom(100)
        assert pwrite_direct(dfd, small, 4096) is None  # too small: the caller writes it
        os.pwrite(fd, small, 4096)
        expect[4096:4196] = small
        odd = os.urandom(DIRECT_MIN_BYTES + 1)
        assert pwrite_direct(dfd, odd, 2 << 20) is None  # length not aligned
        assert pwrite_direct(dfd, odd[:DIRECT_MIN_BYTES], (2 << 20) + 1) is None  # offset
        os.pwrite(fd, odd, 2 << 20)
        expect[2 << 20 : (2 << 20) + len(odd)] = odd
        again = os.urandom(1 << 20)  # over the buffered bytes, which are still in the cache
        assert pwrite_direct(dfd, again, 1 << 20) == len(again)
        expect[1 << 20 : 2 << 20] = again
        size = (2 << 20) + len(odd)
        del expect[size:]
        assert os.pread(fd, size + 10, 0) == bytes(expect)  # through the page cache
        assert pread_direct(dfd, size + 10, 0) == bytes(expect)  # past it; EOF cuts short
        # Unaligned reads read the aligned range around them and return just the bytes.
        assert pread_direct(dfd, DIRECT_MIN_BYTES, 4000) == bytes(
            expect[4000 : 4000 + DIRECT_MIN_BYTES]
        )
        assert pread_direct(dfd, DIRECT_MIN_BYTES, size - 5) == bytes(expect[size - 5 :])
        assert pread_direct(dfd, DIRECT_MIN_BYTES, size + 4096) == b""
        assert pread_direct(dfd, 100, 0) is None  # small: the caller reads it
    finally:
        os.close(fd)
        os.close(dfd)


def test_open_direct_says_none_where_o_direct_is_unsupported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Older kernels' tmpfs and some FUSE filesystems refuse O_DIRECT at open with EINVAL.
    real_open = os.open

    def no_direct(path: object, flags: int, *args: int) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    (tmp_path / "f").write_bytes(b"x")
    monkeypatch.setattr(direct_write.os, "open", no_direct)
    assert open_direct(tmp_path / "f") is None  # callers stay buffered
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError):
        open_direct(tmp_path / "missing")  # other errors are errors
