"""The change feed's live side: wake long-poll waiters the moment their namespace changes.

The journal itself is in the database (`server.db.journal`). Here each namespace has one
`trio.Event` that every waiter of that namespace waits on; a commit sets it and drops it, so
the next waiter makes a fresh one (never `clear`). The current head of each namespace is
cached so that a long poll costs no database round trip.

Concurrency: everything runs on the trio thread. A waiter takes the event *before* reading
the head, so a commit landing between the two still wakes it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from server.config import ServerConfig
from server.db import Database, journal
from server.metrics import Metrics


@dataclass(frozen=True, slots=True)
class PollResult:
    """What a long poll answers."""

    changes: bool
    backoff: int | None


class ChangeFeed:
    """Long-poll waiters, woken by commits."""

    def __init__(self, db: Database, config: ServerConfig, metrics: Metrics) -> None:
        self.db = db
        self.config = config
        self.metrics = metrics
        self._events: dict[int, trio.Event] = {}
        self._heads: dict[int, int] = {}

    async def head(self, ns_id: int) -> int:
        """The namespace's newest journal sequence number."""
        cached = self._heads.get(ns_id)
        if cached is not None:
            await trio.lowlevel.checkpoint()
            return cached
        seq = await self.db.run(journal.head, ns_id)
        self._heads[ns_id] = max(seq, self._heads.get(ns_id, 0))
        return self._heads[ns_id]

    async def notify(self, ns_id: int) -> None:
        """Something committed in `ns_id`: refresh its head and wake its waiters."""
        seq = await self.db.run(journal.head, ns_id)
        self._heads[ns_id] = max(seq, self._heads.get(ns_id, 0))
        event = self._events.pop(ns_id, None)
        if event is not None:
            event.set()

    def clamp(self, timeout: float) -> float:
        """The hold time for a requested timeout: clamped, plus jitter."""
        t = min(max(timeout, self.config.longpoll_min_seconds), self.config.longpoll_max_seconds)
        return t + random.uniform(0, self.config.longpoll_jitter_fraction * t)

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
        if self.metrics.longpolls_open >= self.config.longpoll_max_open:
            return PollResult(False, self.config.longpoll_backoff_seconds)
        hold = self.clamp(requested_seconds)
        result: PollResult | None = PollResult(False, None)
        self.metrics.add("longpolls_open")
        try:
            async with trio.open_nursery() as nursery:

                async def watch_disconnect() -> None:
                    nonlocal result
                    await wait_disconnect()
                    result = None
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch_disconnect)
                with trio.move_on_after(hold):
                    while True:
                        event = self._events.get(ns_id)
                        if event is None:
                            event = self._events[ns_id] = trio.Event()
                        if await self.head(ns_id) > cursor:
                            result = PollResult(True, None)
                            break
                        await event.wait()
                nursery.cancel_scope.cancel()
        finally:
            self.metrics.add("longpolls_open", -1)
        return result
