"""POSIX semantics of the drive, without the kernel: the tree, lookups, renames, handles.

`mountfs.ops` calls exactly one method here per FUSE request. Everything is local-first:
namespace changes update LMDB at once and append an operation to the durable upload queue
(the uploader replays them to the server in order); file data lives in `ContentStore`.

Lookup counts and deferred deletion (pyfuse3 gotchas): `unlink` only removes the name; the
inode and its local data go when the kernel has forgotten it and no handle is open, so an
unlinked file that is still open keeps working until its last close.

Concurrency: runs on the trio thread. Each method reads the local state, checks what POSIX
allows, and has `syncd.local_edits.LocalEdits` write the change in one transaction (the VFS
never writes the state itself); awaits happen only for content and network.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from blockstore.wire import MAX_NAME_BYTES, MAX_PATH_BYTES
from mountfs.attrs import Attr, FsStats, VfsError, attr_of
from mountfs.handles import FileHandle
from syncd.content import READAHEAD_BLOCKS, ContentStore, read_blocks
from syncd.local_edits import LocalEdits
from syncd.queue_ops import Delete, Move, QueuedOp
from syncd.state import ROOT_INO, Node, StateDB
from syncd.tree import TreeSync, path_of
from syncd.uploader import Uploader

__all__ = ["RENAME_EXCHANGE", "RENAME_NOREPLACE", "Vfs", "bypass_page_cache"]

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
DEFAULT_QUOTA_BYTES = 1 << 50
SEQUENTIAL_SLACK_BYTES = 4 << 20
"""How far from the end of the previous read a read may start and still count as sequential."""


def bypass_page_cache(flags: int) -> bool:
    """Whether a handle opened with `flags` writes past the kernel's page cache (direct_io).

    Write-only handles (`cp`, `dd of=`, downloads): nothing reads through them, so caching
    their pages buys nothing, while filling a GiB of fresh page-cache pages is what made
    `cp` into the mount slow on VMs (docs/performance.md). The bytes still land in the
    dirty file before the write returns. Handles that can read keep the page cache.
    """
    return (flags & os.O_ACCMODE) == os.O_WRONLY


def _name(raw: bytes) -> str:
    if len(raw) > MAX_NAME_BYTES:
        raise VfsError(errno.ENAMETOOLONG)
    if raw in (b".", b"..") or b"/" in raw or not raw:
        raise VfsError(errno.EINVAL)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise VfsError(errno.EINVAL, "names must be UTF-8") from None


@dataclass(slots=True)
class _DirHandle:
    ino: int
    entries: list[tuple[str, int]] = field(default_factory=list)


class Vfs:
    """The filesystem's behaviour. See the module docstring."""

    def __init__(
        self,
        state: StateDB,
        content: ContentStore,
        tree: TreeSync,
        uploader: Uploader | None,
        *,
        uid: int | None = None,
        gid: int | None = None,
        quota: Callable[[], tuple[int, int]] | None = None,
        refresh_attrs: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        """`refresh_attrs(ino)`: make the kernel drop the attributes it caches for `ino`
        (size above all) before this call returns (see `open`)."""
        self.state = state
        self.edits = LocalEdits(state)
        self.content = content
        self.tree = tree
        self.uploader = uploader
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self._quota = quota
        self._refresh_attrs = refresh_attrs
        self._told_version: dict[int, int] = {}
        """The content version of each inode as of the attributes last given to the kernel."""
        self._lookups: dict[int, int] = {}
        self._handles: dict[int, FileHandle | _DirHandle] = {}
        self._open_count: dict[int, int] = {}
        self._writers: dict[int, int] = {}
        """ino -> open handles that may write to it."""
        self._next_fh = 1
        self._kernel_version: dict[int, int] = {}
        self._local_gen: dict[int, int] = {}
        self._unlinked_here: set[int] = set()
        """Files a program here unlinked or renamed over: writes through a handle still
        open on one vanish with it at close, as POSIX says."""
        self.ensure_root()

    # -- helpers ------------------------------------------------------------------------

    def ensure_root(self) -> None:
        self.edits.ensure_root()

    def _node(self, ino: int) -> Node:
        node = self.state.node(ino)
        if node is None:
            raise VfsError(errno.ENOENT)
        return node

    def _dir(self, ino: int) -> Node:
        node = self._node(ino)
        if node.kind != "dir":
            raise VfsError(errno.ENOTDIR)
        return node

    def _attr(self, node: Node) -> Attr:
        self._told_version[node.ino] = node.version
        subdirs = self.state.subdirs(node.ino) if node.kind == "dir" else 0
        return attr_of(node, self.uid, self.gid, subdirs)

    def _path(self, ino: int) -> str:
        try:
            return path_of(self.state, ino)
        except KeyError:
            raise VfsError(errno.ENOENT) from None

    def _child_path(self, parent: int, name: str) -> str:
        """The drive path of `name` in `parent`; ENAMETOOLONG where the server would refuse
        it, so a change the server cannot take is never acknowledged."""
        p = self._path(parent)
        path = f"/{name}" if p == "/" else f"{p}/{name}"
        if len(path.encode()) > MAX_PATH_BYTES:
            raise VfsError(errno.ENAMETOOLONG, "drive paths are limited to 4096 bytes")
        return path

    def _deepest_below(self, ino: int) -> int:
        """Bytes the longest path below folder `ino` adds to the folder's own path."""
        longest = 0
        for name, child in self.state.children(ino):
            node = self.state.node(child)
            extra = len(name.encode()) + 1
            if node is not None and node.kind == "dir":
                extra += self._deepest_below(child)
            longest = max(longest, extra)
        return longest

    async def _child(self, parent: int, name: str) -> Node | None:
        self._dir(parent)
        await self.tree.ensure_listed(parent)
        ino = self.state.lookup(parent, name)
        return None if ino is None else self.state.node(ino)

    def _wake(self) -> None:
        if self.uploader is not None:
            self.uploader.wake()

    def keep_written(self, ino: int) -> bool:
        """File `ino` holds written bytes but is out of the tree: bring it back unless a
        program here unlinked it or renamed over it (then its writes vanish at close, as
        POSIX says). Also asked by the uploader before it drops a commit of an unlinked
        file. Returns whether the file is in the tree now."""
        node = self.state.node(ino)
        if node is None or node.dirty is None or ino in self._unlinked_here:
            return False
        if node.linked:
            return True
        if any(_removes(op, ino) for op in self.state.unsynced_ops()):
            return False  # removed by a program here before a restart (its op is queued)
        reconciler = self.tree.reconciler
        if reconciler is None:
            return False
        device = self.uploader.device if self.uploader is not None else "this device"
        if not reconciler.revive(ino, device=device):
            log.error("a write to %s could not be kept in the tree", node.name)
            return False
        return True

    def _queue_commit(self, node: Node) -> None:
        """Put `node`'s content in the durable upload queue (coalesced). A written file that
        something other than a program here took out of the tree (deleted elsewhere,
        meanwhile its name taken) comes back first: an acknowledged write never vanishes."""
        node = self.state.current(node)
        if not node.linked:
            if not self.keep_written(node.ino):
                return
            node = self._node(node.ino)
        busy = self.uploader.busy_seqs if self.uploader is not None else set()
        self.edits.queue_commit(node, self._path(node.ino), busy)
        self._wake()

    # -- lookups and attributes ---------------------------------------------------------

    async def lookup(self, parent: int, raw: bytes) -> Attr:
        if raw == b".":
            return self._attr(self._dir(parent))
        if raw == b"..":
            return self._attr(self._node(self._dir(parent).parent))
        node = await self._child(parent, _name(raw))
        if node is None:
            raise VfsError(errno.ENOENT)
        self._lookups[node.ino] = self._lookups.get(node.ino, 0) + 1
        return self._attr(node)

    def remember(self, ino: int) -> None:
        """The kernel learned `ino` through readdirplus or create."""
        self._lookups[ino] = self._lookups.get(ino, 0) + 1

    def forget(self, items: list[tuple[int, int]]) -> None:
        for ino, n in items:
            left = self._lookups.get(ino, 0) - n
            if left > 0:
                self._lookups[ino] = left
                continue
            self._lookups.pop(ino, None)
            self._kernel_version.pop(ino, None)
            self._told_version.pop(ino, None)
            self.release_unlinked(ino)

    def release_unlinked(self, ino: int) -> None:
        """Free an unlinked inode once the kernel forgot it, nobody has it open and no
        queued op names it."""
        if ino == ROOT_INO or self._lookups.get(ino) or self._open_count.get(ino):
            return
        node = self.state.node(ino)
        if node is None or node.linked:
            return
        ops = self.state.unsynced_ops()
        named = [op for op in ops if ino in (op.ino, getattr(op, "dst_ino", None))]
        removed_here = ino in self._unlinked_here or any(_removes(op, ino) for op in ops)
        if named and node.dirty is not None and not removed_here:
            return  # written, and out of the tree by no program here: `keep_written` may
            # still bring it back with its bytes (its queued commit asks)
        self.content.discard(node)
        # its record stays while an op naming it is queued (or parked): the server id and
        # the revision it names (a change from elsewhere must not bring it back meanwhile).
        # The uploader calls this again once the op is done.
        self.edits.release(ino, keep_record=bool(named))
        if not named:
            self._unlinked_here.discard(ino)

    async def getattr(self, ino: int) -> Attr:
        return self._attr(self._node(ino))

    async def setattr(
        self,
        ino: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        mtime_ns: int | None = None,
        fh: int | None = None,
    ) -> Attr:
        node = self._node(ino)
        if (uid is not None and uid != self.uid) or (gid is not None and gid != self.gid):
            raise VfsError(errno.EPERM, "the drive keeps no file owners")
        op: dict[str, Any] = {}
        if size is not None:
            if node.kind == "dir":
                raise VfsError(errno.EISDIR)
            if node.kind != "file":
                raise VfsError(errno.EINVAL)
            await self.content.truncate(node, size)
            self._local_gen[ino] = self._local_gen.get(ino, 0) + 1
            handle = self._handles.get(fh) if fh is not None else None
            if isinstance(handle, FileHandle):
                handle.dirty = True
            else:
                await self.content.flush(node)
                self._queue_commit(node)
            node = self.state.current(node)  # truncated
        if mode is not None:
            node = replace(node, mode=mode & 0o7777)
            op["mode"] = node.mode
        if mtime_ns is not None:
            node = replace(node, mtime_ns=mtime_ns)
            op["mtime_ns"] = mtime_ns
        if mode is not None or mtime_ns is not None or size is not None:
            node = replace(node, ctime_ns=time.time_ns())
        path = self._path(ino) if op and node.linked else ""
        self.edits.set_attrs(node, path, op.get("mode"), op.get("mtime_ns"))
        self._wake()
        return self._attr(node)

    async def readlink(self, ino: int) -> bytes:
        node = self._node(ino)
        if node.kind != "symlink" or node.target is None:
            raise VfsError(errno.EINVAL)
        return node.target.encode()

    # -- namespace changes --------------------------------------------------------------

    async def mkdir(self, parent: int, raw: bytes, mode: int) -> Attr:
        name = _name(raw)
        self._dir(parent)
        if await self._child(parent, name) is not None:
            raise VfsError(errno.EEXIST)
        node = self.edits.new_node(parent, name, "dir", mode)
        self.tree.fresh.add(node.ino)
        self.edits.add(node, self._child_path(parent, name))
        self._wake()
        self.remember(node.ino)
        return self._attr(node)

    async def symlink(self, parent: int, raw: bytes, target: bytes) -> Attr:
        name = _name(raw)
        self._dir(parent)
        if await self._child(parent, name) is not None:
            raise VfsError(errno.EEXIST)
        try:
            text = target.decode("utf-8")
        except UnicodeDecodeError:
            raise VfsError(errno.EINVAL, "symlink targets must be UTF-8") from None
        node = replace(self.edits.new_node(parent, name, "symlink", 0o777), target=text,
                       size=len(target))  # fmt: skip
        self.edits.add(node, self._child_path(parent, name))
        self._wake()
        self.remember(node.ino)
        return self._attr(node)

    async def unlink(self, parent: int, raw: bytes) -> None:
        await self._remove(parent, _name(raw), want_dir=False)

    async def rmdir(self, parent: int, raw: bytes) -> None:
        await self._remove(parent, _name(raw), want_dir=True)

    async def _remove(self, parent: int, name: str, *, want_dir: bool) -> None:
        self._dir(parent)
        node = await self._child(parent, name)
        if node is None:
            raise VfsError(errno.ENOENT)
        if want_dir and node.kind != "dir":
            raise VfsError(errno.ENOTDIR)
        if not want_dir and node.kind == "dir":
            raise VfsError(errno.EISDIR)
        if want_dir:
            await self.tree.ensure_listed(node.ino)
            if self.state.has_children(node.ino):
                raise VfsError(errno.ENOTEMPTY)
        path = self._child_path(parent, name)
        self._unlinked_here.add(node.ino)
        node = self.edits.remove(node, path)
        self._wake()
        self.release_unlinked(node.ino)

    async def rename(self, p_old: int, raw_old: bytes, p_new: int, raw_new: bytes,
                     flags: int) -> None:  # fmt: skip
        old, new = _name(raw_old), _name(raw_new)
        src = await self._child(p_old, old)
        if src is None:
            raise VfsError(errno.ENOENT)
        dst = await self._child(p_new, new)
        src = self.state.current(src)  # as it is after that await
        if dst is not None and dst.ino == src.ino:
            return
        if src.kind == "dir" and self.state.is_within(p_new, src.ino):
            raise VfsError(errno.EINVAL, "cannot move a directory into itself")
        from_path, to_path = self._child_path(p_old, old), self._child_path(p_new, new)
        grows = len(to_path.encode()) > len(from_path.encode())
        if (
            src.kind == "dir"
            and grows
            and (len(to_path.encode()) + self._deepest_below(src.ino) > MAX_PATH_BYTES)
        ):
            raise VfsError(errno.ENAMETOOLONG, "a path below would exceed 4096 bytes")
        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise VfsError(errno.ENOENT)
            mode = "exchange"
        elif dst is not None:
            if flags & RENAME_NOREPLACE:
                raise VfsError(errno.EEXIST)
            if src.kind == "dir" and dst.kind != "dir":
                raise VfsError(errno.ENOTDIR)
            if src.kind != "dir" and dst.kind == "dir":
                raise VfsError(errno.EISDIR)
            if dst.kind == "dir":
                await self.tree.ensure_listed(dst.ino)
                if self.state.has_children(dst.ino):
                    raise VfsError(errno.ENOTEMPTY)
            mode = "replace"
        else:
            mode = "noreplace"
        for folder in (p_old, p_new):
            self._node(folder)  # ENOENT before anything is written
        if dst is not None and mode == "replace":
            self._unlinked_here.add(dst.ino)
        self.edits.rename(src, dst, (p_old, old, p_new, new), (from_path, to_path), mode)
        self._wake()
        if dst is not None and mode == "replace":
            self.release_unlinked(dst.ino)

    # -- directories --------------------------------------------------------------------

    async def opendir(self, ino: int) -> int:
        self._dir(ino)
        await self.tree.ensure_listed(ino)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = _DirHandle(ino, self.state.children(ino))
        return fh

    async def readdir(self, fh: int, start: int, reply: Callable[[bytes, Attr, int], bool]) -> None:
        """Call `reply(name, attr, next)` from entry `start` on, until it returns False."""
        handle = self._handles.get(fh)
        if not isinstance(handle, _DirHandle):
            raise VfsError(errno.EBADF)
        for i in range(start, len(handle.entries)):
            name, ino = handle.entries[i]
            node = self.state.node(ino)
            if node is None or not node.linked:
                continue
            if not reply(name.encode(), self._attr(node), i + 1):
                break
            self.remember(ino)

    async def releasedir(self, fh: int) -> None:
        self._handles.pop(fh, None)

    async def fsyncdir(self, fh: int) -> None:
        from blockstore.aio import run_io

        await run_io(self.state.sync)

    # -- files --------------------------------------------------------------------------

    def _new_handle(self, node: Node, *, write: bool) -> FileHandle:
        fh = self._next_fh
        self._next_fh += 1
        handle = FileHandle(fh=fh, ino=node.ino, writable=write,
                            local_gen=self._local_gen.get(node.ino, 0))  # fmt: skip
        if node.dirty is None and node.blocks is not None:  # immutable: kept, not copied
            handle.snapshot = (node.blocks, node.block_starts(), node.size)
        self._handles[fh] = handle
        self._open_count[node.ino] = self._open_count.get(node.ino, 0) + 1
        if write:
            self._writers[node.ino] = self._writers.get(node.ino, 0) + 1
        return handle

    def open_for_writing(self, ino: int) -> bool:
        """True while some handle may still write to `ino` (the uploader waits for it)."""
        return ino in self._writers

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """Open a file; returns `(fh, keep_cache)`."""
        node = self._node(ino)
        if node.kind == "dir":
            raise VfsError(errno.EISDIR)
        if node.kind != "file":
            raise VfsError(errno.ELOOP)
        write = (flags & os.O_ACCMODE) != os.O_RDONLY
        if write and not node.linked and self.tree.reconciler is not None:
            self.tree.reconciler.revive(ino)  # deleted elsewhere, opened by a cached name
        if flags & os.O_TRUNC and write:
            await self.content.truncate(node, 0)
            self._local_gen[ino] = self._local_gen.get(ino, 0) + 1
        elif node.dirty is None and node.blocks is None and node.size > 0:
            await self.tree.load_blocks(node)
        node = self.state.current(node)  # truncated, or its blocks loaded
        handle = self._new_handle(node, write=write)
        if flags & os.O_TRUNC and write:
            handle.dirty = True
        keep = self._kernel_version.get(ino) == node.version
        self._kernel_version[ino] = node.version
        told = self._told_version.get(ino, node.version)
        if told != node.version and self._refresh_attrs is not None:
            # changed elsewhere since the kernel got its size, and the invalidation the feed
            # queued may not have reached it yet: without this, a program opening the file
            # now reads the new content cut at the old size, and writes where it thinks the
            # end is (convergence seed 1402)
            self._told_version[ino] = node.version
            await self._refresh_attrs(ino)
        return handle.fh, keep

    async def create(self, parent: int, raw: bytes, mode: int, flags: int) -> tuple[int, Attr]:
        name = _name(raw)
        self._dir(parent)
        if await self._child(parent, name) is not None:
            raise VfsError(errno.EEXIST)
        self._child_path(parent, name)
        node = self.edits.new_node(parent, name, "file", mode)
        node = self.content.start_dirty(node, empty=True)
        self.edits.add(node, "")
        handle = self._new_handle(node, write=True)
        handle.dirty = True
        self._kernel_version[node.ino] = node.version
        self.remember(node.ino)
        return handle.fh, self._attr(node)

    def _file(self, fh: int) -> tuple[FileHandle, Node]:
        handle = self._handles.get(fh)
        if not isinstance(handle, FileHandle):
            raise VfsError(errno.EBADF)
        return handle, self._node(handle.ino)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle, node = self._file(fh)
        # The kernel's read-ahead sends several reads at once and they may arrive out of
        # order, so "sequential" means near where the last read ended, not exactly there.
        sequential = off == 0 or abs(off - handle.last_end) <= SEQUENTIAL_SLACK_BYTES
        handle.last_end = max(handle.last_end, off + size) if sequential else off + size
        snap = handle.snapshot
        if snap is not None and handle.local_gen == self._local_gen.get(node.ino, 0):
            blocks, starts, fsize = snap
            return await read_blocks(
                self.content.fetcher,
                blocks,
                starts,
                off,
                min(off + size, fsize),
                readahead=READAHEAD_BLOCKS if sequential else 0,
            )
        handle.snapshot = None
        return await self.content.read(node, off, size, readahead=sequential)

    async def write(self, fh: int, off: int, data: bytes) -> int:
        handle, node = self._file(fh)
        n = await self.content.write(node, off, data)
        handle.dirty = True
        handle.snapshot = None
        self._local_gen[node.ino] = self._local_gen.get(node.ino, 0) + 1
        node = self.state.current(node)  # as the write left it
        self._kernel_version[node.ino] = node.version  # the kernel saw this write
        return n

    async def flush(self, fh: int) -> None:
        handle, node = self._file(fh)
        if handle.dirty:
            handle.dirty = False
            await self.content.flush(node)
            self._queue_commit(node)

    async def fsync(self, fh: int) -> None:
        await self.flush(fh)
        _, node = self._file(fh)
        await self.content.sync(node)

    async def release(self, fh: int) -> None:
        handle = self._handles.get(fh)
        if not isinstance(handle, FileHandle):
            return
        if handle.dirty and self.state.node(handle.ino) is not None:
            await self.flush(fh)
        self._handles.pop(fh, None)
        if handle.writable:
            writers = self._writers.get(handle.ino, 1) - 1
            if writers:
                self._writers[handle.ino] = writers
            else:
                del self._writers[handle.ino]
                self._wake()  # a commit of this file may be waiting for its last writer
                if self.tree.reconciler is not None:  # a delete from elsewhere may wait too
                    self.tree.reconciler.writers_done(handle.ino)
        left = self._open_count.get(handle.ino, 1) - 1
        if left:
            self._open_count[handle.ino] = left
        else:
            self._open_count.pop(handle.ino, None)
            node = self.state.node(handle.ino)
            if node is not None and node.dirty is None:
                self.content.close_fd(handle.ino)
            self.release_unlinked(handle.ino)

    # -- the rest -----------------------------------------------------------------------

    async def statfs(self) -> FsStats:
        quota, used = self._quota() if self._quota else (DEFAULT_QUOTA_BYTES, 0)
        bsize = 4096
        return FsStats(
            block_size=bsize,
            blocks=max(1, quota // bsize),
            blocks_free=max(0, (quota - used) // bsize),
            files=1 << 32,
            files_free=1 << 31,
            name_max=MAX_NAME_BYTES,
        )

    def open_handles(self) -> int:
        return len(self._handles)


def _removes(op: QueuedOp, ino: int) -> bool:
    """Whether queued `op` is a program's removal of file `ino` (a delete, a rename over)."""
    return (isinstance(op, Delete) and op.ino == ino) or (
        isinstance(op, Move) and op.dst_ino == ino and op.mode == "replace"
    )
