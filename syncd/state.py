"""The client's local state in LMDB: the tree (inodes, directory entries), the durable
upload queue (an ordered operation log), the ops the server refused for now ("parked": kept,
retried, reported), and small settings (cursor, inode counter).

Why LMDB: `ls` must never wait for the network and a remount (even offline) must show the
tree at once, so the tree lives locally; the queue must survive a crash of the client.

Concurrency: every method opens and closes its transaction inside itself (or inside one
`with state.write() as w:` block that contains no `await`), so a transaction never crosses
threads or checkpoints. The environment is opened with `sync=False`: a committed transaction
survives a crash of the client process (it is in the OS page cache); `sync()` (called on
fsync, in a worker thread) makes it survive a crash of the machine too.

Inode numbers: entries that came from the server use the server's file id (the root is 1 on
both sides); entries created here get `LOCAL_INO_BASE + n` and learn their server id when
the uploader commits them.

Records are immutable (`Node`, `Dirty` are frozen): an inode changes only by a new record
(`dataclasses.replace`) written with `Writer.put_node`, or staged with `StateDB.stage` for
content edits recorded on close. The VFS, uploader, reconciler and resolver all hold
records; were they shared mutable objects, a change would be seen before it was written
and code could depend on that without saying so. A record is a snapshot: after an `await`,
code that must know whether the inode changed meanwhile (an upload checking the dirty
generation) reads it again (`StateDB.current`). The current record of each inode is cached
in memory.
"""

from __future__ import annotations

import json
import os
import struct
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb

from blockstore.ids import BlockId
from blockstore.wire import BlockList
from syncd.queue_ops import QueuedOp, op_from_json, op_to_json
from syncd.ranges import Ranges

__all__ = ["LOCAL_INO_BASE", "ROOT_INO", "Dirty", "Node", "StateDB", "WouldCycle", "Writer"]

ROOT_INO = 1
LOCAL_INO_BASE = 1 << 40
MAP_SIZE_BYTES = 64 << 30

_U64 = struct.Struct(">Q")


def _k(n: int) -> bytes:
    return _U64.pack(n)


@dataclass(frozen=True, slots=True)
class Dirty:
    """Local, not yet uploaded content of a file.

    Bytes inside `ranges` are in the dirty file; others below `base_size` come from
    `base_blocks` (the revision the edit started from); the rest reads as zeros.
    `gen` counts writes so the uploader can tell whether the file changed under it;
    `shrunk_gen` is the `gen` of the last truncate that made the file shorter: an upload
    that started before it saw bytes that no longer exist, so its result must not become the
    new base (the bytes cut off would come back in the hole of a later extend).
    """

    base_blocks: BlockList
    base_size: int
    ranges: Ranges
    gen: int = 0
    shrunk_gen: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "base_blocks": [list(b) for b in self.base_blocks],
            "base_size": self.base_size,
            "ranges": [list(r) for r in self.ranges],
            "gen": self.gen,
            "shrunk_gen": self.shrunk_gen,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Dirty:
        return cls(
            base_blocks=tuple((BlockId(b), int(s)) for b, s in d["base_blocks"]),
            base_size=int(d["base_size"]),
            ranges=tuple((int(s), int(e)) for s, e in d["ranges"]),
            gen=int(d.get("gen", 0)),
            shrunk_gen=int(d.get("shrunk_gen", 0)),
        )


