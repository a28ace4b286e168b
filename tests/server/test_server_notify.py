"""Long polls across API servers: two server processes on one PostgreSQL database, a device's
long poll held on one woken by a commit made through the other (LISTEN/NOTIFY), also after
PostgreSQL restarted under them. These start the test cluster themselves (in either pass)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from server.config import ServerConfig
from server.db import Database
from server.db.listen import parse
from server.db.url import SqliteUrl
from server.feed import ChangeFeed
from server.metrics import Metrics
from tests.helpers import pg_cluster
from tests.helpers.server_proc import ServerProcess

pytestmark = pytest.mark.e2e

WAKE_SECONDS = 2.0


@contextlib.contextmanager
def _two_servers(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Servers A and B on one fresh database and one master key."""
    url = pg_cluster.cluster().create_database()
    for name, extra in (("a", ""), ("b", f'master_key_file = "{tmp_path}/a/master.key"\n')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "server.toml").write_text(f'database = "{url}"\n{extra}')
    with ServerProcess(tmp_path / "a") as a, ServerProcess(tmp_path / "b") as b:
        yield a, b


def _open_longpolls(http: httpx.Client) -> int:
    text = http.get("/metrics").text
    line = next(ln for ln in text.splitlines() if ln.startswith("drive_longpolls_open "))
    return int(line.split()[1])


class _HeldPoll:
    """A long poll in a thread: when it was answered, and what with."""

    def __init__(self, http: httpx.Client, cursor: str) -> None:
        self.answered_at = 0.0
        self.status = 0
        self.body: Any = None
        self._thread = threading.Thread(target=self._poll, args=(http, cursor), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while _open_longpolls(http) < 1:
            assert time.monotonic() < deadline, "the long poll was never held"
            time.sleep(0.01)

    def _poll(self, http: httpx.Client, cursor: str) -> None:
        r = http.get("/api/v1/longpoll", params={"cursor": cursor, "timeout": 60})
        self.answered_at = time.monotonic()
        self.status = r.status_code
        self.body = r.json() if r.status_code == 200 else r.text

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, seconds: float) -> None:
        self._thread.join(seconds)
        assert self.done(), f"the long poll was not answered within {seconds} s"


def _commit(http: httpx.Client, path: str) -> float:
    """Create an empty file; returns when the commit was answered."""
    body = {"path": path, "base_rev": None, "blocks": [], "size": 0, "mtime_ns": 1, "mode": 0o600}
    r = http.post("/api/v1/commit", json=body)
    assert r.status_code == 200, r.text
    return time.monotonic()


def _paths_after(http: httpx.Client, cursor: str) -> list[str]:
    delta = http.get("/api/v1/delta", params={"cursor": cursor}).json()
    return [e["file"]["path"] for e in delta["entries"]]


def _logins(a: ServerProcess, b: ServerProcess) -> tuple[str, str]:
    """One user; a laptop logged in through A, a phone through B."""
    a.add_user("nora", "pw")
    return a.login("nora", "pw", device="laptop"), b.login("nora", "pw", device="phone")


def test_announcements_are_parsed() -> None:
    assert parse("12:345") == (12, 345)
    assert parse("12") == (12, None)
    assert parse("x:1") is None
    assert parse("") is None


async def test_feed_trusts_cached_heads_only_while_announcements_arrive(tmp_path: Path) -> None:
    """With other servers (`shared`), a head is cached only while the listener is in place;
    its return forgets every head and wakes every waiter; an echo wakes no one; announcements
    of namespaces this process does not follow are not cached."""
    db = Database(SqliteUrl(tmp_path / "d.db"), threads=2)  # namespace 7 has no row: head 0
    try:
        feed = ChangeFeed(db, ServerConfig(), Metrics(), shared=True)
        feed.changed(7, 5)  # no listener yet: not cached
        assert await feed.head(7) == 0
        feed.resync()
        feed.changed(7, 5)  # nobody here asked about namespace 7 yet: not cached
        assert await feed.head(7) == 0
        feed.changed(7, 5)
        assert await feed.head(7) == 5
        answers: list[bool | None] = []

        async def poll(cursor: int) -> None:
            async def never() -> None:
                await trio.sleep_forever()

            result = await feed.longpoll(7, cursor, 0, never)
            answers.append(None if result is None else result.changes)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll, 5)
            await trio.testing.wait_all_tasks_blocked()
            feed.changed(7, 5)  # an echo of a head already known
            await trio.testing.wait_all_tasks_blocked()
            assert answers == []
            feed.lost()
            assert await feed.head(7) == 0  # from the database again
            feed.resync()  # the waiter re-reads head 0 <= 5: waits on
            await trio.testing.wait_all_tasks_blocked()
            assert answers == []
            feed.changed(7, 6)
        assert answers == [True]
    finally:
        db.close()


def test_a_commit_on_one_server_wakes_a_long_poll_held_on_another(tmp_path: Path) -> None:
    with _two_servers(tmp_path) as (a, b):
        laptop, phone = _logins(a, b)
        with a.client(laptop) as on_a, b.client(phone) as on_b:
            for round_ in range(3):
                cursor = on_b.get("/api/v1/cursor").json()["cursor"]
                poll = _HeldPoll(on_b, cursor)
                committed_at = _commit(on_a, f"/from-a-{round_}")
                poll.wait(10)
                assert (poll.status, poll.body) == (200, {"changes": True, "backoff": None})
                woke = poll.answered_at - committed_at
                assert woke < WAKE_SECONDS, f"woke {woke:.3f} s after the commit"
                assert _paths_after(on_b, cursor) == [f"/from-a-{round_}"]


def test_long_polls_wake_across_servers_after_postgresql_restarts(tmp_path: Path) -> None:
    """PostgreSQL restarts while B holds a long poll: B's listener reconnects by itself (and
    says so in its log), and a commit on A wakes B's poll again."""
    with _two_servers(tmp_path) as (a, b):
        laptop, phone = _logins(a, b)
        with a.client(laptop) as on_a, b.client(phone) as on_b:
            cursor = on_b.get("/api/v1/cursor").json()["cursor"]
            held = _HeldPoll(on_b, cursor)
            pg_cluster.cluster().restart()
            deadline = time.monotonic() + 30
            while "change listener: listening again" not in b.log_text():
                assert time.monotonic() < deadline, b.log_text()[-3000:]
                time.sleep(0.05)
            assert "change listener: lost" in b.log_text()
            committed_at = _commit(on_a, "/after-restart")
            held.wait(10)
            assert (held.status, held.body) == (200, {"changes": True, "backoff": None})
            woke = held.answered_at - committed_at
            assert woke < WAKE_SECONDS, f"woke {woke:.3f} s after the commit"
            assert _paths_after(on_b, cursor) == ["/after-restart"]
