"""Where the received bytes of a resumable upload wait for the rest: a part store.

Two kinds behind one Protocol, chosen by the database (`part_store`):

- `FileParts`, on SQLite (one server process): `DATA/uploads/{id}.part`, appended and
  fsynced; the file's length is what arrived.
- `StoredParts`, on PostgreSQL (several API servers): the bytes go into the deployment's
  block store (the S3 bucket or the shared directory) as pieces of about 1 MiB, each sealed
  with the account's key like a block (the store never sees plaintext) under
  `uploads/{session id}/{start}-{block id}` and recorded in `upload_parts` once stored. The recorded
  pieces, contiguous from byte 0, are what arrived, so any server can answer the next part
  or finish the session, and a server that dies mid-part loses only the piece in hand
  (never acknowledged). A piece is recorded only if none starts at the same byte: two
  requests writing one session at once (on two servers) cannot interleave their bytes.

Every method blocks (disk, database, object store): call through `blockstore.aio.run_io`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Protocol

from blockstore.codec import seal, unseal
from blockstore.fsutil import open_private_append, write_private
from blockstore.ids import BlockId, block_id
from blockstore.keys import DataKey
from blockstore.store import BlockStore
from server.blocks import BlockService
from server.db import Database, sessions
from server.db.accounts import Principal
from server.errors import Conflict

PIECES_PREFIX = "uploads/"
"""Store keys of pieces: `uploads/{session id}/{start, 20 digits}-{block id}` (account ids
start with `a`, so no block key can look like one)."""


class PartSink(Protocol):
    """Receives one part's bytes in order, in pieces of about 1 MiB."""

    def write(self, data: bytes) -> None:
        """Keep `data` after what was written before (durably once `close` returns)."""
        ...

    def close(self) -> None:
        """Make everything written durable and release the sink."""
        ...


class PartStore(Protocol):
    """The bytes of resumable upload sessions (see the module docstring)."""

    def create(self, session_id: str) -> None:
        """Make room for a new session's bytes."""
        ...

    def received(self, session_id: str) -> int | None:
        """How many bytes arrived; None when the session's bytes are gone."""
        ...

    def held(self, session_ids: list[str]) -> int:
        """The bytes these sessions hold together (they count against the quota)."""
        ...

    def sink(self, who: Principal, session_id: str, start: int) -> PartSink:
        """Where the bytes from `start` (what arrived so far) go."""
        ...

    def reader(self, who: Principal, session_id: str) -> AbstractContextManager[BinaryIO]:
        """Everything that arrived, as one binary stream."""
        ...

    def remove(self, session_id: str) -> None:
        """Drop a finished session's bytes."""
        ...

    def abandoned(self, unfinished: set[str], idle_before: float) -> list[str]:
        """The unfinished sessions that got no byte since `idle_before` (or lost theirs)."""
        ...

    def sweep(self, live: set[str]) -> None:
        """Remove the bytes of sessions that are no longer recorded."""
        ...


def part_store(db: Database, blocks: BlockService, data_dir: Path) -> PartStore:
    """`StoredParts` when other API servers may share the database, else `FileParts`."""
    if db.shared:
        return StoredParts(db, blocks)
    return FileParts(data_dir)


# -- one server: files ------------------------------------------------------------------


class _FileSink:
    def __init__(self, path: Path) -> None:
        self._f = open_private_append(path)

    def write(self, data: bytes) -> None:
        self._f.write(data)

    def close(self) -> None:
        try:
            self._f.flush()
            os.fsync(self._f.fileno())  # what 308 reports must survive a crash
        finally:
            self._f.close()


