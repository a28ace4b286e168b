"""`/healthz`: what a load balancer or monitor asks each API server (docs/running.md
"Load balancer"). No token, no rate limit; 200 while the database answers, 503
`unavailable` when it does not."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from server import admin
from server.db import Database
from server.db.url import DatabaseUnavailable
from tests.helpers.server_proc import ServerProcess


def test_healthz_needs_no_token_and_says_ok(shared_server: ServerProcess) -> None:
    with shared_server.client() as http:
        for _ in range(3):
            r = http.get("/healthz")
            assert r.status_code == 200, r.text
            assert r.json() == {"ok": True}
            assert "X-Ratelimit-Remaining" not in r.headers
        assert http.head("/healthz").status_code == 200


def test_healthz_is_not_behind_the_bearer_check(shared_server: ServerProcess) -> None:
    with shared_server.client("not-a-token") as http:
        r = http.get("/healthz")
    assert r.status_code == 200
    assert isinstance(r, httpx.Response)


def test_a_database_that_does_not_answer_is_unavailable(tmp_path: Path) -> None:
    db = Database(admin.locations(tmp_path).database, threads=1)  # SQLite
    db.ping_sync()
    db.call(lambda conn: conn.raw.close())  # its one connection is gone: questions fail
    with pytest.raises(DatabaseUnavailable):
        db.ping_sync()
