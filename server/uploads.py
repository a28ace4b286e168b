"""The seeds' upload API (R2): simple (`uploadType=media`) and resumable uploads.

Bodies are streamed to a file under DATA/uploads (never held whole in memory), then cut with
the same content-defined chunker the clients use, so server-side uploads dedupe with blocks
that sync clients made. A resumable session's bytes live in its part store
(server.upload_parts: `DATA/uploads/{id}.part` on one server, sealed pieces in the block
store when several API servers share the database); what it recorded is what arrived, so a
session resumes after either side restarts, even after SIGKILL, and on any API server.
Finishing a session commits with `commit_id = "upload:{id}"`, which makes a finish that was
interrupted after the commit safe to repeat.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import trio

from blockstore.aio import run_io
from blockstore.chunker import chunk_stream
from blockstore.fsutil import open_private_append
from blockstore.ids import BlockId, block_id
from blockstore.wire import FileRecord, split_path
from server.blocks import BlockService
from server.config import ServerConfig
from server.db import Database, accounts, sessions
from server.db.accounts import Principal
from server.db.versions import CommitRequest
from server.errors import BadRequest, NotFound, QuotaExceeded, TooLarge
from server.metadata import Metadata
from server.metrics import Metrics
from server.private import private_dir
from server.upload_parts import PartSink, PartStore, part_store

UPLOADS_DIR = "uploads"
SPOOL_PREFIX = "tmp-"
"""Simple uploads' spool files: `uploads/tmp-*`, removed when the request ends."""
WRITE_BUFFER_BYTES = 1024 * 1024
_RANGE_RE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


@dataclass(frozen=True, slots=True)
class QuotaRoom:
    """A user's quota against what is committed and what their unfinished uploads hold."""

    quota: int
    used: int
    spooled: int


@dataclass(frozen=True, slots=True)
class SpoolBudget:
    """How many bytes one upload's spool file may hold: the file size limit (413) and, for a
    user with a quota, the room left in it (507, the same refusal as a block over quota).
    Received bytes count as they arrive, so an upload that never declared its size cannot
    spool past the quota either."""

    max_bytes: int
    room: QuotaRoom | None

    def check(self, size: int) -> None:
        """Refuse a spool file that would hold `size` bytes."""
        if size > self.max_bytes:
            raise TooLarge(f"upload is over the limit of {self.max_bytes} bytes")
        r = self.room
        if r is not None and r.used + r.spooled + size > r.quota:
            raise QuotaExceeded(
                f"storage quota of {r.quota} bytes would be exceeded ({r.used} used, "
                f"{r.spooled} in other unfinished uploads, this upload {size})"
            )


@dataclass(frozen=True, slots=True)
class PartResult:
    """The state of a session after a part: finished (record) or bytes received so far."""

    received: int
    record: FileRecord | None = None
    created: bool = False


@dataclass(frozen=True, slots=True)
class ContentRange:
    """A parsed `Content-Range: bytes START-END/TOTAL` (start None for `bytes */TOTAL`)."""

    start: int | None
    end: int | None
    total: int | None


def parse_content_range(header: str | None) -> ContentRange:
    """Parse a Content-Range request header; 400 if malformed."""
    if header is None:
        raise BadRequest("Content-Range header required (bytes START-END/TOTAL or bytes */TOTAL)")
    m = _RANGE_RE.fullmatch(header.strip())
    if m is None:
        raise BadRequest(f"malformed Content-Range: {header[:100]!r}")
    total = None if m.group(3) == "*" else int(m.group(3))
    if m.group(1) is None:
        if total is None:
            raise BadRequest("Content-Range 'bytes */*' says nothing")
        return ContentRange(None, None, total)
    start, end = int(m.group(1)), int(m.group(2))
    if end < start or (total is not None and end >= total):
        raise BadRequest(f"Content-Range out of order: {header[:100]!r}")
    return ContentRange(start, end, total)


class _HashingReader:
    """A read-only binary stream that hashes what passes through it (whole-file SHA-256)."""

    def __init__(self, f: object) -> None:
        self._f = f
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._f.read(n)  # type: ignore[attr-defined]  # a binary file
        self.sha.update(data)
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        n: int = self._f.readinto(buf)  # type: ignore[attr-defined]  # a binary file
        self.sha.update(memoryview(buf)[:n])
        return n


