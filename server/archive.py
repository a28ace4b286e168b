"""The archive tier: cold blocks move to the archive store, blocks read again move back.

A move never leaves a block in neither tier, whatever moment the process dies (kill -9
included): record the intent, copy the object to the target (a local put is fsynced, an S3
put is acknowledged), flip the row's tier in a transaction that still finds the intent,
delete the source copy, drop the intent. Until the flip the row names the source, which holds
the object; after it the target does. Reads try the hot tier first and then the archive
(server.blocks), so a read racing a move, in this process or another one, finds the object
too. A crash leaves an intent and at most one extra copy; `repair` removes that copy once the
intent is older than any live move (`archive_move_stale_seconds`).

Moves of one key hold the same lock as its puts and collections (`BlockService.key_lock`).
`DRIVE_TEST_CRASH_AT=copied|flipped` (tests only) kills the process right after that step.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass

from blockstore.errors import BlockNotFound
from blockstore.store import BlockStore
from server.blocks import BlockService
from server.db import accounts, tiers
from server.db.tiers import ARCHIVE, HOT

log = logging.getLogger(__name__)

MOVE_BATCH = 1000
CRASH_ENV = "DRIVE_TEST_CRASH_AT"


@dataclass(slots=True)
class Moved:
    """Blocks moved between the tiers and their sealed bytes."""

    blocks: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class ArchiveRules:
    """When a block is cold (server config `archive_*`)."""

    after_seconds: float
    """Every version using it is older than this."""
    idle_seconds: float
    """Not read (nor uploaded again) for this long."""
    stale_move_seconds: float
    """An intent this old belongs to a dead mover."""


class Tiers:
    """Moves blocks between the hot store and the archive store."""

    def __init__(self, blocks: BlockService, archive: BlockStore, rules: ArchiveRules) -> None:
        self.blocks = blocks
        self.db = blocks.db
        self.hot = blocks.store
        self.archive = archive
        self.rules = rules
        self._accounts: dict[int, str] = {}

    def _store(self, tier: str) -> BlockStore:
        return self.archive if tier == ARCHIVE else self.hot

    def _key(self, user_id: int, block_id: str) -> str:
        account = self._accounts.get(user_id)
        if account is None:
            account = self._accounts[user_id] = self.db.call(accounts.account_key, user_id)[0]
        return f"{account}/{block_id}"

    def archive_cold_sync(self, now: float, *, dry_run: bool = False) -> Moved:
        """Move the blocks that are cold at time `now` to the archive (worker thread)."""
        r = self.rules
        return self._move_all(
            tiers.cold, now - r.after_seconds, now - r.idle_seconds, HOT, ARCHIVE, dry_run
        )

    def unarchive_warm_sync(self, now: float, *, dry_run: bool = False) -> Moved:
        """Move archived blocks read (or used by a new version) again back (worker thread)."""
        r = self.rules
        return self._move_all(
            tiers.warm, now - r.after_seconds, now - r.idle_seconds, ARCHIVE, HOT, dry_run
        )

    def _move_all(
        self,
        select: tiers.Selector,
        version_cutoff: float,
        read_cutoff: float,
        src: str,
        dst: str,
        dry_run: bool,
    ) -> Moved:
        out = Moved()
        while True:
            batch = self.db.call(select, version_cutoff, read_cutoff, MOVE_BATCH)
            moved_any = False
            for user_id, block_id, stored in batch:
                if dry_run or self.move_sync(user_id, block_id, src, dst):
                    out.blocks += 1
                    out.bytes += stored
                    moved_any = True
            if dry_run or len(batch) < MOVE_BATCH or not moved_any:
                break
        if out.blocks and not dry_run:
            self.blocks.metrics.add("blocks_archived" if dst == ARCHIVE else "blocks_unarchived",
                                    out.blocks)  # fmt: skip
        return out

    def move_sync(self, user_id: int, block_id: str, src: str, dst: str) -> bool:
        """Move one block from tier `src` to `dst` (see the module docstring); True if it
        moved. A block collected or moved by someone else meanwhile is left as it is."""
        key = self._key(user_id, block_id)
        with self.blocks.key_lock(key):
            if not self.db.call(tiers.begin_move, user_id, block_id, dst, time.time()):
                return False
            try:
                data = self._store(src).get(key)
            except BlockNotFound:  # collected meanwhile (another process), or not there yet
                self.db.call(tiers.end_move, user_id, block_id)
                return False
            self._store(dst).put(key, data)
            _crash_point("copied")
            if not self.db.call(tiers.flip, user_id, block_id, src, dst):
                tier = self.db.call(tiers.tier_of, user_id, block_id)
                if tier == src or (tier is None and dst == ARCHIVE):
                    self._store(dst).delete(key)  # our copy; puts never write the archive
                self.db.call(tiers.end_move, user_id, block_id)
                return False
            _crash_point("flipped")
            self._store(src).delete(key)
            self.db.call(tiers.end_move, user_id, block_id)
            return True

    def repair_sync(self, now: float | None = None) -> int:
        """Finish what dead movers left: for each stale intent, delete the copy the row does
        not name (both when the row is gone); returns how many were repaired."""
        started_before = (time.time() if now is None else now) - self.rules.stale_move_seconds
        repaired = 0
        for user_id, block_id, to_tier in self.db.call(tiers.stale_moves, started_before):
            key = self._key(user_id, block_id)
            with self.blocks.key_lock(key):
                tier = self.db.call(tiers.tier_of, user_id, block_id)
                if tier is None:  # collected: only the archive copy can be a leftover (a put
                    self.archive.delete(key)  # elsewhere may be making the hot one anew)
                else:
                    self._store(ARCHIVE if tier == HOT else HOT).delete(key)
                self.db.call(tiers.end_move, user_id, block_id)
                repaired += 1
                log.info("repaired an interrupted move of block %s (to %s)", key, to_tier)
        return repaired


def _crash_point(step: str) -> None:
    """Tests only: die here like a `kill -9` would (`DRIVE_TEST_CRASH_AT=step`)."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
