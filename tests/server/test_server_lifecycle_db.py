"""The storage lifecycle on the service and database layers with a fake clock: thinning
thousands of versions leaves exactly what the policy says (kept versions survive), expired
trash releases its versions, and blocks move to the archive (a directory, or S3 on moto),
are read from there and move back once read again; the usage figures stay exact."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from blockstore.ids import BlockId
from blockstore.s3store import S3BlockStore, S3Settings
from blockstore.store import BlockStore, LocalDirStore
from server import admin
from server.blocks import BlockService
from server.config import ServerConfig
from server.db import Database, accounts, files, moves, versions
from server.db import blocks as block_rows
from server.db import lifecycle as rows
from server.db.conn import Conn
from server.db.journal import Actor
from server.keyring import Keyring, load_master
from server.lifecycle import Lifecycle
from server.locations import MASTER_KEY_FILE, open_block_store
from server.metrics import Metrics
from server.thinning import ThinningPolicy, Version, to_remove
from tests.helpers.moto_s3 import CREDENTIALS, MotoS3, use_test_blocks
from tests.helpers.pg_cluster import use_test_database

DAY = 86400.0
T0 = 1_700_006_400.0


@dataclass
class Drive:
    """One user's drive on a database and block store, driven on a fake clock."""

    db: Database
    blocks: BlockService
    who: accounts.Principal
    actor: Actor
    clock: list[float]

    def put(self, data: bytes) -> tuple[BlockId, int]:
        bid = BlockId(hashlib.sha256(data).hexdigest())
        self.blocks.store_plain_sync(self.who, bid, data)
        return bid, len(data)

    def commit(self, path: str, refs: list[tuple[BlockId, int]]) -> int:
        req = versions.CommitRequest(
            path, None, tuple(refs), sum(s for _, s in refs), 0, None, None, overwrite=True
        )
        rec, _ = self.db.call(versions.commit, self.actor, req, versions.Limits(10**12, 10**6))
        return rec.rev

    def lifecycle(self, **config: float | int) -> Lifecycle:
        return Lifecycle.build(self.db, self.blocks, ServerConfig(**config))  # type: ignore[arg-type]

    def history(self, path: str) -> list[Version]:
        def read(conn: Conn) -> list[Version]:
            found = conn.execute(
                "SELECT v.rev, v.created_at, v.kept FROM file_versions v JOIN files f"
                " ON f.ns_id = v.ns_id AND f.id = v.file_id WHERE f.ns_id = ? AND f.name = ?",
                (self.actor.ns_id, path.lstrip("/")),
            ).fetchall()
            return [Version(int(r[0]), float(r[1]), bool(r[2])) for r in found]

        return sorted(self.db.call(read), key=lambda v: v.rev)

    def referenced_bytes(self) -> int:
        """The plaintext bytes of the distinct blocks retained versions use (counted here,
        not from the counters)."""
        (n,) = self.db.call(lambda c: c.execute(
            "SELECT COALESCE(SUM(b.size), 0) FROM blocks b WHERE b.user_id = ? AND EXISTS"
            " (SELECT 1 FROM version_blocks vb WHERE vb.ns_id = ? AND vb.block_id = b.block_id)",
            (self.who.user_id, self.actor.ns_id)).fetchone())  # fmt: skip
        return int(n)


@pytest.fixture
def drive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Drive]:
    clock = [T0]
    fake = SimpleNamespace(time=lambda: clock[0], time_ns=lambda: int(clock[0] * 1e9))
    monkeypatch.setattr(versions, "time", fake)  # versions are made at the fake time,
    monkeypatch.setattr(block_rows, "time", fake)  # blocks stored and released too
    use_test_database(tmp_path)
    use_test_blocks(tmp_path)
    admin.add_user(tmp_path, "life", "pw")
    db = Database(admin.locations(tmp_path).database, threads=2)
    blocks = BlockService(
        db, open_block_store(admin.locations(tmp_path).blocks),
        Keyring(load_master(tmp_path / MASTER_KEY_FILE)), Metrics(), 8 << 20,
    )  # fmt: skip
    blocks.clock = lambda: clock[0]
    found = db.call(accounts.password_hash_of, "life")
    assert found is not None
    account, _ = db.call(accounts.account_key, found[0])
    ns_id = db.call(lambda c: c.execute("SELECT root_ns FROM users").fetchone()[0])
    who = accounts.Principal(found[0], "life", account, ns_id, 0, "unit", "-")
    try:
        yield Drive(db, blocks, who, Actor(ns_id, found[0], "life", "unit"), clock)
    finally:
        db.close()


