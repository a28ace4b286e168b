"""The plain uploader: replays the durable operation log to the server, in order.

Every local change is appended to the LMDB queue (`StateDB.add_op`) by the mount at the
moment it happens; this task sends them one by one, oldest first, and deletes each only
after the server confirmed it, so nothing is lost across crashes, restarts or network loss.
Ordered replay keeps paths right: an op names the paths as they were when it was queued.

A `commit` uploads the whole file: chunk (`blockstore.chunker`), ask which blocks the server
lacks, PUT those in parallel (bounded), then commit with `base_rev` and a `commit_id` that
is saved in the op first, so a retry after a crash is idempotent. A file written while it
is being uploaded is retried, never committed torn. A 409 conflict saves our version as
"name (conflicted copy from DEVICE YYYY-MM-DD HHMMSS).ext" so nothing is lost.

This is the seam the sync-daemon issue replaces (delta uploads, conflicts, follower): keep
the interface `wake()`, `pending()`, `run()`, `wait_idle()`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import trio

from blockstore.aio import run_cpu, run_io
from blockstore.chunker import chunk_stream
from blockstore.codec import encode_wire
from blockstore.errors import CacheFullError
from blockstore.ids import BlockId, block_id
from blockstore.wire import MAX_MISSING_IDS, FileRecord
from syncd import errors
from syncd.blocks import BlockCacheLike
from syncd.content import ContentStore
from syncd.remote import RemoteClient
from syncd.state import Node, StateDB
from syncd.tree import node_from_record, path_of

__all__ = ["Uploader", "conflicted_name"]

log = logging.getLogger(__name__)

PUT_PARALLEL = 4
MAX_BACKOFF_S = 15.0
RETRY_TORN_S = 0.2
MAX_CRASHES = 5


def conflicted_name(name: str, device: str, when: float | None = None) -> str:
    """Dropbox's convention: `a (conflicted copy from DEV 2026-11-22 163000).txt`."""
    stamp = time.strftime("%Y-%m-%d %H%M%S", time.localtime(when))
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    suffix = f" (conflicted copy from {device} {stamp})"
    return f"{stem}{suffix}.{ext}" if ext else f"{stem}{suffix}"


class _Torn(Exception):
    """The file changed while it was being uploaded: try again."""


