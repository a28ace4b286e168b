"""Keeping the local tree in step with the server's listing.

A directory is re-listed from the server the first time it is used in a session (a fresh
mount must show the server's tree), and the answer is merged into LMDB so that `ls` later,
and a remount with the server down, never wait for the network. Local changes win: while
the upload queue is not empty, a listing only adds entries we do not know, it never moves
or removes ours (the queue has not told the server yet).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from blockstore.wire import ROOT_PATH, FileRecord, InvalidPath, path_parts
from syncd import errors
from syncd.remote import RemoteClient
from syncd.state import ROOT_INO, Node, StateDB, Writer

__all__ = ["TreeSync", "ino_at", "node_from_record", "path_of"]

log = logging.getLogger(__name__)

LIST_TIMEOUT_S = 5.0
OFFLINE_RECHECK_S = 2.0

Invalidate = Callable[[int, str, int], None]
"""`(parent ino, name, child ino)`: the kernel must forget this entry."""
Changed = Callable[[int], None]
"""`ino`: the kernel must drop cached attributes/pages of this inode."""


def path_of(state: StateDB, ino: int) -> str:
    """The drive path of `ino` (walks parents up to the root).

    Raises:
        KeyError: `ino` (or an ancestor) is unknown or unlinked.
    """
    parts: list[str] = []
    while ino != ROOT_INO:
        node = state.node(ino)
        if node is None or not node.linked:
            raise KeyError(ino)
        parts.append(node.name)
        ino = node.parent
    return "/" + "/".join(reversed(parts)) if parts else ROOT_PATH


def ino_at(state: StateDB, path: str) -> int | None:
    """The inode this device shows at drive path `path`, or None."""
    ino = ROOT_INO
    try:
        parts = path_parts(path)
    except InvalidPath:
        return None
    for part in parts:
        nxt = state.lookup(ino, part)
        if nxt is None:
            return None
        ino = nxt
    return ino


def node_from_record(ino: int, parent: int, rec: FileRecord) -> Node:
    node = Node(
        ino=ino,
        parent=parent,
        name=rec.name,
        kind=rec.kind,
        mode=rec.mode,
        size=rec.size if rec.kind == "file" else 0,
        mtime_ns=rec.mtime_ns,
        ctime_ns=rec.mtime_ns,
        server_id=rec.id,
        rev=rec.rev,
        target=rec.target,
    )
    if rec.kind == "symlink" and rec.target is not None:
        node.size = len(rec.target.encode())
    node.set_blocks(None if rec.blocks is None else list(rec.blocks))
    return node


class TreeSync:
    """Lists directories from the server into the local state."""

    def __init__(
        self,
        state: StateDB,
        remote: RemoteClient | None,
        *,
        on_removed: Invalidate | None = None,
        on_changed: Changed | None = None,
    ) -> None:
        self.state = state
        self.remote = remote
        self.on_removed = on_removed
        self.on_changed = on_changed
        self.fresh: set[int] = set()
        self.online = remote is not None
        self._offline_since = 0.0
        self._locks: dict[int, trio.Lock] = {}

    def mark_offline(self) -> None:
        self.online = False
        self._offline_since = time.monotonic()

    def mark_online(self) -> None:
        self.online = True

    async def ensure_listed(self, dir_ino: int) -> None:
        """List `dir_ino` from the server if not done this session.

        Falls back silently to the local tree when the server is unreachable and the
        directory was listed before; raises `Offline` if it never was.
        """
        if dir_ino in self.fresh:
            return
        node = self.state.node(dir_ino)
        if node is None or node.kind != "dir":
            return
        if node.server_id is None:
            self.fresh.add(dir_ino)  # created here, the server has nothing more
            return
        recheck = time.monotonic() - self._offline_since > OFFLINE_RECHECK_S
        if self.remote is None or (not self.online and not recheck):
            if node.listed:
                return
            raise errors.Offline("directory never listed and the server is unreachable")
        lock = self._locks.setdefault(dir_ino, trio.Lock())
        async with lock:
            if dir_ino in self.fresh:
                return
            try:
                with trio.fail_after(LIST_TIMEOUT_S):
                    records = await self.remote.list_dir(path_of(self.state, dir_ino))
            except (errors.Offline, trio.TooSlowError) as exc:
                self.mark_offline()
                if node.listed:
                    log.info("server unreachable; showing the local copy of the tree (%s)", exc)
                    return
                raise errors.Offline(f"cannot list directory: {exc}") from exc
            except errors.NotFound:
                self.fresh.add(dir_ino)
                return
            self.mark_online()
            self.merge_listing(node, records)
            self.fresh.add(dir_ino)

    def merge_listing(self, dir_node: Node, records: list[FileRecord]) -> None:
        """Merge the server's children of `dir_node` into the local tree (one transaction)."""
        cautious = self.state.op_count() > 0
        seen: set[int] = set()
        removed: list[tuple[str, int]] = []
        changed: list[int] = []
        with self.state.write() as w:
            for rec in records:
                ino = self._upsert(w, dir_node.ino, rec, cautious, changed)
                if ino is not None:
                    seen.add(ino)
            if not cautious:
                for name, ino in self.state.children(dir_node.ino):
                    if ino in seen:
                        continue
                    child = self.state.node(ino)
                    if child is None or child.server_id is None or child.dirty is not None:
                        continue
                    w.unlink(dir_node.ino, name)
                    child.linked = False
                    w.put_node(child)
                    removed.append((name, ino))
            dir_node.listed = True
            w.put_node(dir_node)
        for name, ino in removed:
            if self.on_removed:
                self.on_removed(dir_node.ino, name, ino)
        for ino in changed:
            if self.on_changed:
                self.on_changed(ino)

    def _upsert(
        self, w: Writer, parent: int, rec: FileRecord, cautious: bool, changed: list[int]
    ) -> int | None:
        ino = self.state.ino_for_server_id(rec.id)
        node = self.state.node(ino) if ino is not None else None
        if node is None:
            existing = self.state.lookup(parent, rec.name)
            if existing is not None:
                other = self.state.node(existing)
                if other is not None and (other.server_id is None or cautious):
                    return existing  # a local entry of that name waits for upload
                if other is not None:
                    other.linked = False
                    w.put_node(other)
            ino = rec.id
            node = node_from_record(ino, parent, rec)
            w.put_node(node)
            w.link(parent, rec.name, ino)
            return ino
        if cautious or node.dirty is not None:
            return node.ino
        moved = (node.parent, node.name) != (parent, rec.name)
        if moved and node.linked and self.state.lookup(node.parent, node.name) == node.ino:
            w.unlink(node.parent, node.name)
            if self.on_removed:
                self.on_removed(node.parent, node.name, node.ino)
        node.parent, node.name, node.linked = parent, rec.name, True
        w.link(parent, rec.name, node.ino)
        if node.rev != rec.rev or node.size != rec.size or node.kind != rec.kind:
            node.kind = rec.kind
            node.size = rec.size if rec.kind == "file" else node.size
            node.rev = rec.rev
            node.set_blocks(None if rec.blocks is None else list(rec.blocks))
            node.version += 1
            changed.append(node.ino)
        if rec.kind == "symlink":
            node.target = rec.target
            node.size = len((rec.target or "").encode())
        node.mode, node.mtime_ns = rec.mode, rec.mtime_ns
        w.put_node(node)
        return node.ino

    async def load_blocks(self, node: Node) -> None:
        """Fetch the block list of a file whose listing did not carry one."""
        if node.blocks is not None or node.dirty is not None or node.server_id is None:
            return
        if self.remote is None:
            raise errors.Offline("no server configured")
        with trio.fail_after(LIST_TIMEOUT_S * 2):
            rec = await self.remote.meta(file_id=node.server_id)
        node.set_blocks(list(rec.blocks or ()))
        if rec.rev != node.rev or rec.size != node.size:
            node.version += 1
        node.rev, node.size, node.mtime_ns = rec.rev, rec.size, rec.mtime_ns
        with self.state.write() as w:
            w.put_node(node)