class FileParts:
    """`{id}.part` files in one directory (the data directory's `uploads/`)."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder

    def _path(self, session_id: str) -> Path:
        return self.dir / f"{session_id}.part"

    def create(self, session_id: str) -> None:
        write_private(self._path(session_id), b"")

    def received(self, session_id: str) -> int | None:
        try:
            return os.stat(self._path(session_id)).st_size
        except FileNotFoundError:
            return None

    def held(self, session_ids: list[str]) -> int:
        return sum(self.received(i) or 0 for i in session_ids)

    def sink(self, who: Principal, session_id: str, start: int) -> PartSink:
        return _FileSink(self._path(session_id))

    def reader(self, who: Principal, session_id: str) -> AbstractContextManager[BinaryIO]:
        return open(self._path(session_id), "rb")

    def remove(self, session_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(session_id))

    def abandoned(self, unfinished: set[str], idle_before: float) -> list[str]:
        out = []
        for session_id in unfinished:
            try:
                if os.stat(self._path(session_id)).st_mtime < idle_before:
                    out.append(session_id)
            except FileNotFoundError:
                out.append(session_id)
        return out

    def sweep(self, live: set[str]) -> None:
        for entry in os.scandir(self.dir):
            name = entry.name
            if name.endswith(".part") and name[: -len(".part")] not in live:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


# -- several servers: sealed pieces in the block store -------------------------------------


def _key(session_id: str, start: int, bid: str) -> str:
    """The piece's content is in its name: a piece stored but never recorded (its server
    died in between) cannot stand in for other bytes sent again from the same start."""
    return f"{PIECES_PREFIX}{session_id}/{start:020d}-{bid}"


class _PieceSink:
    """Seals, stores and records each piece at the next offset."""

    def __init__(self, parts: StoredParts, who: Principal, session_id: str, start: int) -> None:
        self._parts = parts
        self._account = who.account
        self._key = parts.blocks.data_key(who)
        self._session = session_id
        self._at = start

    def write(self, data: bytes) -> None:
        bid = block_id(data)
        sealed = seal(self._key, self._account, bid, data, compress=False)
        self._parts.store.put(_key(self._session, self._at, bid), sealed)
        piece = sessions.Piece(self._at, len(data), bid)
        if not self._parts.db.call(sessions.add_piece, self._session, piece):
            raise Conflict(
                "another request is writing this upload session (or it ended); ask with "
                "'Content-Range: bytes */TOTAL' and resume from what it reports"
            )
        self._at += len(data)

    def close(self) -> None:
        """Each piece was durable (stored, then recorded) when `write` returned."""


class _PiecesReader:
    """The pieces of a session, opened one at a time, read as one stream."""

    def __init__(self, parts: StoredParts, key: DataKey, account: str, session_id: str) -> None:
        self._parts = parts
        self._key = key
        self._account = account
        self._session = session_id
        self._pieces = iter(parts.db.call(sessions.pieces, session_id))
        self._buf = memoryview(b"")

    def _fill(self) -> bool:
        piece = next(self._pieces, None)
        if piece is None:
            return False
        sealed = self._parts.store.get(_key(self._session, piece.start, piece.block_id))
        self._buf = memoryview(unseal(self._key, self._account, BlockId(piece.block_id), sealed))
        return True

    def readinto(self, out: bytearray | memoryview) -> int:
        if not self._buf and not self._fill():
            return 0
        n = min(len(out), len(self._buf))
        memoryview(out)[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            chunks = []
            while self._buf or self._fill():
                chunks.append(bytes(self._buf))
                self._buf = memoryview(b"")
            return b"".join(chunks)
        out = bytearray(n)
        got = self.readinto(out)
        return bytes(out[:got])


class StoredParts:
    """Sealed pieces in the block store, recorded in the database (module docstring)."""

    def __init__(self, db: Database, blocks: BlockService) -> None:
        self.db = db
        self.blocks = blocks
        self.store: BlockStore = blocks.store

    def create(self, session_id: str) -> None:
        """Nothing to make: pieces are recorded as they arrive."""

    def received(self, session_id: str) -> int | None:
        return sum(p.size for p in self.db.call(sessions.pieces, session_id))

    def held(self, session_ids: list[str]) -> int:
        return self.db.call(sessions.piece_bytes, session_ids)

    def sink(self, who: Principal, session_id: str, start: int) -> PartSink:
        return _PieceSink(self, who, session_id, start)

    @contextlib.contextmanager
    def reader(self, who: Principal, session_id: str) -> Iterator[BinaryIO]:
        stream = _PiecesReader(self, self.blocks.data_key(who), who.account, session_id)
        yield stream  # type: ignore[misc]  # duck-typed: chunk_stream needs readinto/read

    def remove(self, session_id: str) -> None:
        for key in list(self.store.keys(f"{PIECES_PREFIX}{session_id}/")):
            self.store.delete(key)
        self.db.call(sessions.forget_pieces, session_id)

    def abandoned(self, unfinished: set[str], idle_before: float) -> list[str]:
        return [i for i in self.db.call(sessions.idle_unfinished, idle_before) if i in unfinished]

    def sweep(self, live: set[str]) -> None:
        for key in list(self.store.keys(PIECES_PREFIX)):
            if key.split("/")[1] not in live:
                self.store.delete(key)
