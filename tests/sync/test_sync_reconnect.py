"""The follower comes back after a jittered wait when its long poll is dropped, answered 5xx
or told to back off (fake clock, fake random, a scripted server)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from syncd.changes import ChangeApplier
from syncd.follower import Follower
from syncd.reconnect import DROP_SPREAD_S, Reconnect
from syncd.remote import RemoteClient
from syncd.state import StateDB
from syncd.tree import TreeSync
from tests.helpers.server_proc import ServerProcess


class FakeRandom:
    """Draws from a fixed list, in order."""

    def __init__(self, values: list[float]) -> None:
        self.values: Iterator[float] = iter(values)

    def random(self) -> float:
        return next(self.values)


class CountingReconnect(Reconnect):
    """Counts the waits after a dropped poll."""

    drops = 0

    def after_drop(self) -> float:
        self.drops += 1
        return super().after_drop()


class ScriptedServer:
    """Answers each long poll with the next step of `script`, then holds polls forever."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.polls: list[float] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/v1/cursor":
            return httpx.Response(200, json={"cursor": "0"})
        if path == "/api/v1/delta":
            body = {"entries": [], "cursor": "0", "has_more": False, "reset": False}
            return httpx.Response(200, json=body)
        assert path == "/api/v1/longpoll"
        self.polls.append(trio.current_time())
        step = self.script.pop(0) if self.script else "hold"
        if step == "drop":
            raise httpx.ReadError("connection closed", request=request)
        if step == "503":
            return httpx.Response(503, json={"error": "internal", "message": "restarting"})
        if step == "backoff":
            return httpx.Response(200, json={"changes": False, "backoff": 60})
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_dropped_refused_and_backed_off_polls_come_back_after_jittered_waits(
    state: StateDB, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    server = ScriptedServer(["drop", "503", "backoff", "drop"])
    draws = [0.5, 0.1, 0.25, 0.9]
    async with httpx.AsyncClient(transport=httpx.MockTransport(server.handle),
                                 base_url="https://drive.test") as http:  # fmt: skip
        remote = RemoteClient(http)
        tree = TreeSync(state, remote)
        applier = ChangeApplier(state, "me")
        tree.reconciler = applier
        follower = Follower(state, remote, tree, applier, hold_s=60,
                            reconnect=Reconnect(FakeRandom(draws)))  # fmt: skip
        nursery.start_soon(follower.run)
        await trio.sleep(1000)
    gaps = [b - a for a, b in zip(server.polls, server.polls[1:], strict=False)]
    assert gaps == pytest.approx([
        DROP_SPREAD_S * 0.5,  # dropped: somewhere in the spread
        DROP_SPREAD_S * 0.1,  # 503 (a balancer whose server is gone): the same
        60 * 1.25,  # backoff 60: never sooner, spread over one more window
        DROP_SPREAD_S * 0.9,
    ], abs=0.01)  # fmt: skip
    assert follower.online  # a drop is offline only until the server answers again


def test_many_clients_spread_over_the_window() -> None:
    """10,000 clients dropped at once: no second of the window gets much more than its share."""
    rng = random.Random(14)
    delays = [Reconnect(rng).after_drop() for _ in range(10_000)]
    per_second = [0] * int(DROP_SPREAD_S)
    for d in delays:
        assert 0 <= d < DROP_SPREAD_S
        per_second[int(d)] += 1
    share = 10_000 / DROP_SPREAD_S
    assert max(per_second) < 1.2 * share
    assert all(Reconnect(rng).after_backoff(60) >= 60 for _ in range(100))


@pytest.mark.e2e
async def test_a_real_server_s_backoff_and_restart_are_followed_by_jittered_waits(
    state: StateDB, tmp_path: Path
) -> None:
    """Against a real server: `backoff: 1` answers (it holds no polls at all) are followed by
    1 x (1 + u) s; after a restart, the dropped poll comes back after spread x u s."""
    config = {"longpoll_max_open": 0, "longpoll_backoff_seconds": 1}
    srv = ServerProcess(tmp_path / "data", config=config).start()
    try:
        srv.add_user("ann", "pw")
        token = srv.login("ann", "pw")
        polls: list[float] = []
        draws = [0.5, 0.25] + [0.5] * 50
        async with srv.async_client(token) as http:
            remote = RemoteClient(http)
            real_longpoll = remote.longpoll

            async def longpoll(cursor: str, timeout_s: int) -> tuple[bool, int | None]:
                polls.append(trio.current_time())
                return await real_longpoll(cursor, timeout_s)

            remote.longpoll = longpoll  # type: ignore[method-assign]
            tree = TreeSync(state, remote)
            applier = ChangeApplier(state, "me")
            tree.reconciler = applier
            reconnect = CountingReconnect(FakeRandom(draws), drop_spread_s=4.0)
            follower = Follower(state, remote, tree, applier, hold_s=30, reconnect=reconnect)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(follower.run)
                while len(polls) < 3:  # noqa: ASYNC110  # the follower's own pace
                    await trio.sleep(0.05)
                assert polls[1] - polls[0] == pytest.approx(1.5, abs=0.3)
                assert polls[2] - polls[1] == pytest.approx(1.25, abs=0.3)
                # let it hold polls, then restart it under a held poll
                assert srv.config_path is not None
                text = srv.config_path.read_text()
                srv.config_path.write_text(text.replace("longpoll_max_open = 0", ""))
                await trio.to_thread.run_sync(srv.restart)
                held = len(polls) + 1
                while len(polls) < held:  # noqa: ASYNC110
                    await trio.sleep(0.05)
                await trio.sleep(0.5)
                drops = reconnect.drops
                dropped_at = trio.current_time()
                await trio.to_thread.run_sync(srv.kill)  # the kernel closes the held poll
                await trio.to_thread.run_sync(srv.start)
                while len(polls) <= held:  # noqa: ASYNC110
                    await trio.sleep(0.05)
                assert reconnect.drops == drops + 1
                assert polls[held] - dropped_at >= 4.0 * 0.5  # the spread, not at once
                assert follower.online
                nursery.cancel_scope.cancel()
    finally:
        srv.stop()
