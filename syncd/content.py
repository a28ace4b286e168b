"""File content on this client: reading a revision's blocks, and local dirty edits.

A clean file is its block list (read through `BlockFetcher`). The first write, truncate or
O_TRUNC turns it dirty: a sparse local file `home/dirty/<ino>` plus `Dirty.ranges` (which
bytes of it are valid) over the base revision's blocks. Writes return at local-disk speed
(big aligned ones with O_DIRECT: the file is written once and read once, by the uploader);
`flush()` (close) records them for the uploader, safe from a crash of the client; `sync()`
(fsync) also makes them durable against a crash of the machine.
`materialize()` fills the gaps from the base blocks so the uploader can chunk a whole file.

Both the mount (reads/writes) and the uploader (materialize/finish) use this one class, so
the rules about ranges live in one place.

Concurrency: on the trio thread. Disk I/O goes through `run_io`. A per-inode lock
serialises the "pwrite then update ranges" steps of writers and of `materialize`, so a
gap filled from the base can never overwrite a user's write. Records are immutable: each
step of an edit applies its change to the inode's record as it is then (after an await it
may be another: an upload finished or rebased it) and stages it (`StateDB.stage`) until
`flush` writes it.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import trio

from blockstore.aio import run_io
from blockstore.direct_write import open_direct, pread_direct, pwrite_direct
from blockstore.ids import BlockId
from blockstore.wire import MAX_FILE_BYTES
from syncd import ranges as rg
from syncd.blocks import BlockCacheLike, BlockFetcher
from syncd.state import Dirty, Node, StateDB

__all__ = ["READAHEAD_BLOCKS", "ContentStore", "NoSpace", "OverQuota", "read_blocks"]

log = logging.getLogger(__name__)

T = TypeVar("T")

READAHEAD_BLOCKS = 32
"""Blocks fetched ahead of a sequential reader (about 32 MiB at the 1 MiB average block
size): with `FETCH_GROUP` 4, up to eight read-ahead requests are in flight. Cold 512 MiB
read on the 2-core VM, two runs each (second tuning round): 8 blocks 226-279 MiB/s, 12 blocks
234-296, 16 blocks 323-334, 24 blocks 334. Cold 1 GiB read, interleaved (third tuning round, the
server serving blocks in threads): 16 blocks 367/368 MiB/s, 32 blocks 406/396/394/387,
64 blocks 394/351."""


class NoSpace(OSError):
    """Local storage limit reached and nothing can be evicted (ENOSPC)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)


