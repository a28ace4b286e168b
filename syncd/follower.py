"""The follower: one long poll at a time, then the delta, applied and announced (R11, R12).

Loop: read the delta from the persisted cursor until `has_more` is false, applying each page
and then saving the new cursor (a crash re-reads at most one page, and applying a change
twice changes nothing); then hold one long poll until the server says
something changed. "reset" (the journal was trimmed past our cursor) forgets which
directories are fresh and re-lists the root, so the tree is rebuilt from listings.

Unreachable server: retry with exponential backoff and full jitter (`backoff_delay`), up to
`MAX_BACKOFF_S`. A long poll that is dropped (or answered 5xx) and the server's `backoff`
answer are followed by a wider jittered wait (`syncd.reconnect`), so that many clients do
not return to a restarted server at the same moment. The mount keeps
working meanwhile (offline mode), and the cursor makes sure every missed change arrives
when the server is back (R13).

Concurrency: one task (`run`). LMDB writes in one short synchronous block per page.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable

import trio

from blockstore.wire import Change
from syncd import errors
from syncd.changes import ChangeApplier
from syncd.reconnect import Reconnect
from syncd.remote import RemoteClient
from syncd.state import ROOT_INO, StateDB
from syncd.tree import TreeSync

__all__ = ["Follower", "backoff_delay"]

log = logging.getLogger(__name__)

HOLD_S = 120
BASE_BACKOFF_S = 0.25
MAX_BACKOFF_S = 30.0
DELTA_PAGE = 1000
CURSOR_KEY = "cursor"


def backoff_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform in [0.5, 1] x min(max, base x 2^attempt)."""
    cap = min(MAX_BACKOFF_S, BASE_BACKOFF_S * (2 ** min(attempt, 16)))
    u = rng.random() if rng is not None else random.random()
    return float(cap * (0.5 + 0.5 * u))


class Follower:
    """Keeps the local tree in step with the server's journal; run `run()` in a nursery."""

    def __init__(
        self,
        state: StateDB,
        remote: RemoteClient,
        tree: TreeSync,
        applier: ChangeApplier,
        *,
        hold_s: int = HOLD_S,
        on_changes: Callable[[list[Change]], None] | None = None,
        reconnect: Reconnect | None = None,
    ) -> None:
        self.state = state
        self.remote = remote
        self.tree = tree
        self.applier = applier
        self.hold_s = hold_s
        self.on_changes = on_changes
        self.reconnect = reconnect if reconnect is not None else Reconnect()
        self.online = True
        self.last_error: str | None = None
        self.applied = 0
        self.polls = 0
        self.resets = 0
        self._poke = trio.Event()

    @property
    def cursor(self) -> str | None:
        value = self.state.get_meta(CURSOR_KEY)
        return value if isinstance(value, str) else None

    def poke(self) -> None:
        """Cut a backoff sleep short (e.g. the uploader just reached the server)."""
        self._poke.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        attempt = 0
        while True:
            try:
                await self.sync_once()
                self._mark_online()
                attempt = 0
                await self._poll_once()
            except errors.Offline as exc:
                self._mark_offline(str(exc))
                await self._sleep(backoff_delay(attempt))
                attempt += 1
            except errors.RateLimited as exc:
                await self._sleep(max(exc.retry_after, backoff_delay(attempt)))
                attempt += 1
            except errors.RemoteError as exc:
                log.warning("change feed failed (%s); retrying", exc)
                self.last_error = str(exc)
                await self._sleep(backoff_delay(attempt + 2))
                attempt += 1

    async def _poll_once(self) -> None:
        """Hold one long poll; after a drop or a `backoff`, wait a jittered while."""
        try:
            _changed, server_backoff = await self.remote.longpoll(self.cursor or "0",
                                                                 self.hold_s)  # fmt: skip
        except errors.Offline as exc:
            self._mark_offline(str(exc))
            await self._sleep(self.reconnect.after_drop())
            return
        except errors.ServerError as exc:
            log.info("long poll answered %s; back in a jittered while", exc)
            await self._sleep(self.reconnect.after_drop())
            return
        self.polls += 1
        if server_backoff:
            log.info("server asked to back off for %d s", server_backoff)
            await trio.sleep(self.reconnect.after_backoff(server_backoff))

    async def _sleep(self, seconds: float) -> None:
        self._poke = trio.Event()
        with trio.move_on_after(seconds):
            await self._poke.wait()

    def _mark_offline(self, why: str) -> None:
        if self.online:
            log.warning("change feed: server unreachable (%s); retrying with backoff", why)
        self.online = False
        self.last_error = why
        self.tree.mark_offline()

    def _mark_online(self) -> None:
        if not self.online:
            log.info("change feed: server reachable again; catching up")
        self.online = True
        self.last_error = None
        self.tree.mark_online()

    async def sync_once(self) -> int:
        """Apply everything newer than the cursor; returns how many changes were applied."""
        cursor = self.cursor
        if cursor is None:
            cursor = await self.remote.cursor()
            with self.state.write() as w:
                w.set_meta(CURSOR_KEY, cursor)
            return 0
        total = 0
        while True:
            changes, new_cursor, has_more, reset = await self.remote.delta(cursor, DELTA_PAGE)
            if reset:
                await self._reset(new_cursor)
                return total
            if changes:
                total += self.applier.apply_all(changes)
                with self.state.write() as w:
                    w.set_meta(CURSOR_KEY, new_cursor)
                self.applier.announce()
                if self.on_changes is not None:
                    self.on_changes(changes)
            elif new_cursor != cursor:
                with self.state.write() as w:
                    w.set_meta(CURSOR_KEY, new_cursor)
            cursor = new_cursor
            if not has_more:
                self.applied += total
                return total

    async def _reset(self, cursor: str) -> None:
        log.warning("change feed was trimmed past our cursor; re-listing the tree")
        self.resets += 1
        self.tree.fresh.clear()
        with self.state.write() as w:
            w.set_meta(CURSOR_KEY, cursor)
        with contextlib.suppress(errors.Offline):
            await self.tree.ensure_listed(ROOT_INO)
        if self.applier.on_inode is not None:
            self.applier.on_inode(ROOT_INO)
