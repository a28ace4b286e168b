"""One storage-lifecycle pass: thin versions, expire the trash, move blocks between the
tiers, collect garbage; run by the server every maintenance round and by
`drive server maintenance` on demand.

Policy decisions (which versions and trash items go, which blocks are cold) are taken at
`now`, which a preview may set ahead (`--now +40d`). Garbage collection keeps its grace
period on the real clock whatever `now` is: that period is what keeps a block an upload is
about to commit, so blocks this pass releases are collected by a later pass. A dry run makes
each metadata change in a short transaction it rolls back and adds up the block references
they dropped, so its figures are those of the real pass (blocks a dry run's trash expiry
would release are counted there, the rest under thinning), and moves and deletes nothing.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from server.archive import ArchiveRules, Moved, Tiers
from server.blocks import BlockService, Freed
from server.config import ServerConfig
from server.db import Database
from server.db import lifecycle as rows
from server.thinning import ThinningPolicy


@dataclass(slots=True)
class Report:
    """What one pass did (or, dry run, would do)."""

    now: float
    dry_run: bool
    thinned: rows.Released = field(default_factory=rows.Released)
    trash: rows.Released = field(default_factory=rows.Released)
    archived: Moved = field(default_factory=Moved)
    unarchived: Moved = field(default_factory=Moved)
    collected: Freed = field(default_factory=Freed)
    repaired: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The `--json` form (stable keys for scripts)."""
        return asdict(self)

    def lines(self) -> list[str]:
        """What a person reads: one line per part of the pass."""
        would = "would be " if self.dry_run else ""
        t, x = self.thinned, self.trash
        return [
            f"thinning: {t.versions} versions of {t.files} files {would}removed, "
            f"{_size(t.bytes)} released",
            f"trash: {x.items} expired items ({x.files} entries, {x.versions} versions) "
            f"{would}removed, {_size(x.bytes)} released",
            f"archive: {self.archived.blocks} blocks ({_size(self.archived.bytes)}) {would}moved "
            f"to the archive, {self.unarchived.blocks} ({_size(self.unarchived.bytes)}) "
            f"{would}moved back",
            f"garbage collection: {self.collected.blocks} blocks {would}deleted, "
            f"{_size(self.collected.bytes)} {would}freed (released blocks wait for the grace "
            "period)",
            f"interrupted moves repaired: {self.repaired}",
            f"took {self.seconds:.2f} s",
        ]


def _size(n: int) -> str:
    """Bytes for people: `512 B`, `3.2 MiB`."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class Lifecycle:
    """The maintenance pass over every user's storage."""

    def __init__(
        self, db: Database, blocks: BlockService, config: ServerConfig, tiers: Tiers | None
    ) -> None:
        self.db = db
        self.blocks = blocks
        self.config = config
        self.tiers = tiers
        self.policy = ThinningPolicy.from_config(config)

    @classmethod
    def build(cls, db: Database, blocks: BlockService, config: ServerConfig) -> Lifecycle:
        """The pass for a block service (with its archive tier, if it has one)."""
        tiers = None
        if blocks.archive is not None:
            rules = ArchiveRules(
                config.archive_after_seconds,
                config.archive_idle_seconds,
                config.archive_move_stale_seconds,
            )
            tiers = Tiers(blocks, blocks.archive, rules)
        return cls(db, blocks, config, tiers)

    def run_sync(self, now: float | None = None, *, dry_run: bool = False) -> Report:
        """One pass at time `now` (default: the clock); worker thread or a command."""
        start = time.perf_counter()
        report = Report(time.time() if now is None else now, dry_run)
        if not dry_run:
            self.blocks.flush_reads_sync()
            if self.tiers is not None:
                report.repaired = self.tiers.repair_sync()
        self._metadata(report)
        if self.tiers is not None:
            report.unarchived = self.tiers.unarchive_warm_sync(report.now, dry_run=dry_run)
            report.archived = self.tiers.archive_cold_sync(report.now, dry_run=dry_run)
        report.collected = self.blocks.collect_counted_sync(
            self.config.block_gc_grace_seconds, dry_run=dry_run
        )
        report.seconds = time.perf_counter() - start
        return report

    def _metadata(self, report: Report) -> None:
        """Thin every file and expire the trash, one transaction per file or item."""
        dry = report.dry_run
        thin_drops: rows.Drops | None = Counter() if dry else None
        trash_drops: rows.Drops | None = Counter() if dry else None
        for target in self.db.call(rows.files_with_history):
            self.db.call(rows.thin_file, target, report.now, self.policy, report.thinned,
                         dry_run=dry, drops=thin_drops)  # fmt: skip
        cutoff = report.now - self.config.trash_keep_seconds
        for item in self.db.call(rows.expired_trash, cutoff):
            self.db.call(rows.purge_item, item, cutoff, report.trash, dry_run=dry,
                         drops=trash_drops)  # fmt: skip
        if thin_drops is not None and trash_drops is not None:
            released = self.db.call(rows.released_by, thin_drops + trash_drops)
            for key, size in released.items():
                part = report.trash if key in trash_drops else report.thinned
                part.bytes += size