@dataclass(frozen=True, slots=True)
class Node:
    """One inode. `mode` holds permission bits only; `kind` is file, dir or symlink.

    Immutable: build a changed record with `dataclasses.replace` and write it.
    """

    ino: int
    parent: int
    name: str
    kind: str
    mode: int
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    server_id: int | None = None
    rev: int | None = None
    blocks: BlockList | None = None
    target: str | None = None
    listed: bool = False
    dirty: Dirty | None = None
    linked: bool = True
    version: int = 0
    """Bumped whenever the content seen through this inode changes (kernel cache check)."""
    _starts: tuple[int, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "ino": self.ino,
            "parent": self.parent,
            "name": self.name,
            "kind": self.kind,
            "mode": self.mode,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "ctime_ns": self.ctime_ns,
            "server_id": self.server_id,
            "rev": self.rev,
            "blocks": None if self.blocks is None else [list(b) for b in self.blocks],
            "target": self.target,
            "listed": self.listed,
            "dirty": None if self.dirty is None else self.dirty.to_json(),
            "linked": self.linked,
            "version": self.version,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Node:
        blocks = d.get("blocks")
        dirty = d.get("dirty")
        return cls(
            ino=int(d["ino"]),
            parent=int(d["parent"]),
            name=str(d["name"]),
            kind=str(d["kind"]),
            mode=int(d["mode"]),
            size=int(d["size"]),
            mtime_ns=int(d["mtime_ns"]),
            ctime_ns=int(d.get("ctime_ns", d["mtime_ns"])),
            server_id=d.get("server_id"),
            rev=d.get("rev"),
            blocks=None if blocks is None else tuple((BlockId(b), int(s)) for b, s in blocks),
            target=d.get("target"),
            listed=bool(d.get("listed", False)),
            dirty=None if dirty is None else Dirty.from_json(dirty),
            linked=bool(d.get("linked", True)),
            version=int(d.get("version", 0)),
        )

    def block_starts(self) -> tuple[int, ...]:
        """Offsets at which each block of `blocks` begins.

        Memoised in `_starts`, the one slot ever set after construction (hence
        `object.__setattr__`): it is derived from `blocks`, which never change, and
        `replace` leaves it unset in the new record (`init=False`).
        """
        starts = self._starts
        if starts is None:
            out: list[int] = []
            pos = 0
            for _, size in self.blocks or ():
                out.append(pos)
                pos += size
            starts = tuple(out)
            object.__setattr__(self, "_starts", starts)
        return starts


class WouldCycle(ValueError):
    """A folder record would be put inside its own subtree. Nothing is written: the tree here
    differs from the server's for a moment (another device moved the target folder into this
    one), and the caller leaves the folder where it is until that settles."""


class Writer:
    """Operations inside one open write transaction (see `StateDB.write`)."""

    def __init__(self, db: StateDB, txn: lmdb.Transaction) -> None:
        self._db = db
        self._txn = txn
        self.cached_before: dict[int, Node | None] = {}
        """The in-memory record of each inode this transaction wrote, as it was before: put
        back if the transaction aborts (it may hold staged edits LMDB does not have)."""

    def put_node(self, node: Node) -> None:
        """Make `node` the record of its inode (the only way, with `StateDB.stage`, to
        change one). A directory entry that still names the inode where the record no
        longer is (unlinked, or moved) goes with it: a name must never lead to an inode
        whose record says it is not there (a write through it would reach no upload)."""
        old = self._db._cache.get(node.ino) or self._db.node(node.ino)
        moved = old is None or old.parent != node.parent
        into = node.kind == "dir" and node.linked and moved and node.ino != ROOT_INO
        if into and self._db.is_within(node.parent, node.ino):
            raise WouldCycle(f"folder {node.ino} cannot go inside itself ({node.parent})")
        if old is not None and (old.parent, old.name) != (node.parent, node.name):
            self._drop_entry(old.parent, old.name, node.ino)
        if not node.linked:
            self._drop_entry(node.parent, node.name, node.ino)
        self._txn.put(_k(node.ino), json.dumps(node.to_json()).encode(), db=self._db._nodes)
        self._remember(node.ino)
        self._db._cache[node.ino] = node
        if old is not None and old.server_id not in (None, node.server_id):
            self._release_id(old.server_id or 0, node.ino)  # re-created under a new id
        if node.server_id is not None and self._takes_id(node):
            self._txn.put(_k(node.server_id), _k(node.ino), db=self._db._srv)

    def _takes_id(self, node: Node) -> bool:
        """Whether `node` becomes the inode its server id leads to. Not an unlinked record
        while a linked inode shows that server entry: written after it (a file a rename
        replaced, a copy of a record kept for a queued op), it would take the id from the
        inode the tree shows, and the feed's next change of that entry (a delete, an edit)
        would no longer find it; once the unlinked one is released, nothing would."""
        if node.linked:
            return True
        raw = self._txn.get(_k(node.server_id or 0), db=self._db._srv)
        if raw is None or raw == _k(node.ino):
            return True
        holder = _U64.unpack(raw)[0]
        other = self._db._cache.get(holder) or self._db.node(holder)
        return other is None or not other.linked or other.server_id != node.server_id

    def _drop_entry(self, parent: int, name: str, ino: int) -> None:
        """Remove the entry `name` of `parent` if it names `ino` (read in this transaction:
        a read of its own would not see what this transaction changed)."""
        if self._txn.get(_k(parent) + name.encode(), db=self._db._dirents) == _k(ino):
            self.unlink(parent, name)

    def _release_id(self, server_id: int, ino: int) -> None:
        """Server id `server_id` no longer leads to `ino` (if it did)."""
        if self._txn.get(_k(server_id), db=self._db._srv) == _k(ino):
            self._txn.delete(_k(server_id), db=self._db._srv)

    def _remember(self, ino: int) -> None:
        if ino not in self.cached_before:
            self.cached_before[ino] = self._db._cache.get(ino)

    def delete_node(self, ino: int) -> None:
        node = self._db._cache.get(ino) or self._db.node(ino)
        self._remember(ino)
        self._db._cache.pop(ino, None)
        self._txn.delete(_k(ino), db=self._db._nodes)
        if node is not None and node.server_id is not None:
            self._release_id(node.server_id, ino)

    def ino_for_new(self, server_id: int) -> int:
        """The inode for a server entry this device does not have: its server id (both
        sides then agree without a lookup), unless a record holds that inode already (the
        entry's old record here, re-created on the server under a new id, which it keeps:
        its bytes are this device's): then a new local one."""
        if server_id in self._db._cache or self._txn.get(_k(server_id), db=self._db._nodes):
            return self.next_ino()
        return server_id

    def link(self, parent: int, name: str, ino: int) -> None:
        key = _k(parent) + name.encode()
        old = self._txn.get(key, db=self._db._dirents)
        if old == _k(ino):
            return
        if old is not None:
            self._count_subdir(parent, _U64.unpack(old)[0], -1)
        self._txn.put(key, _k(ino), db=self._db._dirents)
        self._count_subdir(parent, ino, +1)

    def unlink(self, parent: int, name: str) -> None:
        key = _k(parent) + name.encode()
        old = self._txn.get(key, db=self._db._dirents)
        if old is not None:
            self._count_subdir(parent, _U64.unpack(old)[0], -1)
            self._txn.delete(key, db=self._db._dirents)

    def _count_subdir(self, parent: int, child: int, delta: int) -> None:
        """Keep the number of subdirectories of `parent` (a directory's link count)."""
        if self._db._kind_in(self._txn, child) != "dir":
            return
        raw = self._txn.get(_k(parent), db=self._db._subdirs)
        count = max(0, (_U64.unpack(raw)[0] if raw else 0) + delta)
        self._txn.put(_k(parent), _k(count), db=self._db._subdirs)

    def add_op(self, op: QueuedOp) -> int:
        """Queue `op`; its sequence number is never reused, even after the queue drains
        (the uploader keys its retry counts and held ops by it)."""
        cur = self._txn.cursor(db=self._db._ops)
        last = _U64.unpack(cur.key())[0] if cur.last() else 0
        raw = self._txn.get(b"op_seq", db=self._db._meta)
        seq = max(last, int(raw) if raw is not None else 0) + 1
        self._txn.put(b"op_seq", str(seq).encode(), db=self._db._meta)
        self._txn.put(_k(seq), json.dumps(op_to_json(op)).encode(), db=self._db._ops)
        return seq

    def replace_op(self, seq: int, op: QueuedOp) -> None:
        self._txn.put(_k(seq), json.dumps(op_to_json(op)).encode(), db=self._db._ops)

    def last_op(self) -> tuple[int, QueuedOp] | None:
        cur = self._txn.cursor(db=self._db._ops)
        if not cur.last():
            return None
        return _U64.unpack(cur.key())[0], op_from_json(json.loads(bytes(cur.value())))

    def delete_op(self, seq: int, op: QueuedOp | None = None) -> None:
        """Take the done op `seq` off the queue (its answer is in the tree: see
        `finished_since`); `op` is that op, if the caller has it (else it is read)."""
        if op is None:
            raw = self._txn.get(_k(seq), db=self._db._ops)
            op = op_from_json(json.loads(bytes(raw))) if raw is not None else None
        if op is not None:
            self._db._note_finished(op)
        self._txn.delete(_k(seq), db=self._db._ops)

    def park(self, seq: int, op: QueuedOp, reason: str) -> None:
        """Take `op` out of the queue and keep it aside with the reason the server gave
        for refusing it: it is retried later and shown as "not synced" meanwhile."""
        self._txn.delete(_k(seq), db=self._db._ops)
        entry = {"op": op_to_json(op), "reason": reason, "since": time.time()}
        self._txn.put(_k(seq), json.dumps(entry).encode(), db=self._db._parked)

    def settle_parked(self, seq: int) -> None:
        """Take the parked op `seq` off the list: a later op did what it was for (its
        file committed since, as it is now)."""
        self._txn.delete(_k(seq), db=self._db._parked)

    def unpark_all(self) -> int:
        """Put every parked op back at the end of the queue; returns how many."""
        cur = self._txn.cursor(db=self._db._parked)
        entries = [(bytes(k), json.loads(bytes(v))) for k, v in cur]
        for key, entry in entries:
            self._txn.delete(key, db=self._db._parked)
            self.add_op(op_from_json(entry["op"]))
        return len(entries)

    def set_meta(self, key: str, value: Any) -> None:
        self._txn.put(key.encode(), json.dumps(value).encode(), db=self._db._meta)

    def next_ino(self) -> int:
        raw = self._txn.get(b"next_ino", db=self._db._meta)
        n = int(json.loads(bytes(raw))) if raw else LOCAL_INO_BASE
        self._txn.put(b"next_ino", json.dumps(n + 1).encode(), db=self._db._meta)
        return n


class StateDB:
    """The LMDB environment holding tree, queue and settings of one client home."""

    def __init__(self, path: Path) -> None:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._env = lmdb.open(
            str(path), mode=0o600, map_size=MAP_SIZE_BYTES, max_dbs=8, sync=False,
            metasync=False,
        )  # fmt: skip
        for name in ("data.mdb", "lock.mdb"):  # made 0644 by older versions
            os.chmod(path / name, 0o600)
        self._nodes = self._env.open_db(b"nodes")
        self._dirents = self._env.open_db(b"dirents")
        self._srv = self._env.open_db(b"srv")
        self._ops = self._env.open_db(b"ops")
        self._meta = self._env.open_db(b"meta")
        self._parked = self._env.open_db(b"parked")
        self._subdirs = self._env.open_db(b"subdirs")
        self._cache: dict[int, Node] = {}
        self._finished: dict[int, int] = {}  # ino -> when an op of it last left the queue
        self._finished_count = 0  # (counted in ops, this session only)
        if not self.get_meta("subdirs_counted", False):
            self._count_all_subdirs()

    def _kind_in(self, txn: lmdb.Transaction, ino: int) -> str | None:
        cached = self._cache.get(ino)
        if cached is not None:
            return cached.kind
        raw = txn.get(_k(ino), db=self._nodes)
        return None if raw is None else str(json.loads(bytes(raw))["kind"])

    def _count_all_subdirs(self) -> None:
        """Count every directory's subdirectories once (a state made before they were kept)."""
        counts: dict[int, int] = {}
        with self._env.begin(write=True) as txn:
            for key, value in txn.cursor(db=self._dirents):
                if self._kind_in(txn, _U64.unpack(value)[0]) == "dir":
                    parent = _U64.unpack(bytes(key[:8]))[0]
                    counts[parent] = counts.get(parent, 0) + 1
            for parent, n in counts.items():
                txn.put(_k(parent), _k(n), db=self._subdirs)
            txn.put(b"subdirs_counted", b"true", db=self._meta)

    def subdirs(self, ino: int) -> int:
        """How many subdirectories directory `ino` has (its link count is 2 more)."""
        with self._env.begin() as txn:
            raw = txn.get(_k(ino), db=self._subdirs)
        return _U64.unpack(raw)[0] if raw else 0

    def close(self) -> None:
        self._env.sync(True)
        self._env.close()

    def sync(self) -> None:
        """Flush committed transactions to disk (blocking: call from a worker thread)."""
        self._env.sync(True)

    @contextmanager
    def write(self) -> Iterator[Writer]:
        """One write transaction; never `await` inside the `with` block. If the block raises,
        nothing of it is written, in LMDB nor in the cached records."""
        with self._env.begin(write=True) as txn:
            writer = Writer(self, txn)
            try:
                yield writer
            except BaseException:
                for ino, before in writer.cached_before.items():
                    if before is None:
                        self._cache.pop(ino, None)
                    else:
                        self._cache[ino] = before
                raise

    # -- reads --------------------------------------------------------------------------

    def node(self, ino: int) -> Node | None:
        cached = self._cache.get(ino)
        if cached is not None:
            return cached
        with self._env.begin() as txn:
            raw = txn.get(_k(ino), db=self._nodes)
        if raw is None:
            return None
        node = Node.from_json(json.loads(raw))
        self._cache[ino] = node
        return node

    def is_within(self, ino: int, folder: int) -> bool:
        """Whether `ino` is `folder` or below it here. A loop in the parents (which
        `Writer.put_node` refuses to make) counts as within, so no caller walks it forever."""
        seen: set[int] = set()
        while ino != folder:
            if ino == ROOT_INO:
                return False
            if ino in seen:
                return True
            seen.add(ino)
            node = self.node(ino)
            if node is None:
                return False
            ino = node.parent
        return True

    def current(self, node: Node) -> Node:
        """The record of `node`'s inode now: what an `await` since `node` was read may have
        changed (`node` itself if the inode was forgotten meanwhile)."""
        return self.node(node.ino) or node

    def stage(self, node: Node) -> None:
        """Make `node` the current record of its inode in memory only, written with the next
        record derived from it (`ContentStore.flush` on close). For content edits: every
        write moves the dirty ranges and generation, and one LMDB transaction per write
        would cost more than the write."""
        self._cache[node.ino] = node

    def lookup(self, parent: int, name: str) -> int | None:
        with self._env.begin() as txn:
            raw = txn.get(_k(parent) + name.encode(), db=self._dirents)
        return None if raw is None else _U64.unpack(raw)[0]

    def children(self, parent: int) -> list[tuple[str, int]]:
        """`(name, ino)` of every entry of directory `parent`, sorted by name bytes."""
        prefix = _k(parent)
        out: list[tuple[str, int]] = []
        with self._env.begin() as txn:
            cur = txn.cursor(db=self._dirents)
            if cur.set_range(prefix):
                for key, value in cur:
                    if not key.startswith(prefix):
                        break
                    out.append((key[8:].decode(), _U64.unpack(value)[0]))
        return out

    def has_children(self, parent: int) -> bool:
        prefix = _k(parent)
        with self._env.begin() as txn:
            cur = txn.cursor(db=self._dirents)
            return bool(cur.set_range(prefix)) and cur.key().startswith(prefix)

    def _note_finished(self, op: QueuedOp) -> None:
        self._finished_count += 1
        for ino in (op.ino, getattr(op, "dst_ino", None)):
            if ino is not None:
                self._finished[ino] = self._finished_count

    def finished_mark(self) -> int:
        """A mark for `finished_since`: take it before asking the server for a listing."""
        return self._finished_count

    def finished_since(self, ino: int, mark: int) -> bool:
        """Whether an op of `ino` (or one that replaced it) left the queue, done, after
        `mark`: a listing asked for before then may show it as it was before that op."""
        return self._finished.get(ino, 0) > mark

    def ino_for_server_id(self, server_id: int) -> int | None:
        with self._env.begin() as txn:
            raw = txn.get(_k(server_id), db=self._srv)
        return None if raw is None else _U64.unpack(raw)[0]

    def ops(self, limit: int = 1 << 30) -> list[tuple[int, QueuedOp]]:
        """The queued operations, oldest first."""
        out: list[tuple[int, QueuedOp]] = []
        with self._env.begin() as txn:
            for key, value in txn.cursor(db=self._ops):
                out.append((_U64.unpack(key)[0], op_from_json(json.loads(bytes(value)))))
                if len(out) >= limit:
                    break
        return out

    def op_count(self) -> int:
        with self._env.begin() as txn:
            return int(txn.stat(self._ops)["entries"])

    def client_id(self) -> str:
        """This home's client id (made once, kept here): the server tags the changes this
        mount makes with it, so the follower skips exactly those and applies the rest."""
        value = self.get_meta("client_id")
        if not isinstance(value, str):
            value = uuid.uuid4().hex
            with self.write() as w:
                w.set_meta("client_id", value)
        return value

    def unsynced_ops(self) -> list[QueuedOp]:
        """Every operation not yet on the server: queued, then parked."""
        return [op for _, op in self.ops()] + [op for _, op, _, _ in self.parked()]

    def parked(self) -> list[tuple[int, QueuedOp, str, float]]:
        """`(seq, op, reason, since)` of every op the server refused for now."""
        with self._env.begin() as txn:
            return [
                (_U64.unpack(k)[0], op_from_json(e["op"]), str(e["reason"]), float(e["since"]))
                for k, e in ((k, json.loads(bytes(v))) for k, v in txn.cursor(db=self._parked))
            ]

    def dirty_nodes(self) -> list[Node]:
        """Every node with local unsynced content (scans; used at start-up and status)."""
        out: list[Node] = []
        with self._env.begin() as txn:
            for _, raw in txn.cursor(db=self._nodes):
                if b'"dirty": null' not in raw:
                    out.append(Node.from_json(json.loads(bytes(raw))))
        return [self._cache.get(n.ino, n) for n in out]

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._env.begin() as txn:
            raw = txn.get(key.encode(), db=self._meta)
        return default if raw is None else json.loads(raw)
