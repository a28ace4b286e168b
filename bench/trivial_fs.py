"""A trivial in-memory pyfuse3 filesystem: the ceiling the mount benchmark compares against.

`python bench/trivial_fs.py MNT SIZE_BYTES N_ENTRIES`: serves `/data` (SIZE_BYTES of
pseudo-random bytes from memory, opened with keep_cache) and `/many/` with N_ENTRIES
empty files. getxattr answers ENOSYS, like our mount.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio

ROOT, DATA, MANY = 1, 2, 3
FIRST = 10


class Trivial(pyfuse3.Operations):
    def __init__(self, size: int, n: int) -> None:
        super().__init__()
        self.data = os.urandom(1 << 20) * (size >> 20) + os.urandom(size % (1 << 20))
        self.n = n

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = pyfuse3.InodeT(ino)
        e.entry_timeout = e.attr_timeout = 300
        if ino in (ROOT, MANY):
            e.st_mode = pyfuse3.ModeT(stat.S_IFDIR | 0o755)
            e.st_nlink = 2
        else:
            e.st_mode = pyfuse3.ModeT(stat.S_IFREG | 0o644)
            e.st_nlink = 1
            e.st_size = len(self.data) if ino == DATA else 0
        e.st_blksize = 131072
        return e

    async def getattr(self, inode, ctx=None):  # type: ignore[no-untyped-def]
        return self._attr(inode)

    async def lookup(self, parent_inode, name, ctx=None):  # type: ignore[no-untyped-def]
        if parent_inode == ROOT and name == b"data":
            return self._attr(DATA)
        if parent_inode == ROOT and name == b"many":
            return self._attr(MANY)
        if parent_inode == MANY and name.startswith(b"f"):
            return self._attr(FIRST + int(name[1:]))
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def opendir(self, inode, ctx):  # type: ignore[no-untyped-def]
        return inode

    async def readdir(self, fh, start_id, token):  # type: ignore[no-untyped-def]
        if fh == ROOT:
            entries = [(b"data", DATA), (b"many", MANY)]
        else:
            entries = [(b"f%05d" % i, FIRST + i) for i in range(self.n)]
        for i in range(start_id, len(entries)):
            name, ino = entries[i]
            if not pyfuse3.readdir_reply(token, name, self._attr(ino), i + 1):
                break

    async def open(self, inode, flags, ctx):  # type: ignore[no-untyped-def]
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh, off, size):  # type: ignore[no-untyped-def]
        return self.data[off : off + size]

    async def getxattr(self, inode, name, ctx):  # type: ignore[no-untyped-def]
        raise pyfuse3.FUSEError(errno.ENOSYS)


def main() -> None:
    mnt, size, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    pyfuse3.init(Trivial(size, n), mnt, {"fsname=trivial", "default_permissions"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
