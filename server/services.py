"""The composition root of one server process: every service, built once from a data dir.

Layout of the data directory: `drive.db` (metadata, SQLite WAL), `master.key` (0600),
`blocks/` (sealed blocks, `{account}/{block id}`), `uploads/` (resumable sessions and
spooled bodies), `tls/` (self-signed certificate), `server.toml` (optional config),
`server.json` (written while serving). The config may put the metadata, the blocks and the
master key elsewhere (server.locations).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import trio

from server import private
from server.auth import Authenticator
from server.blocks import BlockService
from server.body_budget import BodyRules
from server.config import ServerConfig
from server.db import Database, journal
from server.db.accounts import Principal as Principal  # the types routes hand services
from server.db.url import DatabaseUnavailable
from server.db.versions import CommitRequest as CommitRequest
from server.errors import RateLimited, Unavailable
from server.feed import ChangeFeed
from server.keyring import Keyring, load_master
from server.lifecycle import Lifecycle, Report
from server.locations import Locations, open_archive_store, open_block_store
from server.metadata import Metadata
from server.metrics import Metrics
from server.quota import StagedLimit
from server.ratelimit import RateLimiter
from server.tokens import TokenPolicy
from server.uploads import Uploads

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything a request handler may use."""

    data_dir: Path
    config: ServerConfig
    fingerprint: str
    db: Database
    metrics: Metrics
    auth: Authenticator
    blocks: BlockService
    feed: ChangeFeed
    metadata: Metadata
    uploads: Uploads
    limiter: RateLimiter
    login_limiter: RateLimiter
    bodies: BodyRules
    lifecycle: Lifecycle

    @classmethod
    def open(cls, data_dir: Path, config: ServerConfig, fingerprint: str) -> Services:
        """Open (initialising on first use) the data directory. Blocking: call at startup."""
        private.private_dir(data_dir)
        fixed = private.fix_modes(data_dir)
        if fixed:
            log.info("made %d files and directories of %s private", fixed, data_dir)
        where = Locations.from_config(config, data_dir)
        metrics = Metrics()
        db = Database(where.database, config.db_threads)
        keyring = Keyring(load_master(where.master_key_file))
        store = open_block_store(where.blocks)
        archive = open_archive_store(where.archive, where.blocks)
        blocks = BlockService(
            db, store, keyring, metrics, config.max_block_bytes, StagedLimit.from_config(config),
            archive,
        )  # fmt: skip
        feed = ChangeFeed(db, config, metrics, shared=db.shared)
        metadata = Metadata(db, feed, metrics, config)
        return cls(
            data_dir=data_dir,
            config=config,
            fingerprint=fingerprint,
            db=db,
            metrics=metrics,
            auth=Authenticator(db, TokenPolicy.from_config(config)),
            blocks=blocks,
            feed=feed,
            metadata=metadata,
            uploads=Uploads(data_dir, db, blocks, metadata, metrics, config),
            limiter=RateLimiter(config.rate_per_second, config.rate_burst),
            login_limiter=RateLimiter(config.login_rate_per_second, config.login_rate_burst),
            bodies=BodyRules.from_config(config),
            lifecycle=Lifecycle.build(db, blocks, config),
        )

    async def admit(self, authorization: str | None) -> tuple[Principal, dict[str, str]]:
        """Authenticate a request (401) and take one rate-limit token of its device (429,
        carrying the rate headers); returns the caller and the headers every answer
        carries. Both transports admit through here."""
        who = await self.auth.authenticate(authorization)
        verdict = self.limiter.take(who.token_hash)
        if not verdict.allowed:
            refused = RateLimited(f"too many requests; retry in {verdict.retry_after} s")
            refused.headers.update(verdict.headers())
            raise refused
        return who, verdict.headers()

    async def check_health(self) -> None:
        """Answer `/healthz`: 503 `unavailable` unless the database answers, so a balancer
        or monitor stops sending requests that could only fail here."""
        try:
            await trio.to_thread.run_sync(self.db.ping_sync, limiter=self.db.limiter)
        except DatabaseUnavailable as exc:
            raise Unavailable(str(exc)) from None

    async def maintain_once(self) -> Report:
        """One round of housekeeping: expire sessions, trim journals, then the storage
        lifecycle pass (thinning, trash expiry, archive tier, garbage collection)."""
        c = self.config
        await self.uploads.expire()
        await self.db.run(journal.trim, c.journal_keep_entries, c.journal_keep_days * 86400)
        report = await trio.to_thread.run_sync(self.lifecycle.run_sync)
        if report.thinned.versions or report.trash.items or report.collected.blocks:
            log.info("maintenance: %s", "; ".join(report.lines()))
        return report

    async def background(self) -> None:
        """What runs beside the requests until cancelled: housekeeping and, on PostgreSQL,
        the listener that wakes this server's long polls for other servers' changes."""
        listener = self.db.change_listener(self.feed.changed, self.feed.resync, self.feed.lost)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.maintenance_loop)
            if listener is not None:
                nursery.start_soon(listener.run)

    async def maintenance_loop(self) -> None:
        """Housekeeping every `maintenance_interval_seconds`, forever."""
        while True:
            try:
                await self.maintain_once()
            except Exception:
                log.exception("maintenance round failed; retrying next round")
            await trio.sleep(self.config.maintenance_interval_seconds)

    def close(self) -> None:
        """Release the database connections."""
        self.db.close()
