"""The client's block cache: plaintext blocks in LMDB, bounded, LRU, with pins.

Owns which blocks the client keeps locally and for how long. Knows nothing of files or the
network: callers pin the blocks an unsynced (dirty or pending) file needs under an owner
string of their choice, and unpin when the file is safely on the server.

Layout (one LMDB environment, several named databases; ids stored as 32 raw bytes)::

    blocks  id -> plaintext
    meta    id -> size (8) | tick (8) | xxh3-64 of the plaintext (8)
    lru     tick (8, big endian) | id -> ""     only blocks that are NOT pinned
    pins    id -> owner (dupsort)                  who needs the block
    owners  owner -> id (dupsort)                  the reverse, for unpin_owner
    state   b"used" -> total plaintext bytes, b"tick" -> last tick handed out

Pinned blocks are simply absent from `lru`, so eviction (a scan of `lru` from the oldest
tick) cannot touch them, and pins are honoured at zero scanning cost. A block may be pinned
before it is cached.

Access-time updates are cheap: `get` only notes the id in memory, and the notes are
applied in one write transaction with the next `put`, pin change, or every
`TOUCH_BATCH` reads. A crash loses some recency, never data or consistency.

Integrity: every `get` checks the xxh3 from `meta` against the bytes read; a mismatch drops
the entry (logged at ERROR) and returns None, so the caller refetches. xxh3 guards against
local damage only; identity is the SHA-256 block id.

Concurrency and crashes: one `threading.Lock` serialises the writes of one process (each is
one short LMDB transaction), so the object is safe from several threads; reads (`get`,
`has`, ...) run their read transactions outside the lock, so parallel read-ahead overlaps
its page faults, and map resizing and `close` wait until no read is open. LMDB
transactions are atomic and, with `sync=True` (the default), durable when `put` returns,
so a kill -9 at any point leaves the last committed state. Stale reader slots of dead
processes are cleared at open. The map grows (doubling) when LMDB reports it full, so
`max_bytes` bounds the data, not the file's address space.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import lmdb

from .errors import CacheFullError
from .ids import BlockId, checksum, parse_block_id

__all__ = ["TOUCH_BATCH", "CacheStatistics", "LmdbBlockCache"]

log = logging.getLogger(__name__)

T = TypeVar("T")

TOUCH_BATCH = 256
"""Reads noted in memory before their access times are written in one transaction."""

_META = struct.Struct(">QQQ")  # size, tick, xxh3
_U64 = struct.Struct(">Q")
_USED = b"used"
_TICK = b"tick"
_MAX_OWNER_BYTES = 400  # LMDB keys (and dupsort values) are at most 511 bytes
_MIN_MAP_BYTES = 256 * 1024 * 1024
_MAX_MAP_GROWTHS = 8


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    """A snapshot of the cache; counters are for this process since open."""

    entries: int
    used_bytes: int
    max_bytes: int
    pinned_entries: int
    hits: int
    misses: int
    evictions: int
    corrupt_dropped: int


def _raw(block_id: str) -> bytes:
    return bytes.fromhex(parse_block_id(block_id))


def _owner(owner: str) -> bytes:
    raw = owner.encode("utf-8")
    if not raw or len(raw) > _MAX_OWNER_BYTES:
        raise ValueError(f"pin owner must be 1..{_MAX_OWNER_BYTES} bytes of UTF-8")
    return raw


class LmdbBlockCache:
    """A bounded LRU cache of plaintext blocks with pinning (see the module docstring).

    Blocking: every method does disk I/O (a `put` fsyncs). From trio, call through
    `blockstore.aio.run_io`.

    Args:
        path: directory of the LMDB environment (created if missing).
        max_bytes: bound on the sum of cached plaintext sizes (pinned ones included).
        sync: fsync on every commit (durable puts). False trades durability of the last
            transactions on power loss for speed; a process crash stays safe either way.
        map_bytes: initial LMDB map size; default `max(2 * max_bytes, max_bytes + 256
            MiB)`. It is address space, not disk, and doubles whenever LMDB reports it full.
    """

    def __init__(
        self, path: Path, max_bytes: int, *, sync: bool = True, map_bytes: int | None = None
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._env = lmdb.open(
            str(self.path),
            mode=0o600,  # plaintext user data: private to the user
            map_size=map_bytes or max(2 * max_bytes, max_bytes + _MIN_MAP_BYTES),
            subdir=True,
            max_dbs=8,
            sync=sync,
            metasync=sync,
            readahead=True,  # blocks are read whole: let the kernel read around faults
            lock=True,
        )
        self._env.reader_check()
        self._blocks = self._env.open_db(b"blocks")
        self._meta = self._env.open_db(b"meta")
        self._lru = self._env.open_db(b"lru")
        self._pins = self._env.open_db(b"pins", dupsort=True)
        self._owners = self._env.open_db(b"owners", dupsort=True)
        self._state = self._env.open_db(b"state")
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._readers = 0
        """Read transactions open now: reads run without the lock, so that parallel
        read-ahead overlaps its page faults (disk reads after the page cache was dropped)."""
        self._exclusive = False
        """Set while the map is resized or the environment closed (no transaction may be
        open in this process then): new readers and writers wait."""
        self._touched: dict[bytes, None] = {}  # insertion-ordered set of raw ids
        self._hits = self._misses = self._evictions = self._corrupt = 0
        self._closed = False
        with self._lock:  # the bound may have shrunk since the last run
            self._write(lambda txn: self._evict_to(txn, self.max_bytes, 0, best_effort=True))

    # -- plumbing -----------------------------------------------------------------------

    def __enter__(self) -> LmdbBlockCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Write pending access times and close the environment (idempotent)."""
        with self._lock:
            while self._exclusive:
                self._cond.wait()
            if self._closed:
                return
            if self._touched:
                self._write(lambda txn: None)
            with self._no_readers():
                self._closed = True
                self._env.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the block cache is closed")

    def _read(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run `fn` in a read transaction without holding the lock (see `_readers`)."""
        with self._lock:
            while self._exclusive:
                self._cond.wait()
            self._check_open()
            self._readers += 1
        try:
            with self._env.begin() as txn:
                return fn(txn)
        finally:
            with self._lock:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def _no_readers(self) -> Iterator[None]:
        """With the lock held: keep new transactions out and wait for open reads to end."""
        self._exclusive = True
        try:
            while self._readers:
                self._cond.wait()
            yield
        finally:
            self._exclusive = False
            self._cond.notify_all()

    def _write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run `fn` in one write transaction (lock held), applying pending touches first.

        Grows the map and retries if LMDB is full; `fn` must be safe to re-run (everything
        it did was aborted with the transaction).
        """
        while self._exclusive:
            self._cond.wait()
        self._check_open()
        for _attempt in range(_MAX_MAP_GROWTHS):
            touched = list(self._touched)
            try:
                with self._env.begin(write=True) as txn:
                    self._apply_touches(txn, touched)
                    result = fn(txn)
            except lmdb.MapFullError:
                new_size = 2 * self._env.info()["map_size"]
                log.info("block cache map full; growing it to %d bytes", new_size)
                with self._no_readers():
                    self._env.set_mapsize(new_size)
                continue
            except lmdb.MapResizedError:
                with self._no_readers():
                    self._env.set_mapsize(0)  # another process grew it: adopt its size
                continue
            for raw in touched:
                self._touched.pop(raw, None)
            return result
        raise CacheFullError("block cache: LMDB map cannot grow further")

    def _next_tick(self, txn: lmdb.Transaction) -> int:
        old = txn.get(_TICK, db=self._state)
        tick = (_U64.unpack(old)[0] if old else 0) + 1
        txn.put(_TICK, _U64.pack(tick), db=self._state)
        return tick

    def _used(self, txn: lmdb.Transaction) -> int:
        value = txn.get(_USED, db=self._state)
        return _U64.unpack(value)[0] if value else 0

    def _set_used(self, txn: lmdb.Transaction, used: int) -> None:
        txn.put(_USED, _U64.pack(used), db=self._state)

    def _is_pinned(self, txn: lmdb.Transaction, raw: bytes) -> bool:
        return txn.get(raw, db=self._pins) is not None

    def _retick(self, txn: lmdb.Transaction, raw: bytes, *, in_lru: bool) -> None:
        """Give a cached block a fresh tick; (re)insert it in `lru` unless pinned."""
        meta = txn.get(raw, db=self._meta)
        if meta is None:
            return
        size, tick, xxh = _META.unpack(meta)
        txn.delete(_U64.pack(tick) + raw, db=self._lru)
        tick = self._next_tick(txn)
        txn.put(raw, _META.pack(size, tick, xxh), db=self._meta)
        if in_lru:
            txn.put(_U64.pack(tick) + raw, b"", db=self._lru)

    def _apply_touches(self, txn: lmdb.Transaction, touched: list[bytes]) -> None:
        for raw in touched:
            if not self._is_pinned(txn, raw):
                self._retick(txn, raw, in_lru=True)

    def _remove(self, txn: lmdb.Transaction, raw: bytes) -> int:
        """Delete a cached block (data, meta, lru); return its size (0 if absent)."""
        meta = txn.get(raw, db=self._meta)
        if meta is None:
            return 0
        size, tick, _xxh = _META.unpack(meta)
        txn.delete(_U64.pack(tick) + raw, db=self._lru)
        txn.delete(raw, db=self._meta)
        txn.delete(raw, db=self._blocks)
        self._set_used(txn, self._used(txn) - size)
        return int(size)

    def _evict_to(
        self, txn: lmdb.Transaction, limit: int, incoming: int, *, best_effort: bool = False
    ) -> None:
        """Evict least recently used unpinned blocks until used + incoming <= limit.

        Raises:
            CacheFullError: not enough unpinned bytes; nothing is evicted (the caller's
                transaction aborts). With `best_effort`, every unpinned block is evicted
                instead and nothing is raised (used at open: pins always win).
        """
        need = self._used(txn) + incoming - limit
        if need <= 0:
            return
        victims: list[bytes] = []
        freed = 0
        with txn.cursor(db=self._lru) as cur:
            for key in cur.iternext(values=False):
                raw = bytes(key[_U64.size :])
                meta = txn.get(raw, db=self._meta)
                if meta is None:  # defensive: an orphan lru entry
                    victims.append(raw)
                    continue
                victims.append(raw)
                freed += _META.unpack(meta)[0]
                if freed >= need:
                    break
        if freed < need and not best_effort:
            raise CacheFullError(
                f"block cache full: {incoming} bytes do not fit in {limit}; only {freed} "
                f"bytes are evictable, the rest is pinned by unsynced files"
            )
        for raw in victims:
            self._remove(txn, raw)
        self._evictions += len(victims)

    # -- public API ---------------------------------------------------------------------

    def get(self, block_id: BlockId) -> bytes | None:
        """Return the cached plaintext of `block_id`, or None if absent or damaged.

        Verifies the xxh3 checksum; a damaged entry is dropped (logged) and None returned
        so that the caller fetches the block again.
        """
        raw = _raw(block_id)

        def lookup(txn: lmdb.Transaction) -> tuple[bytes | None, bytes | None]:
            meta = txn.get(raw, db=self._meta)
            data = txn.get(raw, db=self._blocks) if meta is not None else None
            return _owned(meta), _owned(data)

        meta, data = self._read(lookup)
        if meta is None:
            self._misses += 1
            return None
        size, _tick, xxh = _META.unpack(meta)
        if data is None or len(data) != size or checksum(data) != xxh:
            self._drop_corrupt(raw, meta)
            return None
        with self._lock:
            self._hits += 1
            self._touched.pop(raw, None)  # re-insert: the dict's order is recency order
            self._touched[raw] = None
            if len(self._touched) >= TOUCH_BATCH and not self._closed:
                self._write(lambda txn: None)
        return data

    def _drop_corrupt(self, raw: bytes, seen_meta: bytes) -> None:
        log.error("block cache: entry %s failed its checksum; dropped", raw.hex())

        def drop(txn: lmdb.Transaction) -> None:
            if txn.get(raw, db=self._meta) == seen_meta:  # not replaced meanwhile
                self._remove(txn, raw)

        with self._lock:
            self._corrupt += 1
            self._misses += 1
            self._write(drop)

    def has(self, block_id: BlockId) -> bool:
        """Return True if `block_id` is cached (not verified, recency not updated)."""
        raw = _raw(block_id)
        return self._read(lambda txn: txn.get(raw, db=self._meta) is not None)

    def put(self, block_id: BlockId, data: bytes | bytearray | memoryview) -> None:
        """Cache `data` as the plaintext of `block_id`, evicting LRU unpinned blocks.

        The caller guarantees `block_id == sha256(data)` (it was verified on the way in).
        Putting a block that is already cached only refreshes its recency.

        Raises:
            CacheFullError: the block is larger than `max_bytes`, or not enough unpinned
                blocks can be evicted; the cache is then unchanged.
        """
        raw = _raw(block_id)
        size = len(data)
        if size > self.max_bytes:
            raise CacheFullError(f"block of {size} bytes exceeds the cache size {self.max_bytes}")
        xxh = checksum(data)

        def insert(txn: lmdb.Transaction) -> None:
            if txn.get(raw, db=self._meta) is not None:
                self._retick(txn, raw, in_lru=not self._is_pinned(txn, raw))
                return
            self._evict_to(txn, self.max_bytes, size)
            tick = self._next_tick(txn)
            txn.put(raw, data, db=self._blocks)
            txn.put(raw, _META.pack(size, tick, xxh), db=self._meta)
            if not self._is_pinned(txn, raw):
                txn.put(_U64.pack(tick) + raw, b"", db=self._lru)
            self._set_used(txn, self._used(txn) + size)

        with self._lock:
            self._write(insert)

    def discard(self, block_id: BlockId) -> None:
        """Remove `block_id` from the cache if present (its pins, if any, stay)."""
        raw = _raw(block_id)
        with self._lock:
            self._write(lambda txn: self._remove(txn, raw))

    def pin(self, block_id: BlockId, owner: str) -> None:
        """Protect `block_id` from eviction on behalf of `owner` (idempotent).

        A block may be pinned before it is cached; it is then never evicted once put.
        """
        raw, own = _raw(block_id), _owner(owner)

        def add(txn: lmdb.Transaction) -> None:
            was_pinned = self._is_pinned(txn, raw)
            txn.put(raw, own, db=self._pins)
            txn.put(own, raw, db=self._owners)
            if not was_pinned:
                meta = txn.get(raw, db=self._meta)
                if meta is not None:
                    txn.delete(_U64.pack(_META.unpack(meta)[1]) + raw, db=self._lru)

        with self._lock:
            self._write(add)

    def _release(self, txn: lmdb.Transaction, raw: bytes, own: bytes) -> None:
        txn.delete(own, raw, db=self._owners)
        if txn.delete(raw, own, db=self._pins) and not self._is_pinned(txn, raw):
            self._retick(txn, raw, in_lru=True)  # was just in use: most recently used

    def unpin(self, block_id: BlockId, owner: str) -> None:
        """Drop `owner`'s pin on `block_id` (missing is fine); evictable once unpinned."""
        raw, own = _raw(block_id), _owner(owner)
        with self._lock:
            self._write(lambda txn: self._release(txn, raw, own))

    def unpin_owner(self, owner: str) -> int:
        """Drop every pin held by `owner`; return how many there were."""
        own = _owner(owner)

        def release_all(txn: lmdb.Transaction) -> int:
            raws: list[bytes] = []
            with txn.cursor(db=self._owners) as cur:
                if cur.set_key(own):
                    raws = [bytes(v) for v in cur.iternext_dup()]
            for raw in raws:
                self._release(txn, raw, own)
            return len(raws)

        with self._lock:
            return self._write(release_all)

    def is_pinned(self, block_id: BlockId) -> bool:
        """Return True if any owner pins `block_id`."""
        raw = _raw(block_id)
        return self._read(lambda txn: self._is_pinned(txn, raw))

    def pinned_by(self, owner: str) -> list[BlockId]:
        """Return the ids `owner` pins (sorted)."""
        own = _owner(owner)

        def owned(txn: lmdb.Transaction) -> list[BlockId]:
            with txn.cursor(db=self._owners) as cur:
                if not cur.set_key(own):
                    return []
                return [BlockId(bytes(v).hex()) for v in cur.iternext_dup()]

        return self._read(owned)

    def used_bytes(self) -> int:
        """Return the sum of cached plaintext sizes (pinned blocks included)."""
        return self._read(self._used)

    def statistics(self) -> CacheStatistics:
        """Return a snapshot of sizes and this process's hit/miss/eviction counters."""

        def sizes(txn: lmdb.Transaction) -> tuple[int, int, int]:
            with txn.cursor(db=self._pins) as cur:
                pinned = sum(1 for _ in cur.iternext_nodup(values=False))
            return txn.stat(self._meta)["entries"], pinned, self._used(txn)

        entries, pinned, used = self._read(sizes)
        with self._lock:
            return CacheStatistics(
                entries=entries,
                used_bytes=used,
                max_bytes=self.max_bytes,
                pinned_entries=pinned,
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                corrupt_dropped=self._corrupt,
            )

    def verify(self) -> int:
        """Check every entry's checksum and the byte count; drop bad entries, fix the count.

        An fsck for start-up after a crash or for `drive` maintenance: reads the whole
        cache (run in a worker thread). Returns the number of entries dropped.
        """

        def check(txn: lmdb.Transaction) -> int:
            bad: list[bytes] = []
            total = 0
            with txn.cursor(db=self._meta) as cur:
                for raw, meta in cur:
                    size, _tick, xxh = _META.unpack(meta)
                    data = txn.get(raw, db=self._blocks)
                    if data is None or len(data) != size or checksum(data) != xxh:
                        bad.append(bytes(raw))
                    else:
                        total += size
            for raw in bad:
                log.error("block cache: entry %s failed its checksum; dropped", raw.hex())
                txn.delete(raw, db=self._blocks)
                bad_meta = txn.get(raw, db=self._meta)
                if bad_meta is not None:
                    txn.delete(_U64.pack(_META.unpack(bad_meta)[1]) + raw, db=self._lru)
                txn.delete(raw, db=self._meta)
            self._set_used(txn, total)
            return len(bad)

        with self._lock:
            dropped = self._write(check)
            self._corrupt += dropped
            return dropped


def _owned(value: bytes | memoryview | None) -> bytes | None:
    """A value read in a transaction, as bytes that outlive it (they are: the environment
    is not opened with buffers=True, so this is a type check, not a copy)."""
    if isinstance(value, memoryview):
        return value.tobytes()
    return value