class Uploader:
    """Sends the queued operations; run `run()` in a nursery."""

    def __init__(
        self,
        state: StateDB,
        content: ContentStore,
        remote: RemoteClient,
        cache: BlockCacheLike,
        device: str,
        *,
        on_changed: Callable[[int], None] | None = None,
    ) -> None:
        self.state = state
        self.content = content
        self.remote = remote
        self.cache = cache
        self.device = device
        self.on_changed = on_changed
        self.online = True
        self.last_error: str | None = None
        self._wake = trio.Event()
        self._idle = trio.Event()
        self.bytes_uploaded = 0
        self.current_seq: int | None = None
        self._failures: dict[int, int] = {}
        """The op being sent now: the mount must not coalesce a new commit into it."""

    def wake(self) -> None:
        """New work was queued."""
        self._wake.set()

    def pending(self) -> int:
        return self.state.op_count()

    async def wait_idle(self) -> None:
        """Return once the queue is empty."""
        while self.state.op_count():
            self._idle = trio.Event()
            await self._idle.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        backoff = 0.5
        while True:
            ops = self.state.ops(limit=1)
            if not ops:
                self._idle.set()
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            seq, op = ops[0]
            self.current_seq = seq
            try:
                await self._apply(seq, op)
            except _Torn:
                await trio.sleep(RETRY_TORN_S)
                continue
            except errors.Offline as exc:
                if self.online:
                    log.warning("server unreachable, %d changes queued: %s", self.pending(), exc)
                self.online = False
                self.last_error = str(exc)
                with trio.move_on_after(backoff):
                    await self._wake.wait()
                    await trio.sleep(backoff / 4)
                self._wake = trio.Event()
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            except errors.RateLimited as exc:
                await trio.sleep(max(0.1, exc.retry_after))
                continue
            except (errors.Unauthorized, errors.ServerError, errors.QuotaExceeded) as exc:
                log.error("upload of %s %s failed, will retry: %s", op["op"], _where(op), exc)
                self.last_error = str(exc)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            except errors.RemoteError as exc:
                log.warning("server refused %s %s; dropping it: %s", op["op"], _where(op), exc)
                self.last_error = str(exc)
            except Exception as exc:  # a bug must not take the mount down
                failures = self._failures[seq] = self._failures.get(seq, 0) + 1
                log.error("upload of %s %s crashed (attempt %d)", op["op"], _where(op),
                          failures, exc_info=exc)  # fmt: skip
                self.last_error = f"{type(exc).__name__}: {exc}"
                if failures < MAX_CRASHES:
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                    continue
                log.error("giving up on %s %s", op["op"], _where(op))
            if not self.online:
                log.info("server reachable again")
            self.online = True
            backoff = 0.5
            with self.state.write() as w:
                w.delete_op(seq)
            self.current_seq = None

    # -- one operation ------------------------------------------------------------------

    async def _apply(self, seq: int, op: dict[str, Any]) -> None:
        kind = op["op"]
        if kind == "commit":
            await self._commit(seq, op)
        elif kind == "mkdir":
            try:
                rec = await self.remote.mkdir(op["path"], op["mode"])
            except errors.Exists:
                rec = await self.remote.meta(path=op["path"])
            self._adopt(op["ino"], rec)
        elif kind == "symlink":
            try:
                rec = await self.remote.symlink(op["path"], op["target"])
            except errors.Exists:
                rec = await self.remote.meta(path=op["path"])
            self._adopt(op["ino"], rec)
        elif kind == "setattr":
            try:
                await self.remote.setattr(op["path"], op.get("mode"), op.get("mtime_ns"))
            except errors.NotFound:
                log.debug("setattr of vanished %s ignored", op["path"])
        elif kind == "move":
            try:
                rec = await self.remote.move(op["from"], op["to"], op["mode"])
            except errors.NotFound:
                node = self.state.node(op["ino"])
                if node is not None and node.linked:
                    raise
                log.debug("move of %s skipped: replaced before it was uploaded", op["from"])
                return
            self._adopt(op.get("ino"), rec, rev_only=True)
        elif kind == "delete":
            try:
                await self.remote.delete(op["path"], op.get("recursive", False))
            except errors.NotFound:
                log.debug("delete of vanished %s ignored", op["path"])
        else:
            log.error("unknown queued operation %r dropped", kind)

    def _adopt(self, ino: int | None, rec: FileRecord, *, rev_only: bool = False) -> None:
        node = self.state.node(ino) if ino is not None else None
        if node is None:
            return
        if node.server_id != rec.id:
            node.server_id = rec.id
        if (rec.kind == "file" and not rev_only) or rec.kind != "file":
            node.rev = rec.rev
        with self.state.write() as w:
            w.put_node(node)

    async def _commit(self, seq: int, op: dict[str, Any]) -> None:
        node = self.state.node(op["ino"])
        if node is None or node.kind != "file" or node.dirty is None:
            return  # already committed by an earlier op, or not a file any more
        if not node.linked:
            return  # deleted before it reached the server
        gen = node.dirty.gen
        await self.content.materialize(node)
        if node.dirty is None or not node.linked:
            return  # dropped (unlinked and forgotten) meanwhile
        path = self.content.path(node.ino)
        refs = await run_io(_chunk_and_cache, path, node.size, self.cache)
        if node.dirty is None or not node.linked:
            return
        if node.dirty.gen != gen:
            raise _Torn
        blocks = [(bid, size) for bid, size, _ in refs]
        missing = await self._missing([bid for bid, _, _ in refs])
        offsets = {bid: (off, size) for bid, size, off in refs}
        await self._put_blocks(path, [(b, *offsets[b]) for b in missing])
        if node.dirty is None or not node.linked:
            return
        if node.dirty.gen != gen:
            raise _Torn
        digest = hashlib.sha256(repr((blocks, node.rev, op["path"])).encode()).hexdigest()
        if op.get("digest") != digest:
            op["digest"] = digest
            op["commit_id"] = f"{self.device}-{node.ino}-{uuid.uuid4().hex}"
            with self.state.write() as w:
                w.replace_op(seq, op)
        size = sum(s for _, s in blocks)
        try:
            rec = await self.remote.commit(
                op["path"], node.rev, blocks, size, node.mtime_ns, node.mode, op["commit_id"]
            )
        except errors.Conflict as exc:
            await self._save_conflict(node, op, blocks, size, exc)
            return
        self.bytes_uploaded += sum(offsets[b][1] for b in missing)
        node.server_id, node.rev = rec.id, rec.rev
        if node.dirty is not None and node.dirty.gen == gen:
            node.set_blocks(blocks)
            self.content.finish_clean(node)
            with self.state.write() as w:
                w.put_node(node)
            return
        if node.dirty is not None:  # written again meanwhile: commit that too
            node.dirty.base_blocks, node.dirty.base_size = blocks, size
        with self.state.write() as w:
            w.put_node(node)
            if node.dirty is not None and node.linked:
                with contextlib.suppress(KeyError):
                    w.add_op(
                        {"op": "commit", "ino": node.ino, "path": path_of(self.state, node.ino)}
                    )

    async def _missing(self, ids: list[BlockId]) -> list[BlockId]:
        unique = list(dict.fromkeys(ids))
        out: list[BlockId] = []
        for i in range(0, len(unique), MAX_MISSING_IDS):
            out.extend(await self.remote.missing_blocks(unique[i : i + MAX_MISSING_IDS]))
        return out

    async def _put_blocks(
        self, path: os.PathLike[str], todo: list[tuple[BlockId, int, int]]
    ) -> None:
        limiter = trio.CapacityLimiter(PUT_PARALLEL)
        failure: list[BaseException] = []

        async def put_one(bid: BlockId, off: int, size: int) -> None:
            async with limiter:
                if failure:
                    return
                frame = await run_cpu(_read_and_encode, path, off, size, bid)
                if frame is None:
                    failure.append(_Torn())
                    return
                await self.remote.put_block(bid, frame)

        async with trio.open_nursery() as nursery:
            for bid, off, size in todo:
                nursery.start_soon(put_one, bid, off, size)
        if failure:
            raise failure[0]

    async def _save_conflict(
        self,
        node: Node,
        op: dict[str, Any],
        blocks: list[tuple[BlockId, int]],
        size: int,
        exc: errors.Conflict,
    ) -> None:
        parent, _, name = op["path"].rpartition("/")
        cname = conflicted_name(name, self.device)
        cpath = f"{parent}/{cname}"
        rec = await self.remote.commit(
            cpath, None, blocks, size, node.mtime_ns, node.mode, op["commit_id"] + "-conflict"
        )
        log.warning(
            "conflict: %s changed on the server; local version saved as %s", op["path"], cpath
        )
        conflicts = list(self.state.get_meta("conflicts", []))
        conflicts.append({"path": op["path"], "saved_as": cpath, "time": time.time()})
        current = exc.current
        with self.state.write() as w:
            w.set_meta("conflicts", conflicts[-100:])
            copy = node_from_record(rec.id, node.parent, rec)
            copy.set_blocks(blocks)
            w.put_node(copy)
            w.link(node.parent, cname, rec.id)
        self.content.finish_clean(node)
        if current is not None:
            try:
                cur = FileRecord.from_json(current)
                node.server_id, node.rev, node.size = cur.id, cur.rev, cur.size
                node.set_blocks(None if cur.blocks is None else list(cur.blocks))
            except ValueError:
                node.set_blocks(None)
        node.version += 1
        with self.state.write() as w:
            w.put_node(node)
        if self.on_changed:
            self.on_changed(node.ino)


def _where(op: dict[str, Any]) -> str:
    return str(op.get("path") or op.get("from") or "")


def _chunk_and_cache(
    path: os.PathLike[str], size: int, cache: BlockCacheLike
) -> list[tuple[BlockId, int, int]]:
    """Chunk the dirty file; put each block in the cache. Returns `(id, size, offset)`."""
    out: list[tuple[BlockId, int, int]] = []
    with open(path, "rb") as f:
        for chunk in chunk_stream(f):
            if chunk.offset >= size:
                break
            data = chunk.data[: size - chunk.offset]
            bid = block_id(data)
            with contextlib.suppress(CacheFullError):
                cache.put(bid, data)
            out.append((bid, len(data), chunk.offset))
    return out


def _read_and_encode(path: os.PathLike[str], off: int, size: int, bid: BlockId) -> bytes | None:
    """Re-read one chunk from the dirty file; None if it no longer matches its id."""
    with open(path, "rb") as f:
        f.seek(off)
        data = f.read(size)
    if len(data) != size or block_id(data) != bid:
        return None
    return encode_wire(data)