class Uploads:
    """Simple and resumable uploads for authenticated callers."""

    def __init__(
        self,
        data_dir: Path,
        db: Database,
        blocks: BlockService,
        metadata: Metadata,
        metrics: Metrics,
        config: ServerConfig,
    ) -> None:
        self.dir = data_dir / UPLOADS_DIR
        private_dir(self.dir)
        self.db = db
        self.blocks = blocks
        self.metadata = metadata
        self.metrics = metrics
        self.config = config
        self.parts: PartStore = part_store(db, blocks, self.dir)
        self._locks: dict[str, trio.Lock] = {}
        self._spooling: set[str] = set()
        """Names of the spool files this process is writing (the sweep leaves them)."""
        _sweep(self.dir, set())  # at start nothing runs: every spool file is a crash's

    # -- shared pieces --------------------------------------------------------------------

    async def _budget(
        self, who: Principal, size: int | None, exclude: str | None = None
    ) -> SpoolBudget:
        """What a body may still spool: refused at once (413/507) when the declared `size`
        cannot fit. The quota room counts the user's committed bytes and the bytes already
        in their other unfinished sessions (`exclude` is the session being written)."""
        max_bytes = self.config.max_file_bytes
        if size is not None and size > max_bytes:
            raise TooLarge(f"file of {size} bytes is over the limit of {max_bytes}")
        u = await self.db.run(accounts.usage, who.user_id)
        if u.quota is None:
            return SpoolBudget(max_bytes, None)
        ids = [i for i in await self.db.run(sessions.open_ids, who.user_id) if i != exclude]
        spooled = await run_io(self.parts.held, ids)
        budget = SpoolBudget(max_bytes, QuotaRoom(u.quota, u.used, spooled))
        if size is not None:
            budget.check(size)
        return budget

    async def _append(
        self, sink: PartSink, body: AsyncIterator[bytes], skip: int, budget: SpoolBudget,
        start: int,
    ) -> int:  # fmt: skip
        """Write the body (minus its first `skip` bytes) to `sink`, which holds `start`
        bytes, in pieces of about `WRITE_BUFFER_BYTES`; returns bytes written. A piece that
        would take the sink past `budget` is refused before it is written, so it never holds
        more than it allows. A body cut short keeps what arrived (the sink's `close`
        makes it durable): a resumable part resumes from there."""
        written = 0
        buf = bytearray()
        sink_failed = False
        try:
            async for piece in body:
                if skip:
                    cut = min(skip, len(piece))
                    piece, skip = piece[cut:], skip - cut
                budget.check(start + written + len(piece))
                buf += piece
                written += len(piece)
                if len(buf) >= WRITE_BUFFER_BYTES:
                    sink_failed = True
                    await run_io(sink.write, bytes(buf))
                    sink_failed = False
                    buf.clear()
        finally:
            try:
                if buf and not sink_failed:
                    await run_io(sink.write, bytes(buf))
            finally:
                await run_io(sink.close)
        self.metrics.add("block_bytes_received", written)
        return written

    def _ingest_sync(
        self, who: Principal, content: Callable[[], AbstractContextManager[BinaryIO]]
    ) -> tuple[list[tuple[BlockId, int]], int, str]:
        """Chunk an upload's bytes and store their blocks (worker thread)."""
        refs: list[tuple[BlockId, int]] = []
        size = 0
        with content() as f:
            reader = _HashingReader(f)
            for chunk in chunk_stream(reader):  # type: ignore[arg-type]  # duck-typed stream
                bid = block_id(chunk.data)
                self.blocks.store_plain_sync(who, bid, chunk.data)
                refs.append((bid, len(chunk.data)))
                size += len(chunk.data)
        return refs, size, reader.sha.hexdigest()

    async def _commit_file(
        self, who: Principal, path: str, base_rev: int | None,
        content: Callable[[], AbstractContextManager[BinaryIO]],
        commit_id: str | None, reserved_id: int | None,
    ) -> tuple[FileRecord, bool]:  # fmt: skip
        refs, size, sha = await trio.to_thread.run_sync(self._ingest_sync, who, content)
        await self.metadata.make_parents(who, path)
        req = CommitRequest(
            path=path, base_rev=base_rev, blocks=tuple(refs), size=size,
            mtime_ns=time.time_ns(), mode=None,
            commit_id=commit_id, content_hash=sha, overwrite=True, reserved_id=reserved_id,
        )  # fmt: skip
        return await self.metadata.commit(who, req)

    # -- simple upload ----------------------------------------------------------------------

    async def simple(
        self,
        who: Principal,
        path: str,
        base_rev: int | None,
        body: AsyncIterator[bytes],
        content_length: int | None,
    ) -> tuple[FileRecord, bool]:
        """POST /files/upload?uploadType=media."""
        split_path(path)
        budget = await self._budget(who, content_length)
        name = f"{SPOOL_PREFIX}{secrets.token_hex(12)}"
        self._spooling.add(name)  # before the file exists: the sweep never takes it
        spooled = self.dir / name
        try:
            # Not fsynced: the spool file is read back at once, and is not acknowledged.
            sink = _SpoolSink(await run_io(open_private_append, spooled))
            await self._append(sink, body, 0, budget, 0)
            return await self._commit_file(
                who, path, base_rev, functools.partial(_open_read, spooled), None, None
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                await run_io(os.unlink, spooled)
            self._spooling.discard(name)

    # -- resumable upload --------------------------------------------------------------------

    async def start(
        self, who: Principal, path: str, base_rev: int | None, total: int | None
    ) -> tuple[str, float]:
        """Open a session (journals `pending` for the path); returns (id, expiry)."""
        split_path(path)
        c = self.config
        await self.db.run(sessions.check_open, who.user_id, c.max_upload_sessions)
        await self._budget(who, total)
        await self.metadata.make_parents(who, path)
        reserved = await self.metadata.mark_pending(who, path, reserve=True, size=total or 0)
        session_id = secrets.token_urlsafe(24)
        await run_io(self.parts.create, session_id)
        expires = await self.db.run(
            sessions.create, session_id, who.user_id, who.ns_id, path, base_rev, total,
            reserved, who.device, c.upload_session_days * 86400, c.max_upload_sessions,
        )  # fmt: skip
        return session_id, expires

    async def put_part(
        self,
        who: Principal,
        session_id: str,
        content_range: ContentRange,
        body: AsyncIterator[bytes],
    ) -> PartResult:
        """PUT /files/upload/sessions/{id}: store a part, finish when everything arrived."""
        lock = self._locks.setdefault(session_id, trio.Lock())
        async with lock:
            try:
                return await self._put_part_locked(who, session_id, content_range, body)
            finally:
                if not lock.statistics().tasks_waiting:
                    self._locks.pop(session_id, None)

    async def _put_part_locked(
        self, who: Principal, session_id: str, cr: ContentRange, body: AsyncIterator[bytes]
    ) -> PartResult:
        session = await self.db.run(sessions.get, session_id, who.user_id)
        if session is None:
            raise NotFound("no such upload session (or it expired)")
        if session.result is not None:
            result = json.loads(session.result)
            return PartResult(-1, FileRecord.from_json(result["file"]), bool(result["created"]))
        found = await run_io(self.parts.received, session_id)
        if found is None:
            raise NotFound("upload session data is gone")
        received = found
        total = session.total_size
        if cr.total is not None:
            if total is not None and cr.total != total:
                raise BadRequest(f"total size changed from {total} to {cr.total}")
            if total is None:
                await self._budget(who, cr.total, session_id)
                await self.db.run(sessions.set_total, session_id, cr.total)
                total = cr.total
        if cr.start is not None and cr.end is not None:
            if cr.start > received:
                raise BadRequest(
                    f"part starts at byte {cr.start} but only {received} bytes arrived; "
                    "ask with 'Content-Range: bytes */TOTAL' and resume from there"
                )
            budget = await self._budget(who, None, session_id)
            if total is not None:
                budget = dataclasses.replace(budget, max_bytes=min(total, budget.max_bytes))
            skip = received - cr.start
            wanted = cr.end + 1 - received
            if wanted > 0:
                budget.check(cr.end + 1)  # announced by Content-Range: refused at once
                sink = await run_io(self.parts.sink, who, session_id, received)
                received += await self._append(
                    sink, _take(body, skip + wanted), skip, budget, received
                )
        if total is not None and received >= total:
            if received > total:
                raise BadRequest(f"received {received} bytes, more than the total {total}")
            return await self._finish(who, session_id, session)
        return PartResult(received)

    async def _finish(
        self, who: Principal, session_id: str, session: sessions.Session
    ) -> PartResult:
        content = functools.partial(self.parts.reader, who, session_id)
        rec, created = await self._commit_file(
            who, session.path, session.base_rev, content, f"upload:{session_id}",
            session.reserved_id,
        )  # fmt: skip
        result = json.dumps({"file": rec.to_json(), "created": created})
        await self.db.run(sessions.set_result, session_id, result)
        await run_io(self.parts.remove, session_id)
        return PartResult(rec.size, rec, created)

    async def expire(self) -> int:
        """Sweep sessions and spool files (at start and every maintenance round): expired
        sessions, unfinished ones whose part file is gone or got no byte for
        `upload_session_idle_seconds` (abandoned), part files no session owns, and simple
        uploads' spool files this process is not writing (left by a killed server).
        Returns how many sessions went."""
        gone = await self.db.run(sessions.expire)
        unfinished = await self.db.run(sessions.unfinished_ids)
        idle_before = time.time() - self.config.upload_session_idle_seconds
        abandoned = await run_io(self.parts.abandoned, unfinished, idle_before)
        if abandoned:
            await self.db.run(sessions.delete, abandoned)
        live = await self.db.run(sessions.live_ids)
        await run_io(self.parts.sweep, live)
        # The live set, not a copy: an upload that starts while the sweep runs adds its
        # name before its file exists, and the sweep checks each file it finds then.
        await run_io(_sweep, self.dir, self._spooling)
        return len(gone) + len(abandoned)


class _SpoolSink:
    """A simple upload's spool file as a `PartSink` (not fsynced: read back at once)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def write(self, data: bytes) -> None:
        self._f.write(data)

    def close(self) -> None:
        self._f.close()


def _open_read(path: Path) -> BinaryIO:
    return open(path, "rb")


def _sweep(folder: Path, spooling: set[str]) -> None:
    """Remove the spool files of simple uploads not in `spooling`."""
    for entry in os.scandir(folder):
        name = entry.name
        if name.startswith(SPOOL_PREFIX) and name not in spooling:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


async def _take(body: AsyncIterator[bytes], n: int) -> AsyncIterator[bytes]:
    """The first `n` bytes of a body stream (the rest is read and dropped)."""
    async for piece in body:
        if n <= 0:
            continue
        if len(piece) > n:
            piece = piece[:n]
        n -= len(piece)
        yield piece
