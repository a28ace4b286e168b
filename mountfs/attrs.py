"""Kernel-free records the VFS returns, and the errors it raises with an errno.

`mountfs.ops` converts these to pyfuse3 structs; nothing here imports pyfuse3, so the VFS
can be tested without a mount.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass

from syncd.state import Node

__all__ = ["Attr", "Caller", "FsStats", "VfsError", "attr_of"]

BLOCK_SIZE_BYTES = 1024 * 1024
"""st_blksize: tools like `cp` size their buffers by it, and each FUSE request costs the mount
about the same whatever its size: with 1 MiB, `cp` of 256 MiB into the mount sends 256 write
requests instead of 2,048 (under strace: 554 instead of 132 MiB/s)."""


class VfsError(OSError):
    """A POSIX failure with its errno (ENOENT, ENOTEMPTY, ...)."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(code, message or errno.errorcode.get(code, str(code)))


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking (from the FUSE request context)."""

    uid: int
    gid: int
    umask: int = 0o022


@dataclass(frozen=True, slots=True)
class Attr:
    ino: int
    mode: int
    """Full st_mode: type bits and permission bits."""
    nlink: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int


@dataclass(frozen=True, slots=True)
class FsStats:
    block_size: int
    blocks: int
    blocks_free: int
    files: int
    files_free: int
    name_max: int


_TYPE = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}


def attr_of(node: Node, uid: int, gid: int, subdirs: int = 0) -> Attr:
    """The stat of a node. Ownership is the mount's user: the server keeps no owners. A
    directory has the usual link count, 2 + its subdirectories (`find` relies on it)."""
    return Attr(
        ino=node.ino,
        mode=_TYPE[node.kind] | (node.mode & 0o7777),
        nlink=2 + subdirs if node.kind == "dir" else (1 if node.linked else 0),
        uid=uid,
        gid=gid,
        size=node.size,
        mtime_ns=node.mtime_ns,
        ctime_ns=node.ctime_ns,
    )