class OverQuota(OSError):
    """The account has no room for these bytes, as far as this client knows (EDQUOT)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EDQUOT, message)


class TooBig(OSError):
    def __init__(self, message: str) -> None:
        super().__init__(errno.EFBIG, message)


def _pin_all(cache: BlockCacheLike, blocks: Sequence[tuple[BlockId, int]], owner: str) -> None:
    for bid, _ in blocks:
        cache.pin(bid, owner)


def _starts(blocks: Sequence[tuple[BlockId, int]]) -> list[int]:
    out: list[int] = []
    pos = 0
    for _, size in blocks:
        out.append(pos)
        pos += size
    return out


async def read_blocks(
    fetcher: BlockFetcher,
    blocks: Sequence[tuple[BlockId, int]],
    starts: Sequence[int],
    off: int,
    end: int,
    *,
    readahead: int = 0,
) -> bytes:
    """Bytes `[off, end)` of the content made of `blocks` (starting at `starts`).

    Past the last block reads as nothing; `readahead` > 0 prefetches the next blocks.
    """
    if not blocks or off >= end:
        await trio.lowlevel.checkpoint()
        return b""
    i = bisect.bisect_right(starts, off) - 1
    parts: list[bytes | memoryview] = []  # views: the one copy is the join (or `bytes`)
    pos = off
    last = i
    while pos < end and i < len(blocks):
        bid, size = blocks[i]
        bstart = starts[i]
        if bstart + size <= pos:
            i += 1
            continue
        data = await fetcher.get(bid)
        lo = pos - bstart
        hi = min(size, end - bstart)
        parts.append(memoryview(data)[lo:hi] if (lo, hi) != (0, len(data)) else data)
        pos = bstart + hi
        last = i
        i += 1
    if readahead:
        fetcher.prefetch(b for b, _ in blocks[last + 1 : last + 1 + readahead])
    if len(parts) == 1:
        return bytes(parts[0])  # a whole block is returned as is, a view copied once
    return b"".join(parts)


class ContentStore:
    """Reads and writes the content of files, clean or dirty."""

    def __init__(
        self, state: StateDB, dirty_dir: Path, fetcher: BlockFetcher, limit_bytes: int
    ) -> None:
        self.state = state
        self.dirty_dir = dirty_dir
        self.fetcher = fetcher
        self.limit_bytes = limit_bytes
        self._fds: dict[int, int] = {}
        self._direct_fds: dict[int, int] = {}
        self._direct = True  # until the filesystem refuses O_DIRECT (tmpfs)
        self._locks: dict[int, trio.Lock] = {}
        self._inflight: dict[int, int] = {}
        self._editing: dict[int, int] = {}
        self._retired: dict[int, list[int]] = {}
        self._pinned: set[int] = set()
        self.room: Callable[[], int] | None = None
        """Bytes the account still has room for on the server, as last heard (None: no
        limit known). A write that cannot fit is refused with EDQUOT at once instead of
        being acknowledged and then refused by the server."""
        self.on_dirty: Callable[[Node], None] | None = None
        """Called when a file turns dirty (presence notices, R10); must not block."""
        self.dirty_bytes = sum(rg.total(n.dirty.ranges) for n in state.dirty_nodes() if n.dirty)

    # -- helpers --------------------------------------------------------------------------

    def path(self, ino: int) -> Path:
        return self.dirty_dir / str(ino)

    def _lock(self, ino: int) -> trio.Lock:
        lock = self._locks.get(ino)
        if lock is None:
            lock = self._locks[ino] = trio.Lock()
        return lock

    def _fd(self, ino: int) -> int:
        fd = self._fds.get(ino)
        if fd is None:
            fd = os.open(self.path(ino), os.O_RDWR | os.O_CREAT, 0o600)
            self._fds[ino] = fd
        return fd

    def _direct_fd(self, ino: int) -> int | None:
        """A second descriptor of the dirty file, with O_DIRECT (None where unsupported)."""
        fd = self._direct_fds.get(ino)
        if fd is None and self._direct:
            self._fd(ino)  # creates the file
            fd = open_direct(self.path(ino))
            if fd is None:
                self._direct = False
            else:
                self._direct_fds[ino] = fd
        return fd

    def close_fd(self, ino: int) -> None:
        """Close the descriptors of `ino`'s dirty file; those a worker thread is using
        right now are closed when it is done (a descriptor closed under a pending `pwrite`
        could be reused by another open and take bytes meant for this file)."""
        for fds in (self._fds, self._direct_fds):
            fd = fds.pop(ino, None)
            if fd is None:
                continue
            if self._inflight.get(ino):
                self._retired.setdefault(ino, []).append(fd)
            else:
                os.close(fd)

    @contextlib.contextmanager
    def _in_use(self, ino: int) -> Iterator[None]:
        """Keep `ino`'s descriptors open meanwhile, even if `close_fd` is called."""
        try:
            with _counted(self._inflight, ino):
                yield
        finally:
            if ino not in self._inflight:
                for fd in self._retired.pop(ino, ()):
                    os.close(fd)

    def _edit(self, ino: int) -> contextlib.AbstractContextManager[None]:
        """Mark a write or truncate of `ino` as under way until it has landed: see
        `unchanged_since`."""
        return _counted(self._editing, ino)

    def unchanged_since(self, node: Node, gen: int) -> bool:
        """Whether `node`'s content is still what an upload read at dirty generation `gen`:
        not written since, and no write or truncate halfway. One halfway keeps `gen` while
        its bytes land (or the file shrinks) in a worker thread; taking the upload as the
        file's clean content then would drop that edit, or bring back bytes it cut off."""
        dirty = node.dirty
        return dirty is not None and dirty.gen == gen and not self._editing.get(node.ino)

    async def _io(self, ino: int, fn: Callable[..., T], *args: Any) -> T:
        """`run_io(fn, *args)` for I/O on `ino`'s descriptors (see `close_fd`)."""
        with self._in_use(ino):
            return await run_io(fn, *args)

    def _reserve(self, nbytes: int) -> None:
        """Refuse a write that would make unsynced data exceed the local storage limit.

        Clean cached blocks are always evictable, so only dirty data can fill the limit;
        the block cache's own bound shrinks as dirty data grows (evicted on its next put).
        """
        room = self.room() if self.room is not None else None
        if nbytes > 0 and room is not None and self.dirty_bytes + nbytes > room:
            raise OverQuota(
                f"the account's storage quota has room for {max(0, room)} more bytes and "
                f"{self.dirty_bytes} are waiting for upload"
            )
        if nbytes > 0 and self.dirty_bytes + nbytes > self.limit_bytes:
            log.warning(
                "local storage limit of %d bytes is full of unsynced data (%d bytes); "
                "write refused with ENOSPC",
                self.limit_bytes,
                self.dirty_bytes,
            )
            raise NoSpace("local cache full of unsynced data")
        self._resize_cache(nbytes)

    def _resize_cache(self, extra: int = 0) -> None:
        cache = self.fetcher.cache
        if hasattr(cache, "max_bytes"):
            cache.max_bytes = max(1 << 20, self.limit_bytes - self.dirty_bytes - extra)

    def start_dirty(self, node: Node, *, empty: bool = False) -> Node:
        """`node` turned dirty (idempotent), staged as its inode's record. `empty`: the old
        content is not needed (O_TRUNC)."""
        if node.dirty is not None:
            return node
        if empty or not node.blocks:
            dirty = Dirty(base_blocks=(), base_size=0, ranges=())
        else:
            dirty = Dirty(base_blocks=node.blocks, base_size=node.size, ranges=())
        self._fd(node.ino)
        node = replace(node, dirty=dirty, version=node.version + 1)
        self.state.stage(node)
        if self.on_dirty is not None:
            self.on_dirty(node)
        return node

    def _dirty_now(self, node: Node, *, empty: bool = False) -> tuple[Node, Dirty]:
        """The current record of `node`'s inode, dirty, and its `Dirty`: every step of an
        edit starts from it, since an `await` before may have let an upload finish (clean:
        dirty again) or rebase it."""
        node = self.start_dirty(self.state.current(node), empty=empty)
        assert node.dirty is not None
        return node, node.dirty

    def _stage(self, node: Node) -> Node:
        self.state.stage(node)
        return node

    async def _pin_base(self, node: Node) -> None:
        dirty = node.dirty
        if dirty is None or not dirty.base_blocks or node.ino in self._pinned:
            return
        self._pinned.add(node.ino)
        await run_io(_pin_all, self.fetcher.cache, dirty.base_blocks, f"dirty:{node.ino}")

    # -- reads ------------------------------------------------------------------------------

    async def read(self, node: Node, off: int, size: int, *, readahead: bool = False) -> bytes:
        """Read the current local content of `node` (dirty data first)."""
        end = min(off + size, node.size)
        if off >= end:
            await trio.lowlevel.checkpoint()
            return b""
        dirty = node.dirty
        if dirty is None:
            return await read_blocks(
                self.fetcher,
                node.blocks or (),
                node.block_starts(),
                off,
                end,
                readahead=READAHEAD_BLOCKS if readahead else 0,
            )
        with self._in_use(node.ino):  # the upload may finish (and close it) meanwhile
            return await self._read_dirty(node, dirty, off, end)

    async def _read_dirty(self, node: Node, dirty: Dirty, off: int, end: int) -> bytes:
        fd, direct = self._fd(node.ino), self._direct_fd(node.ino)  # once: see `_in_use`
        pieces: list[bytes] = []
        base_starts: list[int] | None = None
        for s, e, inside in rg.covered(dirty.ranges, off, end):
            if inside:
                pieces.append(await self._io(node.ino, _read_at, fd, direct, e - s, s))
                continue
            bend = min(e, dirty.base_size)
            if s < bend:
                if base_starts is None:
                    base_starts = _starts(dirty.base_blocks)
                pieces.append(
                    await read_blocks(self.fetcher, dirty.base_blocks, base_starts, s, bend)
                )
            if max(s, bend) < e:
                pieces.append(bytes(e - max(s, bend)))
        return b"".join(pieces)

    # -- writes -----------------------------------------------------------------------------

    async def write(self, node: Node, off: int, data: bytes) -> int:
        end = off + len(data)
        if end > MAX_FILE_BYTES:
            raise TooBig(f"files are limited to {MAX_FILE_BYTES} bytes")
        with self._edit(node.ino):
            return await self._write(node, off, data)

    async def _write(self, node: Node, off: int, data: bytes) -> int:
        end = off + len(data)
        node, dirty = self._dirty_now(node)
        # no await since start_dirty: an upload finishing now keeps it dirty
        node = self._stage(replace(node, dirty=replace(dirty, gen=dirty.gen + 1)))
        await self._pin_base(node)
        node, dirty = self._dirty_now(node)
        new_bytes = sum(e - s for s, e in rg.gaps(dirty.ranges, off, end))
        self._reserve(new_bytes)
        async with self._lock(node.ino):
            fd = self._fd(node.ino)
            node, dirty = self._dirty_now(node)
            # before the bytes land too: an upload reading now is torn
            self._stage(replace(node, dirty=replace(dirty, gen=dirty.gen + 1)))
            written = await self._io(node.ino, _write_at, fd, self._direct_fd(node.ino), data, off)
            node, dirty = self._dirty_now(node)
            dirty = replace(dirty, ranges=rg.add(dirty.ranges, off, off + written),
                            gen=dirty.gen + 1)  # fmt: skip
            now = time.time_ns()
            self._stage(replace(node, dirty=dirty, size=max(node.size, off + written),
                                mtime_ns=now, ctime_ns=now, version=node.version + 1))  # fmt: skip
        self.dirty_bytes += new_bytes
        return written

    async def truncate(self, node: Node, size: int) -> None:
        if size > MAX_FILE_BYTES:
            raise TooBig(f"files are limited to {MAX_FILE_BYTES} bytes")
        with self._edit(node.ino):
            node, dirty = self._dirty_now(node, empty=size == 0)
            dirty = replace(dirty, gen=dirty.gen + 1)  # as in `write`
            if size < node.size:  # also before any await: see `rebase`
                dirty = replace(dirty, shrunk_gen=dirty.gen)
            node = self._stage(replace(node, dirty=dirty))
            await self._pin_base(node)
            async with self._lock(node.ino):
                node, dirty = self._dirty_now(node)
                shrinks = size < node.size
                if shrinks:  # an upload that read the file before this saw the cut bytes
                    before = rg.total(dirty.ranges)
                    dirty = replace(dirty, ranges=rg.clip(dirty.ranges, size),
                                    base_size=min(dirty.base_size, size),
                                    shrunk_gen=dirty.gen + 1)  # fmt: skip
                    self.dirty_bytes -= before - rg.total(dirty.ranges)
                now = time.time_ns()
                # the whole new state in one record (an upload may read it from here on)
                # before the dirty file shrinks: its bytes below `size` stay as they are
                dirty = replace(dirty, gen=dirty.gen + 1)
                self._stage(replace(node, dirty=dirty, size=size, mtime_ns=now, ctime_ns=now,
                                    version=node.version + 1))  # fmt: skip
                if shrinks:
                    await self._io(node.ino, os.ftruncate, self._fd(node.ino), size)

    async def flush(self, node: Node) -> None:
        """Record the dirty state of `node` (on close): it survives a crash of the client.

        The data was `pwrite`n to the dirty file and the LMDB transaction commits into the
        OS page cache, so a killed client loses nothing; surviving a crash of the machine
        is what `sync()` (fsync) adds. Not syncing on every close is what makes saving
        1,000 small files cost milliseconds instead of 1,000 disk flushes.
        """
        await trio.lowlevel.checkpoint()
        with self.state.write() as w:
            w.put_node(self.state.current(node))

    async def sync(self, node: Node) -> None:
        """fsync: make the dirty data of `node` and its record durable on disk."""
        if node.dirty is not None and node.ino in self._fds:
            await self._io(node.ino, os.fdatasync, self._fds[node.ino])
        with self.state.write() as w:
            w.put_node(self.state.current(node))
        await run_io(self.state.sync)

    # -- for the uploader -------------------------------------------------------------------

    async def materialize(self, node: Node) -> None:
        """Fill every gap of the dirty file so it holds the whole content (stops if an upload
        made it clean meanwhile)."""
        node = self.state.current(node)
        dirty = node.dirty
        if dirty is None:
            return
        base_blocks, base_starts = dirty.base_blocks, _starts(dirty.base_blocks)
        for gs, ge in rg.gaps(dirty.ranges, 0, min(dirty.base_size, node.size)):
            pos = gs
            while pos < ge:
                i = bisect.bisect_right(base_starts, pos) - 1
                bid, bsize = base_blocks[i]
                bstart = base_starts[i]
                stop = min(ge, bstart + bsize)
                data = await self.fetcher.get(bid)
                async with self._lock(node.ino):
                    dirty = self.state.current(node).dirty
                    for s, e in rg.gaps(dirty.ranges if dirty else (), pos, stop):
                        await self._io(
                            node.ino,
                            os.pwrite,
                            self._fd(node.ino),
                            data[s - bstart : e - bstart],
                            s,
                        )
                        node = self.state.current(node)
                        if node.dirty is None:
                            return
                        ranges = rg.add(node.dirty.ranges, s, e)
                        self._stage(replace(node, dirty=replace(node.dirty, ranges=ranges)))
                        self.dirty_bytes += e - s
                pos = stop
        async with self._lock(node.ino):
            fd = self._fd(node.ino)
            size = self.state.current(node).size
            if (await self._io(node.ino, os.fstat, fd)).st_size != size:
                await self._io(node.ino, os.ftruncate, fd, size)
            node = self.state.current(node)
            if node.dirty is None:
                return
            self.dirty_bytes += node.size - rg.total(node.dirty.ranges)
            ranges = ((0, node.size),) if node.size else ()
            self._stage(replace(node, dirty=replace(node.dirty, ranges=ranges)))

    def dirty_file_short(self, node: Node) -> bool:
        """Whether `node`'s dirty file lacks bytes its record says it holds. A kill between
        `finish_clean`, which removes the file, and the write of the clean record leaves it
        so (blocking: call it from a worker thread)."""
        dirty = node.dirty
        if dirty is None or not dirty.ranges:
            return False
        try:
            size = os.stat(self.path(node.ino)).st_size
        except FileNotFoundError:
            return True
        return size < max(end for _, end in dirty.ranges)

    def finish_clean(self, node: Node) -> Node:
        """The uploaded content is on the server: drop the dirty file and its pins. Returns
        `node` clean (staged; the caller writes it)."""
        if node.dirty is not None:
            self.dirty_bytes -= rg.total(node.dirty.ranges)
            node = self._stage(replace(node, dirty=None))
        self.close_fd(node.ino)
        self._locks.pop(node.ino, None)
        with contextlib.suppress(FileNotFoundError):
            self.path(node.ino).unlink()
        self._pinned.discard(node.ino)
        self.fetcher.cache.unpin_owner(f"dirty:{node.ino}")
        self._resize_cache()
        return node

    def rebase(self, node: Node, blocks: Sequence[tuple[BlockId, int]], size: int,
               gen: int) -> Node:  # fmt: skip
        """`blocks` (the content at `gen`) reached the server while `node` was written again:
        make them the base of the remaining dirty ranges, so the next upload re-chunks only
        what changed since. Not after a shrinking truncate since `gen`: those blocks hold
        bytes that were cut off, and the hole of a later extend must read as zeros.
        Returns `node` rebased (staged; the caller writes it)."""
        dirty = node.dirty
        if dirty is None or dirty.shrunk_gen > gen:
            return node
        dirty = replace(dirty, base_blocks=tuple(blocks), base_size=min(size, node.size))
        return self._stage(replace(node, dirty=dirty))

    def discard(self, node: Node) -> None:
        """The file is gone (unlinked and forgotten): drop local content."""
        self.finish_clean(node)


@contextlib.contextmanager
def _counted(counts: dict[int, int], key: int) -> Iterator[None]:
    """Count `key` in `counts` meanwhile (absent at zero)."""
    counts[key] = counts.get(key, 0) + 1
    try:
        yield
    finally:
        left = counts[key] - 1
        if left:
            counts[key] = left
        else:
            del counts[key]


def _write_at(fd: int, direct_fd: int | None, data: bytes, off: int) -> int:
    """Big aligned writes skip the page cache (`blockstore.direct_write`): a dirty file is
    written once and read once by the uploader, and on VMs filling fresh page-cache pages
    costs more than the copy itself (docs/performance.md). The rest is a plain pwrite."""
    if direct_fd is not None:
        written = pwrite_direct(direct_fd, data, off)
        if written is not None:
            return written
    return os.pwrite(fd, data, off)


def _read_at(fd: int, direct_fd: int | None, size: int, off: int) -> bytes:
    """Big reads skip the page cache, like `_write_at`; small ones use it."""
    if direct_fd is not None:
        got = pread_direct(direct_fd, size, off)
        if got is not None:
            return got
    return os.pread(fd, size, off)
