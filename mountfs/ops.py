"""The pyfuse3 `Operations`: convert arguments, await one VFS call, convert the result.

No policy lives here (that is `mountfs.vfs`) and no errno decisions (`mountfs.errors`).
Extended attributes answer ENOSYS so the kernel stops asking (a getxattr per file would
double the cost of `ls -l`); hard links and device nodes answer EPERM.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence

import pyfuse3
from pyfuse3 import (
    EntryAttributes,
    FileHandleT,
    FileInfo,
    FileNameT,
    FlagT,
    InodeT,
    ModeT,
    ReaddirToken,
    RequestContext,
    SetattrFields,
    StatvfsData,
    XAttrNameT,
)

from mountfs.attrs import BLOCK_SIZE_BYTES, Attr
from mountfs.errors import map_errors
from mountfs.vfs import Vfs, bypass_page_cache

__all__ = ["ATTR_TIMEOUT_S", "DriveOperations", "entry_of"]

ATTR_TIMEOUT_S = 30.0
"""Kernel caching of names and attributes. Remote changes we learn of are invalidated
explicitly; the timeout bounds staleness for anything else."""


def entry_of(attr: Attr) -> EntryAttributes:
    e = EntryAttributes()
    e.st_ino = InodeT(attr.ino)
    e.generation = 0
    e.entry_timeout = ATTR_TIMEOUT_S
    e.attr_timeout = ATTR_TIMEOUT_S
    e.st_mode = ModeT(attr.mode)
    e.st_nlink = attr.nlink
    e.st_uid = attr.uid
    e.st_gid = attr.gid
    e.st_rdev = 0
    e.st_size = attr.size
    e.st_blksize = BLOCK_SIZE_BYTES
    e.st_blocks = (attr.size + 511) // 512
    e.st_atime_ns = attr.mtime_ns
    e.st_mtime_ns = attr.mtime_ns
    e.st_ctime_ns = attr.ctime_ns
    return e


class DriveOperations(pyfuse3.Operations):
    """Thin adapter from the kernel to `Vfs`."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, vfs: Vfs) -> None:
        super().__init__()
        self._vfs = vfs

    @map_errors
    async def lookup(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext) -> EntryAttributes:  # fmt: skip  # noqa: E501
        return entry_of(await self._vfs.lookup(int(parent_inode), bytes(name)))

    async def forget(self, inode_list: Sequence[tuple[InodeT, int]]) -> None:
        self._vfs.forget([(int(i), n) for i, n in inode_list])

    @map_errors
    async def getattr(self, inode: InodeT, ctx: RequestContext) -> EntryAttributes:
        return entry_of(await self._vfs.getattr(int(inode)))

    @map_errors
    async def setattr(self, inode: InodeT, attr: EntryAttributes, fields: SetattrFields,
                      fh: FileHandleT | None, ctx: RequestContext) -> EntryAttributes:  # fmt: skip
        return entry_of(
            await self._vfs.setattr(
                int(inode),
                mode=stat.S_IMODE(attr.st_mode) if fields.update_mode else None,
                uid=attr.st_uid if fields.update_uid else None,
                gid=attr.st_gid if fields.update_gid else None,
                size=attr.st_size if fields.update_size else None,
                mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
                fh=None if fh is None else int(fh),
            )
        )

    @map_errors
    async def readlink(self, inode: InodeT, ctx: RequestContext) -> FileNameT:
        return FileNameT(await self._vfs.readlink(int(inode)))

    @map_errors
    async def mknod(self, parent_inode: InodeT, name: FileNameT, mode: ModeT, rdev: int,
                    ctx: RequestContext) -> EntryAttributes:  # fmt: skip
        raise pyfuse3.FUSEError(errno.EPERM)  # no device nodes, FIFOs or sockets

    @map_errors
    async def mkdir(self, parent_inode: InodeT, name: FileNameT, mode: ModeT,
                    ctx: RequestContext) -> EntryAttributes:  # fmt: skip
        return entry_of(await self._vfs.mkdir(int(parent_inode), bytes(name), int(mode)))

    @map_errors
    async def unlink(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext) -> None:
        await self._vfs.unlink(int(parent_inode), bytes(name))

    @map_errors
    async def rmdir(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext) -> None:
        await self._vfs.rmdir(int(parent_inode), bytes(name))

    @map_errors
    async def symlink(self, parent_inode: InodeT, name: FileNameT, target: FileNameT,
                      ctx: RequestContext) -> EntryAttributes:  # fmt: skip
        return entry_of(await self._vfs.symlink(int(parent_inode), bytes(name), bytes(target)))

    @map_errors
    async def rename(self, parent_inode_old: InodeT, name_old: FileNameT,
                     parent_inode_new: InodeT, name_new: FileNameT, flags: FlagT,
                     ctx: RequestContext) -> None:  # fmt: skip
        await self._vfs.rename(int(parent_inode_old), bytes(name_old), int(parent_inode_new),
                               bytes(name_new), int(flags))  # fmt: skip

    @map_errors
    async def link(self, inode: InodeT, new_parent_inode: InodeT, new_name: FileNameT,
                   ctx: RequestContext) -> EntryAttributes:  # fmt: skip
        raise pyfuse3.FUSEError(errno.EPERM)  # no hard links

    @map_errors
    async def open(self, inode: InodeT, flags: FlagT, ctx: RequestContext) -> FileInfo:
        fh, keep = await self._vfs.open(int(inode), int(flags))
        return FileInfo(fh=FileHandleT(fh), keep_cache=keep, direct_io=bypass_page_cache(flags))

    @map_errors
    async def create(self, parent_inode: InodeT, name: FileNameT, mode: ModeT, flags: FlagT,
                     ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:  # fmt: skip
        if not stat.S_ISREG(mode):
            raise pyfuse3.FUSEError(errno.EPERM)
        fh, attr = await self._vfs.create(int(parent_inode), bytes(name), int(mode), int(flags))
        return FileInfo(fh=FileHandleT(fh), direct_io=bypass_page_cache(flags)), entry_of(attr)

    @map_errors
    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        return await self._vfs.read(int(fh), off, size)

    @map_errors
    async def write(self, fh: FileHandleT, off: int, buf: bytes) -> int:
        return await self._vfs.write(int(fh), off, buf)

    @map_errors
    async def flush(self, fh: FileHandleT) -> None:
        await self._vfs.flush(int(fh))

    @map_errors
    async def release(self, fh: FileHandleT) -> None:
        await self._vfs.release(int(fh))

    @map_errors
    async def fsync(self, fh: FileHandleT, datasync: bool) -> None:
        await self._vfs.fsync(int(fh))

    @map_errors
    async def opendir(self, inode: InodeT, ctx: RequestContext) -> FileHandleT:
        return FileHandleT(await self._vfs.opendir(int(inode)))

    @map_errors
    async def readdir(self, fh: FileHandleT, start_id: int, token: ReaddirToken) -> None:
        def reply(name: bytes, attr: Attr, nxt: int) -> bool:
            return pyfuse3.readdir_reply(token, FileNameT(name), entry_of(attr), nxt)

        await self._vfs.readdir(int(fh), start_id, reply)

    @map_errors
    async def releasedir(self, fh: FileHandleT) -> None:
        await self._vfs.releasedir(int(fh))

    @map_errors
    async def fsyncdir(self, fh: FileHandleT, datasync: bool) -> None:
        await self._vfs.fsyncdir(int(fh))

    @map_errors
    async def statfs(self, ctx: RequestContext) -> StatvfsData:
        st = await self._vfs.statfs()
        out = StatvfsData()
        out.f_bsize = out.f_frsize = st.block_size
        out.f_blocks = st.blocks
        out.f_bfree = out.f_bavail = st.blocks_free
        out.f_files = st.files
        out.f_ffree = out.f_favail = st.files_free
        out.f_namemax = st.name_max
        return out

    async def getxattr(self, inode: InodeT, name: XAttrNameT, ctx: RequestContext) -> bytes:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def setxattr(self, inode: InodeT, name: XAttrNameT, value: bytes,
                       ctx: RequestContext) -> None:  # fmt: skip
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def listxattr(self, inode: InodeT, ctx: RequestContext) -> Sequence[XAttrNameT]:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def removexattr(self, inode: InodeT, name: XAttrNameT, ctx: RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    def __repr__(self) -> str:
        return f"DriveOperations(pid={os.getpid()})"
