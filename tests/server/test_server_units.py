"""In-process tests of the server's pure parts and of block garbage collection."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server import admin
from server.app import assemble
from server.blocks import BlockService
from server.config import ConfigError, ServerConfig, load_config
from server.db import Database, accounts, versions
from server.db.journal import Actor
from server.errors import BadRequest
from server.keyring import Keyring, load_master
from server.locations import MASTER_KEY_FILE as MASTER
from server.locations import open_block_store
from server.metrics import Metrics
from server.ratelimit import RateLimiter
from server.uploads import ContentRange, parse_content_range
from tests.helpers.moto_s3 import use_test_blocks
from tests.helpers.pg_cluster import use_test_database


def test_rate_limiter_refills() -> None:
    rl = RateLimiter(rate=2.0, burst=2)
    assert rl.take("k", now=0.0).allowed
    assert rl.take("k", now=0.0).allowed
    v = rl.take("k", now=0.0)
    assert not v.allowed
    assert v.retry_after == 1
    assert v.headers()["X-Ratelimit-Retry-After"] == "1"
    assert rl.take("k", now=0.5).allowed
    assert rl.take("other", now=0.0).allowed


def test_content_range_parsing() -> None:
    assert parse_content_range("bytes 0-9/10") == ContentRange(0, 9, 10)
    assert parse_content_range("bytes */10") == ContentRange(None, None, 10)
    assert parse_content_range("bytes 5-9/*") == ContentRange(5, 9, None)
    for bad in [None, "bytes 9-5/10", "bytes 0-10/10", "items 0-1/2", "bytes */*"]:
        with pytest.raises(BadRequest):
            parse_content_range(bad)


def test_config_rejects_unknown_keys_and_wrong_types(tmp_path: Path) -> None:
    assert load_config(None, tmp_path) == ServerConfig()
    (tmp_path / "server.toml").write_text("rate_burst = 7\nrate_per_second = 3\n")
    c = load_config(None, tmp_path)
    assert (c.rate_burst, c.rate_per_second) == (7, 3.0)
    (tmp_path / "bad.toml").write_text("rate_brust = 7\n")
    with pytest.raises(ConfigError, match="unknown"):
        load_config(tmp_path / "bad.toml", tmp_path)
    (tmp_path / "bad.toml").write_text('rate_burst = "many"\n')
    with pytest.raises(ConfigError, match="must be int"):
        load_config(tmp_path / "bad.toml", tmp_path)


def test_unreferenced_blocks_are_collected_after_the_grace_period(tmp_path: Path) -> None:
    use_test_database(tmp_path)
    use_test_blocks(tmp_path)
    admin.add_user(tmp_path, "gc", "pw")
    db = Database(admin.locations(tmp_path).database, threads=2)
    try:
        store = open_block_store(admin.locations(tmp_path).blocks)
        blocks = BlockService(
            db, store, Keyring(load_master(tmp_path / MASTER)), Metrics(), 8 << 20
        )
        assert db.call(accounts.principal_for, "none", 0.0) is None
        user_id, _ = db.call(accounts.password_hash_of, "gc")
        account, _ = db.call(accounts.account_key, user_id)
        ns_id = db.call(lambda c: c.execute("SELECT root_ns FROM users").fetchone()[0])
        who = accounts.Principal(user_id, "gc", account, ns_id, 0, "unit", "-")
        kept, dropped = b"kept" * 100, b"dropped" * 100
        ids = [hashlib.sha256(d).hexdigest() for d in (kept, dropped)]
        for bid, data in zip(ids, (kept, dropped), strict=True):
            assert blocks.store_plain_sync(who, bid, data)  # type: ignore[arg-type]
        actor = Actor(ns_id, user_id, "gc", "unit")
        req = versions.CommitRequest("/k", None, ((ids[0], len(kept)),), len(kept), 0, None, "k")  # type: ignore[arg-type]
        db.call(versions.commit, actor, req, versions.Limits(10**10, 10))
        assert blocks.collect_sync(grace_seconds=3600) == 0  # still in its grace period
        time.sleep(0.05)
        assert blocks.collect_sync(grace_seconds=0.01) == 1
        assert sorted(k.rsplit("/", 1)[1] for k in store.keys())  # noqa: SIM118  # a store == [ids[0]]
        assert blocks.get_plain_sync(who, ids[0]) == kept  # type: ignore[arg-type]
        assert db.call(accounts.usage, user_id) == accounts.Usage(None, len(kept), 0)
    finally:
        db.close()


def test_block_wire_frames_match_encode_wire(tmp_path: Path) -> None:
    """GET /blocks frames a raw-stored block without re-trying zstd: same bytes as before."""
    import os

    from blockstore.codec import decode_wire, encode_wire

    use_test_database(tmp_path)

    use_test_blocks(tmp_path)
    admin.add_user(tmp_path, "wire", "pw")
    db = Database(admin.locations(tmp_path).database, threads=2)
    try:
        blocks = BlockService(
            db,
            open_block_store(admin.locations(tmp_path).blocks),
            Keyring(load_master(tmp_path / MASTER)),
            Metrics(),
            8 << 20,
        )
        user_id, _ = db.call(accounts.password_hash_of, "wire")
        account, _ = db.call(accounts.account_key, user_id)
        ns_id = db.call(lambda c: c.execute("SELECT root_ns FROM users").fetchone()[0])
        who = accounts.Principal(user_id, "wire", account, ns_id, 0, "unit", "-")
        for data in (os.urandom(300_000), b"compressible text " * 20_000):
            bid = hashlib.sha256(data).hexdigest()
            blocks.store_plain_sync(who, bid, data)  # type: ignore[arg-type]
            frame = blocks.get_wire_sync(who, bid)  # type: ignore[arg-type]
            assert frame == encode_wire(data)
            assert decode_wire(frame, expected_id=bid) == data  # type: ignore[arg-type]
    finally:
        db.close()


async def test_unexpected_errors_are_500_with_a_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def boom(request: Request) -> Response:
        raise RuntimeError("secret internals")

    metrics = Metrics()
    app = assemble([Route("/boom", boom)], metrics, None)
    caplog.set_level(logging.ERROR)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/boom")
    assert r.status_code == 500
    body = r.json()
    assert body["error"] == "internal"
    assert "secret internals" not in r.text
    assert "Traceback" not in r.text
    assert body["request_id"] == r.headers["x-request-id"]
    assert body["request_id"] in caplog.text
    assert "secret internals" in caplog.text
    assert 'drive_requests_total{route="/boom",status="500"} 1' in metrics.render()
