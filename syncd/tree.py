"""Keeping the local tree in step with the server's listing.

A directory is re-listed from the server the first time it is used in a session (a fresh
mount must show the server's tree), and the answer is merged into LMDB (by the reconciler,
`syncd.changes`, with the same rules as the change feed) so that `ls` later, and a remount
with the server down, never wait for the network.
"""

from __future__ import annotations

import errno
import logging
import math
from dataclasses import replace
from typing import TYPE_CHECKING

import trio

from blockstore.wire import ROOT_PATH, FileRecord, InvalidPath, path_parts
from syncd import errors
from syncd.remote import RemoteClient
from syncd.state import ROOT_INO, Node, StateDB

if TYPE_CHECKING:
    from syncd.changes import ChangeApplier

__all__ = ["TreeSync", "ino_at", "node_from_record", "path_of"]

log = logging.getLogger(__name__)

LIST_TIMEOUT_S = 5.0
OFFLINE_RECHECK_S = 2.0


def path_of(state: StateDB, ino: int) -> str:
    """The drive path of `ino` (walks parents up to the root).

    Raises:
        KeyError: `ino` (or an ancestor) is unknown or unlinked.
    """
    parts: list[str] = []
    seen: set[int] = set()
    while ino != ROOT_INO:
        node = state.node(ino)
        if node is None or not node.linked or ino in seen:  # (a loop: never made, see
            raise KeyError(ino)  # `Writer.put_node`, but never walked forever either)
        seen.add(ino)
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
    size = rec.size if rec.kind == "file" else 0
    if rec.kind == "symlink" and rec.target is not None:
        size = len(rec.target.encode())
    return Node(
        ino=ino,
        parent=parent,
        name=rec.name,
        kind=rec.kind,
        mode=rec.mode,
        size=size,
        mtime_ns=rec.mtime_ns,
        ctime_ns=rec.mtime_ns,
        server_id=rec.id,
        rev=rec.rev,
        blocks=None if rec.blocks is None else tuple(rec.blocks),
        target=rec.target,
    )


class TreeSync:
    """Lists directories from the server; the answers are merged by the reconciler."""

    def __init__(
        self, state: StateDB, remote: RemoteClient | None, reconciler: ChangeApplier | None = None
    ) -> None:
        self.state = state
        self.remote = remote
        self.reconciler = reconciler
        self.fresh: set[int] = set()
        self.online = remote is not None
        self._offline_since = -math.inf
        self._locks: dict[int, trio.Lock] = {}

    def mark_offline(self) -> None:
        self.online = False
        self._offline_since = trio.current_time()

    def mark_online(self) -> None:
        self.online = True

    def _may_ask(self) -> bool:
        """Whether to ask the server now: online, or offline long enough to try again
        (else a program waits for a timeout at every request while the server is away)."""
        return self.online or trio.current_time() - self._offline_since > OFFLINE_RECHECK_S

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
        if self.remote is None or self.reconciler is None or not self._may_ask():
            if node.listed:
                return
            raise errors.Offline("directory never listed and the server is unreachable")
        lock = self._locks.setdefault(dir_ino, trio.Lock())
        async with lock:
            if dir_ino in self.fresh:
                return
            known = {ino: self._server_id(ino) for _, ino in self.state.children(dir_ino)}
            since = self.state.finished_mark()
            try:
                path = path_of(self.state, dir_ino)
            except KeyError:  # not reachable from the root (a folder above it went)
                self.fresh.add(dir_ino)
                return
            try:
                with trio.fail_after(LIST_TIMEOUT_S):
                    records = await self.remote.list_dir(path, file_id=node.server_id)
            except (errors.Offline, trio.TooSlowError) as exc:
                self.mark_offline()
                if self.state.current(node).listed:
                    log.info("server unreachable; showing the local copy of the tree (%s)", exc)
                    return
                raise errors.Offline(f"cannot list directory: {exc}") from exc
            except errors.NotFound:
                self.fresh.add(dir_ino)
                return
            self.mark_online()
            self.reconciler.merge_listing(node, records, known, since)
            self.fresh.add(dir_ino)

    def _server_id(self, ino: int) -> int | None:
        node = self.state.node(ino)
        return None if node is None else node.server_id

    async def load_blocks(self, node: Node) -> None:
        """Fetch the block list of a file whose listing did not carry one."""
        if node.blocks is not None or node.dirty is not None or node.server_id is None:
            return
        if self.remote is None:
            raise errors.Offline("no server configured")
        if not self._may_ask():
            raise errors.Offline(f"{node.name}: its content was never fetched here")
        try:
            with trio.fail_after(LIST_TIMEOUT_S * 2):
                rec = await self.remote.meta(file_id=node.server_id)
        except (errors.Offline, trio.TooSlowError) as exc:
            self.mark_offline()
            raise errors.Offline(f"{node.name}: cannot fetch its block list: {exc}") from exc
        except errors.NotFound:
            if self.reconciler is not None:  # deleted elsewhere and the feed did not say
                self.reconciler.gone(node.ino)
            raise FileNotFoundError(errno.ENOENT, f"{node.name} was deleted elsewhere") from None
        self.mark_online()
        node = self.state.current(node)  # as it is now, after the request
        if node.dirty is not None or node.blocks is not None:
            return  # written here meanwhile, or updated by the feed: newer than this answer
        changed = rec.rev != node.rev or rec.size != node.size
        version = node.version + 1 if changed else node.version
        node = replace(node, blocks=tuple(rec.blocks or ()), rev=rec.rev, size=rec.size,
                       mtime_ns=rec.mtime_ns, version=version)  # fmt: skip
        with self.state.write() as w:
            w.put_node(node)