def test_thinning_thousands_of_versions_matches_the_policy(drive: Drive) -> None:
    """1,500 versions of one file over 60 days (and some of another), thinned by one pass
    at day 61: what stays is what `to_remove` says, kept versions included; the usage is
    the referenced blocks' bytes."""
    shared = drive.put(b"shared" * 1000)
    pool = [drive.put(os.urandom(64)) for _ in range(40)]
    for i in range(1500):
        drive.clock[0] = T0 + i * 3456.0  # 60 days
        drive.commit("/busy", [shared, pool[i % len(pool)]])
        if i % 300 == 0:
            drive.commit("/calm", [shared])
    keep = [5, 777, 1499]
    for rev in keep:
        drive.db.call(rows.set_kept, drive.actor.ns_id, "/busy", rev, True)
    before = drive.history("/busy")
    assert len(before) == 1500
    referenced = drive.referenced_bytes()
    now = T0 + 61 * DAY
    policy = ThinningPolicy.from_config(ServerConfig())
    expected = set(to_remove(before, now, policy))
    calm = to_remove(drive.history("/calm"), now, policy)
    dry = drive.lifecycle().run_sync(now, dry_run=True)
    assert len(drive.history("/busy")) == 1500
    report = drive.lifecycle().run_sync(now)
    assert dry.thinned == report.thinned  # blocks many thinned versions share included
    after = drive.history("/busy")
    assert {v.rev for v in after} == {v.rev for v in before} - expected
    assert set(keep) <= {v.rev for v in after}
    assert max(v.rev for v in after) == 1500
    assert report.thinned.versions == len(expected) + len(calm)
    assert len(drive.history("/calm")) == 5 - len(calm)
    usage = drive.db.call(accounts.usage, drive.who.user_id)
    assert usage.used == drive.referenced_bytes()
    assert report.thinned.bytes == referenced - usage.used
    # A second pass at the same moment has nothing left to do.
    assert drive.lifecycle().run_sync(now).thinned.versions == 0


def test_expired_trash_releases_versions_and_blocks(drive: Drive) -> None:
    a = drive.put(b"a" * 5000)
    b = drive.put(b"b" * 7000)
    drive.db.call(files.mkdir, drive.actor, "/dir", 0o755)
    drive.commit("/dir/a", [a])
    drive.commit("/dir/b", [b])
    drive.commit("/keep", [a])
    drive.db.call(moves.delete, drive.actor, "/dir", True)
    deleted_at = drive.db.call(moves.trash, drive.actor.ns_id)[0].deleted_at
    life = drive.lifecycle(block_gc_grace_seconds=-1.0)  # no grace: collected at once
    assert life.run_sync(deleted_at + 29 * DAY).trash.items == 0  # still restorable
    dry = life.run_sync(deleted_at + 31 * DAY, dry_run=True)
    assert (dry.trash.items, dry.trash.files, dry.trash.bytes) == (1, 3, 7000)
    assert len(drive.db.call(moves.trash, drive.actor.ns_id)) == 1  # a dry run changes nothing
    drive.clock[0] = deleted_at + 31 * DAY
    report = life.run_sync(deleted_at + 31 * DAY)
    assert (report.trash.items, report.trash.files, report.trash.versions) == (1, 3, 2)
    assert report.trash.bytes == 7000  # `a` is still used by /keep
    assert report.collected.blocks == 1  # b (no grace period in this test)
    assert drive.db.call(moves.trash, drive.actor.ns_id) == []
    assert drive.db.call(accounts.usage, drive.who.user_id).used == 5000
    assert len(list(drive.blocks.store.keys())) == 1


def _archive_store(kind: str, tmp_path: Path, moto: MotoS3 | None) -> BlockStore:
    if kind == "dir":
        return LocalDirStore(tmp_path / "archive")
    assert moto is not None
    return S3BlockStore(moto.new_bucket(), "arch", S3Settings(endpoint=moto.endpoint,
                                                              **CREDENTIALS))  # fmt: skip


@pytest.mark.parametrize("kind", ["dir", "s3"])
def test_archive_moves_reads_and_moves_back(
    drive: Drive, tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    moto = request.getfixturevalue("moto_s3") if kind == "s3" else None
    archive = _archive_store(kind, tmp_path, moto)
    drive.blocks.archive = archive
    old = [drive.put(os.urandom(3000)) for _ in range(3)]
    drive.commit("/old", old)
    drive.clock[0] = T0 + 50 * DAY
    new = drive.put(os.urandom(2000))
    drive.commit("/new", [new, old[0]])  # old[0] is used by a new version: stays hot
    life = drive.lifecycle(archive_after_seconds=30 * DAY, archive_idle_seconds=20 * DAY)
    now = T0 + 60 * DAY
    assert life.run_sync(now, dry_run=True).archived.blocks == 2
    report = life.run_sync(now)
    assert (report.archived.blocks, report.unarchived.blocks) == (2, 0)
    account = drive.who.account
    for bid, _ in old[1:]:
        assert archive.has(f"{account}/{bid}")
        assert not drive.blocks.store.has(f"{account}/{bid}")
    assert drive.blocks.store.has(f"{account}/{old[0][0]}")
    assert drive.db.call(rows.usage_detail, drive.who.user_id).archived == 6000
    # Read from the archive (counted), then hot again at the next pass.
    drive.clock[0] = now + DAY
    got = drive.blocks.get_plain_sync(drive.who, old[1][0])
    assert hashlib.sha256(got).hexdigest() == old[1][0]
    assert drive.blocks.metrics.archive_reads == 1
    report = life.run_sync(now + DAY + 1)
    assert (report.unarchived.blocks, report.archived.blocks) == (1, 0)
    assert drive.blocks.store.has(f"{account}/{old[1][0]}")
    assert not archive.has(f"{account}/{old[1][0]}")
    assert drive.blocks.get_plain_sync(drive.who, old[2][0])  # still read from the archive
    assert drive.db.call(accounts.usage, drive.who.user_id).used == drive.referenced_bytes()
