"""Long-poll waiters in one process: many woken by one change, timeouts, disconnects, and the
shared pre-encoded answers (no server process: these run in a second)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio.testing

from server.config import ServerConfig
from server.db import Database
from server.db.url import SqliteUrl
from server.feed import ChangeFeed, PollResult
from server.metrics import Metrics
from server.routes_api import poll_answer

NS = 7  # no row in the database: its head reads as 0
MANY = 2000


@pytest.fixture
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    database = Database(SqliteUrl(tmp_path / "d.db"), threads=2)
    yield database
    database.close()


def _feed(db: Database, **config: float) -> ChangeFeed:
    return ChangeFeed(db, ServerConfig(**config), Metrics())  # type: ignore[arg-type]


async def _never() -> None:
    await trio.sleep_forever()


async def test_one_change_wakes_every_waiter_of_its_namespace_only(db: Database) -> None:
    feed = _feed(db)
    answers: list[PollResult | None] = []
    other: list[PollResult | None] = []

    async def poll(ns_id: int, into: list[PollResult | None]) -> None:
        into.append(await feed.longpoll(ns_id, 0, 60, _never))

    async with trio.open_nursery() as nursery:
        for _ in range(MANY):
            nursery.start_soon(poll, NS, answers)
        nursery.start_soon(poll, NS + 1, other)
        await trio.testing.wait_all_tasks_blocked()
        assert feed.metrics.longpolls_open == MANY + 1
        feed.changed(NS, 1, 0)
        await trio.testing.wait_all_tasks_blocked()
        assert answers == [PollResult(True, None)] * MANY
        assert other == []
        nursery.cancel_scope.cancel()
    assert feed.metrics.longpolls_open == 0
    assert feed._waiters == {}  # nobody left behind


async def test_a_waiter_times_out_or_leaves_with_its_client(
    db: Database, autojump_clock: trio.testing.MockClock
) -> None:
    feed = _feed(db, longpoll_min_seconds=30, longpoll_jitter_fraction=0)
    start = trio.current_time()
    assert await feed.longpoll(NS, 0, 1, _never) == PollResult(False, None)
    assert trio.current_time() - start == pytest.approx(30)

    async def leaves_after_a_second() -> None:
        await trio.sleep(1)

    assert await feed.longpoll(NS, 0, 60, leaves_after_a_second) is None
    assert feed._waiters == {}
    assert feed.metrics.longpolls_open == 0


async def test_a_waiter_that_wakes_without_news_waits_on(
    db: Database, autojump_clock: trio.testing.MockClock
) -> None:
    """`changed(ns, None)` (the listener came back) wakes every waiter to re-read its head;
    one whose cursor is still current waits again, within its first deadline."""
    feed = _feed(db, longpoll_min_seconds=30, longpoll_jitter_fraction=0)
    answers: list[tuple[PollResult | None, float]] = []
    start = trio.current_time()

    async def poll() -> None:
        answers.append((await feed.longpoll(NS, 0, 30, _never), trio.current_time() - start))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await trio.sleep(10)
        feed.changed(NS, None)
        await trio.sleep(1)
        assert answers == []
    assert answers == [(PollResult(False, None), pytest.approx(30))]


async def test_too_many_waiters_get_backoff(db: Database) -> None:
    feed = _feed(db, longpoll_max_open=0, longpoll_backoff_seconds=60)
    assert await feed.longpoll(NS, 0, 60, _never) == PollResult(False, 60)


def test_answers_are_encoded_once_and_shared() -> None:
    for result in (PollResult(True, None), PollResult(False, None), PollResult(False, 60)):
        response = poll_answer(result)
        assert poll_answer(PollResult(result.changes, result.backoff)) is response
        assert json.loads(response.body) == {"changes": result.changes, "backoff": result.backoff}
        assert (b"content-type", b"application/json") in response.raw_headers
