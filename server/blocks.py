"""The block service: verify, seal and store blocks; find missing ones; read them back; GC.

Invariant: a block row exists exactly while its object is in the store. A put and a garbage
collection of the same key hold the same (striped) lock around "store + row" and "row +
delete", so a collection can never remove an object that a put just recorded; across processes (the
`drive server maintenance` command, several API servers) a collection deletes the object
inside the transaction that deletes its row, which a put's first write waits for. Everything
touching disk, SQLite or crypto runs in worker threads; the `*_sync` methods are called
only from there.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from blockstore.codec import FLAG_RAW, decode_wire_view, seal, sealed_to_wire, unseal
from blockstore.errors import BlockNotFound, BlockTooLarge, CorruptBlockError
from blockstore.ids import BlockId
from blockstore.keys import DataKey
from blockstore.store import BlockStore
from blockstore.wire import Buffer
from server.config import ServerConfig
from server.db import Database, accounts, tiers
from server.db import blocks as block_rows
from server.db.accounts import Principal
from server.errors import BadRequest, Internal, NotFound, TooLarge
from server.keyring import Keyring
from server.metrics import Metrics
from server.quota import StagedLimit, check_new_block

log = logging.getLogger(__name__)

T = TypeVar("T")

_STRIPES = 256
GC_BATCH = 1000
READS_FLUSH_AT = 50_000
"""Reads noted in memory before a read writes them out itself (else maintenance does)."""
READ_ATTEMPTS = 3


class BlockService:
    """Per-account encrypted, deduplicated block storage."""

    def __init__(
        self,
        db: Database,
        store: BlockStore,
        keyring: Keyring,
        metrics: Metrics,
        max_block_bytes: int,
        staged_limit: StagedLimit | None = None,
        archive: BlockStore | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.archive = archive
        """The archive tier (server.archive moves cold blocks there), None without one."""
        self.keyring = keyring
        self.metrics = metrics
        self.max_block_bytes = max_block_bytes
        self.staged_limit = staged_limit or StagedLimit.from_config(ServerConfig())
        self._locks = [threading.Lock() for _ in range(_STRIPES)]
        self.clock: Callable[[], float] = time.time
        """When reads happen (tests set a fake clock)."""
        self._reads: dict[tuple[int, str], float] = {}
        self._reads_lock = threading.Lock()

    def _lock(self, key: str) -> threading.Lock:
        return self._locks[zlib.crc32(key.encode()) % _STRIPES]

    def key_lock(self, key: str) -> threading.Lock:
        """The lock that a put, a collection and a tier move of `key` all hold."""
        return self._lock(key)

    def _data_key(self, user_id: int, account: str) -> DataKey:
        key = self.keyring.cached(account)
        if key is None:
            acct, wrapped = self.db.call(accounts.account_key, user_id)
            key = self.keyring.data_key(acct, wrapped)
        return key

    def data_key(self, who: Principal) -> DataKey:
        """The key that seals `who`'s data (worker thread): blocks, and resumable upload
        pieces kept in the store (server.upload_parts)."""
        return self._data_key(who.user_id, who.account)

    # -- writing ------------------------------------------------------------------------

    def store_plain_sync(
        self, who: Principal, bid: BlockId, plaintext: bytes | memoryview, *, compress: bool = True
    ) -> bool:
        """Store a verified plaintext block for `who` (worker thread); True if new.

        `compress` False: the client sent the block raw, having tried zstd with our
        settings, so the server does not try again. A new block starts staged (no version
        references it): refused with 507 if it could not fit in the quota or would pass the
        staged bound (`server.quota`). Concurrent puts of other blocks may each pass the
        check before either is recorded, so a bound can be passed by what is in flight.
        """
        key = f"{who.account}/{bid}"
        with self._lock(key):
            if self.db.call(block_rows.touch_if_present, who.user_id, bid):
                self.metrics.add("dedupe_hits")
                return False
            usage = self.db.call(accounts.usage, who.user_id)
            check_new_block(usage, len(plaintext), self.staged_limit)
            key_ = self._data_key(who.user_id, who.account)
            sealed = seal(key_, who.account, bid, plaintext, compress=compress)
            self.store.put(key, sealed)
            self.db.call(block_rows.insert, who.user_id, bid, len(plaintext), len(sealed))
            self.metrics.add("block_bytes_stored", len(sealed))
            return True

    def put_wire_sync(self, who: Principal, bid: BlockId, frame: Buffer) -> bool:
        """PUT /blocks/{id} (worker thread): decode, verify the id, seal and store; True if
        new. The SHA-256 check, AES-GCM and the disk write each release the GIL."""
        self.metrics.add("block_bytes_received", len(frame))
        try:
            plaintext = _decode(frame, self.max_block_bytes, bid)
        except BlockTooLarge:
            raise TooLarge(f"block is over {self.max_block_bytes} bytes") from None
        except CorruptBlockError as exc:
            raise BadRequest(f"rejected block {bid}: {exc}") from None
        sent_raw = (frame[0] & 0x0F) == FLAG_RAW  # decode_wire accepted the frame: not empty
        return self.store_plain_sync(who, bid, plaintext, compress=not sent_raw)

    # -- reading ------------------------------------------------------------------------

    def get_plain_sync(self, who: Principal, bid: BlockId) -> bytes:
        """The plaintext of a block `who` holds (worker thread); never wrong bytes."""
        if not self.db.call(block_rows.has_block, who.user_id, bid):
            raise NotFound(f"no block {bid}")
        return self._open_stored(who, bid, self._data_key(who.user_id, who.account), unseal)

    def get_wire_sync(self, who: Principal, bid: BlockId) -> bytes | bytearray:
        """The block as a wire frame (worker thread): decrypted, not decompressed.

        AES-GCM authenticates what was sealed for this account and id, and the client
        checks the SHA-256 of every block it decodes, so the server neither decompresses
        nor re-hashes here (`blockstore.codec.sealed_to_wire`).
        """
        return self.get_wire_many_sync(who, [bid], 0)[0][1]

    def get_wire_many_sync(
        self, who: Principal, bids: list[BlockId], budget: int
    ) -> list[tuple[BlockId, bytes | bytearray]]:
        """Wire frames of `bids` in order, stopping once `budget` bytes are gathered (at
        least one block): the caller asks again for the rest (worker thread).

        Raises:
            NotFound: `who` does not hold one of the blocks (none is returned).
        """
        held = self.db.call(block_rows.present, who.user_id, bids)
        for bid in bids:
            if bid not in held:
                raise NotFound(f"no block {bid}")
        key = self._data_key(who.user_id, who.account)
        out: list[tuple[BlockId, bytes | bytearray]] = []
        total = 0
        for bid in bids:
            if out and total >= budget:
                break
            frame = self._open_stored(who, bid, key, sealed_to_wire)
            out.append((bid, frame))
            total += len(frame)
        return out

    def _open_stored(
        self,
        who: Principal,
        bid: BlockId,
        key: DataKey,
        opener: Callable[[DataKey, str, BlockId, bytes], T],
    ) -> T:
        """Read a block `who` is known to hold and open it; missing or damaged is a 500."""
        try:
            return opener(key, who.account, bid, self._read_stored(who.user_id, who.account, bid))
        except BlockNotFound:
            log.error("block %s of account %s is recorded but missing", bid, who.account)
            raise Internal("corrupt block: missing from the block store") from None
        except CorruptBlockError as exc:
            log.error("block %s of account %s is corrupt: %s", bid, who.account, exc)
            raise Internal("corrupt block") from None

    def _read_stored(self, user_id: int, account: str, bid: BlockId) -> bytes:
        """The sealed object from the hot tier, else from the archive, and note the read
        (`flush_reads_sync`; a read from the archive is written at once, which makes the
        block hot again). A block is in one tier or in both while it moves; a read that
        misses both raced a move back and forth, and looks again."""
        key = f"{account}/{bid}"
        now = self.clock()
        with self._reads_lock:
            self._reads[(user_id, bid)] = now
            full = len(self._reads) >= READS_FLUSH_AT
        if full:
            self.flush_reads_sync()
        for _ in range(READ_ATTEMPTS):
            with contextlib.suppress(BlockNotFound):
                return self.store.get(key)
            if self.archive is None:
                break
            with contextlib.suppress(BlockNotFound):
                sealed = self.archive.get(key)
                self.metrics.add("archive_reads")
                self.metrics.add("archive_bytes_read", len(sealed))
                self.db.call(tiers.note_reads, [(user_id, bid, now)])
                return sealed
        raise BlockNotFound(key)

    def flush_reads_sync(self) -> int:
        """Write the reads noted since the last flush to the block rows (`last_access`,
        which decides what is cold); returns how many (worker thread). Reads are kept in
        memory until then, so a read costs no database write."""
        with self._reads_lock:
            reads, self._reads = self._reads, {}
        if reads:
            rows = [(user_id, bid, t) for (user_id, bid), t in reads.items()]
            self.db.call(tiers.note_reads, rows)
        return len(reads)

    def serve_wire_many_sync(
        self, who: Principal, bids: list[BlockId], budget: int
    ) -> list[tuple[BlockId, bytes | bytearray]]:
        """`get_wire_many_sync`, counted as served (worker thread)."""
        frames = self.get_wire_many_sync(who, bids, budget)
        self.metrics.add("block_bytes_served", sum(len(f) for _, f in frames))
        return frames

    # -- garbage collection -----------------------------------------------------------------

    def collect_sync(self, grace_seconds: float) -> int:
        """Delete unreferenced blocks older than the grace period; returns how many."""
        return self.collect_counted_sync(grace_seconds).blocks

    def collect_counted_sync(self, grace_seconds: float, *, dry_run: bool = False) -> Freed:
        """Delete every unreferenced block whose grace period (on the real clock: a block
        an upload is about to commit is never collected under it) is over; a dry run only
        counts them (worker thread)."""
        freed = Freed()
        accounts_by_user: dict[int, str] = {}
        after = (0, "")
        while True:
            batch = self.db.call(block_rows.gc_candidates, grace_seconds, GC_BATCH, after)
            for user_id, bid, stored in batch:
                if dry_run:
                    freed.add(stored)
                    continue
                account = accounts_by_user.get(user_id)
                if account is None:
                    account = self.db.call(accounts.account_key, user_id)[0]
                    accounts_by_user[user_id] = account
                key = f"{account}/{bid}"
                with self._lock(key):
                    gone = self.db.call(
                        block_rows.forget_if_unused, user_id, bid, grace_seconds,
                        functools.partial(self._delete_everywhere, key),
                    )  # fmt: skip
                    if gone:
                        freed.add(stored)
            if len(batch) < GC_BATCH:
                break
            after = (batch[-1][0], batch[-1][1])
        if freed.blocks and not dry_run:
            log.info("collected %d unreferenced blocks", freed.blocks)
        return freed

    def _delete_everywhere(self, key: str) -> None:
        """Delete an object from the hot tier and the archive (it may be in either, or in
        both while a move is cut short)."""
        self.store.delete(key)
        if self.archive is not None:
            self.archive.delete(key)


@dataclass(slots=True)
class Freed:
    """Blocks collected and their sealed bytes."""

    blocks: int = 0
    bytes: int = 0

    def add(self, stored_size: int) -> None:
        """Count one block."""
        self.blocks += 1
        self.bytes += stored_size


def _decode(frame: Buffer, max_plaintext: int, bid: BlockId) -> bytes | memoryview:
    return decode_wire_view(frame, max_plaintext, expected_id=bid)  # raw: no copy
