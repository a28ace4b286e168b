"""Write a new file's bytes with O_DIRECT where the filesystem allows it.

Why: the block store fsyncs every object it writes, so the page cache buys it nothing on
the way in, while filling fresh page-cache pages is the biggest single CPU cost of a
server taking uploads (on the 2-core VM, `copy_folio_from_iter_atomic` and `clear_page`
were a third of the server's CPU for a 1 GiB upload, docs/performance.md). With O_DIRECT
the kernel hands our buffer to the disk instead of copying it into new pages.

O_DIRECT wants the buffer address, the file offset and the length aligned to the device's
logical block size, so the bytes are copied into a page-aligned buffer from a small pool,
written padded to `ALIGN` and the file is truncated back to its real length before the
caller's fsync. A filesystem without O_DIRECT (tmpfs) or a device that refuses the write
(EINVAL) gets a plain buffered write: the result on disk is the same.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import threading

__all__ = [
    "ALIGN",
    "DIRECT_MIN_BYTES",
    "open_direct",
    "pread_direct",
    "pwrite_direct",
    "write_new_file",
]

ALIGN = 4096
"""Alignment of buffer, offset and length: a page, which covers 512- and 4096-byte devices."""

DIRECT_MIN_BYTES = 64 * 1024
"""Reads and writes below this size keep the page cache (`pwrite_direct`, `pread_direct`):
small, scattered I/O (git objects, editors) is what the page cache is good at."""

_POOL_MAX = 8
"""Buffers kept for reuse (reused memory costs no page faults); more are unmapped."""

_pool: list[mmap.mmap] = []
_pool_lock = threading.Lock()


def write_new_file(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of `data` at offset 0 of the empty file open on `fd` (for writing).

    The caller still fsyncs: O_DIRECT skips the page cache, not the need to flush the
    disk's cache and the file's metadata. `fd` may be left with O_DIRECT set.
    """
    view = memoryview(data).cast("B")
    length = len(view)
    if length == 0:
        return
    if length < ALIGN or not _set_direct(fd, True):
        _write_all(fd, view)
        return
    padded = -(-length // ALIGN) * ALIGN
    buffer = _take(padded)
    try:
        buffer[:length] = view
        buffer[length:padded] = bytes(padded - length)
        written = _write_direct(fd, buffer, padded)
        if written < padded:
            # Refused or cut short at an unaligned point: finish without O_DIRECT.
            _set_direct(fd, False)
            os.lseek(fd, written, os.SEEK_SET)
            _write_all(fd, view[written:length] if written < length else view[:0])
        if padded != length:
            os.ftruncate(fd, length)
    finally:
        _give_back(buffer)


def _write_direct(fd: int, buffer: mmap.mmap, padded: int) -> int:
    """Bytes written with O_DIRECT from the start of `buffer` (stops at the first refusal
    or at a short write that leaves the offset unaligned)."""
    written = 0
    with memoryview(buffer) as whole:
        while written < padded:
            try:
                n = os.write(fd, whole[written:padded])
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                return written  # the device wants another alignment: write plainly
            written += n
            if n == 0 or written % ALIGN:
                return min(written, padded)
    return written


def _set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for `fd`; False if the filesystem does not support it."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (flags | os.O_DIRECT) if on else (flags & ~os.O_DIRECT))
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise
    return True


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def _take(size: int) -> mmap.mmap:
    with _pool_lock:
        for i, buffer in enumerate(_pool):
            if len(buffer) >= size:
                return _pool.pop(i)
    return mmap.mmap(-1, size)


def _give_back(buffer: mmap.mmap) -> None:
    with _pool_lock:
        if len(_pool) < _POOL_MAX:
            _pool.append(buffer)
            return
        smallest = min(range(len(_pool)), key=lambda i: len(_pool[i]))
        if len(_pool[smallest]) < len(buffer):
            buffer, _pool[smallest] = _pool[smallest], buffer
    with contextlib.suppress(BufferError):
        buffer.close()


def open_direct(path: str | os.PathLike[str]) -> int | None:
    """Open `path` (which exists) for reading and writing with O_DIRECT; None where the
    filesystem does not support it (tmpfs)."""
    try:
        return os.open(path, os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return None
        raise


def pwrite_direct(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int | None:
    """Write `data` at `offset` through `fd` (from `open_direct`), bypassing the page cache.

    Returns the bytes written, or None when the write is not for O_DIRECT (under
    `DIRECT_MIN_BYTES`, or offset or length not aligned to `ALIGN`) or the device refused
    it: the caller then writes through its buffered descriptor. Like a buffered write that
    returned, the data is with the kernel (here: the device) and survives our process.
    """
    view = memoryview(data).cast("B")
    length = len(view)
    if length < DIRECT_MIN_BYTES or length % ALIGN or offset % ALIGN:
        return None
    buffer = _take(length)
    try:
        with memoryview(buffer) as whole:
            whole[:length] = view
            try:
                return os.pwrite(fd, whole[:length], offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                return None
    finally:
        _give_back(buffer)


def pread_direct(fd: int, size: int, offset: int) -> bytes | None:
    """Read up to `size` bytes at `offset` through `fd` (from `open_direct`), bypassing the
    page cache: the aligned range around them is read into a pooled buffer.

    Returns fewer bytes at the end of the file (like `os.pread`), or None when the read is
    under `DIRECT_MIN_BYTES` or the device refused it (read through the buffered descriptor).
    """
    if size < DIRECT_MIN_BYTES:
        return None
    start = offset - offset % ALIGN
    end = -(-(offset + size) // ALIGN) * ALIGN
    buffer = _take(end - start)
    try:
        with memoryview(buffer) as whole:
            try:
                got = os.preadv(fd, [whole[: end - start]], start)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                return None
            lo = offset - start
            return bytes(whole[lo : max(lo, min(got, lo + size))])
    finally:
        _give_back(buffer)
