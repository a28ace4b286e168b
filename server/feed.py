"""The change feed's live side: wake long-poll waiters the moment their namespace changes.

The journal itself is in the database (`server.db.journal`). Each namespace keeps the set of
its waiters (`Waiter`: anything with `wake`), and a change wakes them. Most long polls are
parked connections (`server.parked`: a record, no task, answered from `wake` itself); a poll
held through the route (and the web app's) is the request's own task waiting for its client
to leave, inside a cancel scope whose deadline is the hold time, which a change cancels
(`longpoll`). Both open and close through `start` and `finish` (`longpoll_max_open`).
The current head of each namespace is cached so that a long poll costs no database round
trip.

Changes arrive two ways, both through `changed`, the one place that wakes waiters: this
process's own (`notify`, after each write) and, on PostgreSQL, every API server's as
announced by the change listener (`server.db.listen`). The cache is only as good as those
announcements: with several servers (`shared`) it is trusted only while the listener is in
place; before that, and while it is down, heads are read from the database, and when it
comes back every cached head is forgotten and every waiter woken once to re-read its own.

Concurrency: everything runs on the trio thread. A waiter registers *before* reading the
head, so a change landing between the two still wakes it (it then reads the head again). A
head read from the database is cached only if the cache was not reset while the read was in
flight (`_epoch`).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from server.config import ServerConfig
from server.db import Database, journal
from server.metrics import Metrics


class Waiter(Protocol):
    """What waits for a namespace's next change: a held request's task (`_Waiter`) or a
    parked connection (`server.parked`)."""

    def wake(self) -> None:
        """The namespace changed (or may have): called once, already unregistered."""


class _Waiter:
    """One held long poll: the scope its task waits in, and whether a change ended it."""

    __slots__ = ("scope", "woken")

    def __init__(self, deadline: float) -> None:
        self.scope = trio.CancelScope(deadline=deadline)
        self.woken = False

    def wake(self) -> None:
        self.woken = True
        self.scope.cancel()


@dataclass(frozen=True, slots=True)
class PollResult:
    """What a long poll answers."""

    changes: bool
    backoff: int | None


class ChangeFeed:
    """Long-poll waiters, woken by commits."""

    def __init__(
        self, db: Database, config: ServerConfig, metrics: Metrics, *, shared: bool = False
    ) -> None:
        self.db = db
        self.config = config
        self.metrics = metrics
        self._waiters: dict[int, set[Waiter]] = {}
        self._heads: dict[int, int] = {}
        self._trusted = not shared
        self._epoch = 0

    async def head(self, ns_id: int) -> int:
        """The namespace's newest journal sequence number."""
        cached = self._heads.get(ns_id) if self._trusted else None
        if cached is not None:
            await trio.lowlevel.checkpoint()
            return cached
        epoch = self._epoch
        seq = await self.db.run(journal.head, ns_id)
        return self._learn(ns_id, seq, epoch)

    def _learn(self, ns_id: int, seq: int, epoch: int) -> int:
        """Cache a head read at `epoch`, unless the cache was reset since; the best known."""
        if not self._trusted or epoch != self._epoch:
            return seq
        best = self._heads[ns_id] = max(seq, self._heads.get(ns_id, 0))
        return best

    async def notify(self, ns_id: int) -> None:
        """This process changed `ns_id`: read its new head and wake its waiters."""
        epoch = self._epoch
        seq = await self.db.run(journal.head, ns_id)
        self.changed(ns_id, seq, epoch)

    def changed(self, ns_id: int, seq: int | None, epoch: int | None = None) -> None:
        """`ns_id`'s journal reached `seq` (None: unknown, to be re-read): wake its waiters.

        Synchronous, so that the change listener's thread can hand it announcements (`epoch`
        None) through `trio.from_thread.run_sync`. An announcement for a namespace nobody
        here waits on and whose head is not cached changes nothing (the cache does not grow
        with every namespace of the deployment), and one of a head already known (the echo
        of this process's own change) wakes no one twice.
        """
        if seq is None:
            self._heads.pop(ns_id, None)
        else:
            if epoch is None:
                if ns_id not in self._heads and ns_id not in self._waiters:
                    return
                if seq <= self._heads.get(ns_id, 0):  # never cached while untrusted
                    return
            self._learn(ns_id, seq, self._epoch if epoch is None else epoch)
        for waiter in self._waiters.pop(ns_id, ()):
            waiter.wake()

    def lost(self) -> None:
        """Other servers' changes may go unannounced from now on: stop caching heads."""
        self._trusted = False
        self._epoch += 1
        self._heads.clear()

    def resync(self) -> None:
        """Other servers' changes are announced from now on, but some may have been missed:
        forget every cached head and wake every waiter once to re-read its own."""
        self._trusted = True
        self._epoch += 1
        self._heads.clear()
        for ns_id in list(self._waiters):
            self.changed(ns_id, None)

    def clamp(self, timeout: float) -> float:
        """The hold time for a requested timeout: clamped, plus jitter."""
        t = min(max(timeout, self.config.longpoll_min_seconds), self.config.longpoll_max_seconds)
        return t + random.uniform(0, self.config.longpoll_jitter_fraction * t)

    def start(self, requested_seconds: float) -> float | PollResult:
        """Open one long poll: its deadline (trio time), or the backoff answer when
        `longpoll_max_open` are open already. An opened poll counts in `longpolls_open`
        until `finish`. Both ways of holding a poll (`longpoll`, `server.parked`) open here."""
        if self.metrics.longpolls_open >= self.config.longpoll_max_open:
            return PollResult(False, self.config.longpoll_backoff_seconds)
        self.metrics.add("longpolls_open")
        return trio.current_time() + self.clamp(requested_seconds)

    def finish(self) -> None:
        """A poll opened by `start` was answered or its client left."""
        self.metrics.add("longpolls_open", -1)

    def watch(self, ns_id: int, waiter: Waiter) -> None:
        """Wake `waiter` (once) at `ns_id`'s next change. Register before reading the head."""
        self._waiters.setdefault(ns_id, set()).add(waiter)

    def known_head(self, ns_id: int) -> int | None:
        """The cached head, when the cache is trusted (no waiting; None: read `head`)."""
        return self._heads.get(ns_id) if self._trusted else None

    async def longpoll(
        self,
        ns_id: int,
        cursor: int,
        requested_seconds: float,
        wait_disconnect: Callable[[], Awaitable[None]],
    ) -> PollResult | None:
        """Wait until the journal passes `cursor`, the timeout, or the client leaves.

        Returns:
            The answer, or None if the client disconnected (nothing to answer).
        """
        deadline = self.start(requested_seconds)
        if isinstance(deadline, PollResult):
            return deadline
        try:
            while True:
                waiter = _Waiter(deadline)
                self.watch(ns_id, waiter)
                try:
                    with waiter.scope:
                        if await self.head(ns_id) > cursor:
                            return PollResult(True, None)
                        await wait_disconnect()
                        return None
                finally:
                    self.forget(ns_id, waiter)
                if not waiter.woken:
                    return PollResult(False, None)  # the hold time is over
                if trio.current_time() >= deadline:  # woken as it ran out: answer the truth
                    return PollResult(await self.head(ns_id) > cursor, None)
        finally:
            self.finish()

    def forget(self, ns_id: int, waiter: Waiter) -> None:
        """Drop a waiter that left (a woken one is already gone with its namespace's set)."""
        waiters = self._waiters.get(ns_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[ns_id]
