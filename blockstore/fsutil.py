"""Durable small-file writes: the one place that knows the fsync-and-rename dance.

A file written here is either absent, the old version or the complete new one after a crash:
data is fsync'd before the rename and the directory is fsync'd after it, so the rename
itself survives power loss.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO

PRIVATE_FILE_MODE = 0o600
"""Files that hold a user's data, keys or tokens: readable by their owner only."""

__all__ = ["atomic_write", "fsync_dir", "open_private_append", "write_private"]


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically and durably; the file gets `mode`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def open_private_append(path: Path) -> BinaryIO:
    """Open `path` for appending, created 0600 (and made 0600 if an older version left it
    readable by others)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        return os.fdopen(fd, "ab")
    except BaseException:
        os.close(fd)
        raise


def write_private(path: Path, data: bytes) -> None:
    """Write `path` (created or truncated) with mode 0600; not durable (see atomic_write)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), PRIVATE_FILE_MODE)
        f.write(data)
