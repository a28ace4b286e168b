"""How many bytes of request bodies the server holds in memory at once, on both transports.

Why: a body used to be allocated whole as soon as its head passed authentication, so a few
dozen connections that claimed large bodies and then sent nothing held gigabytes. Now a
request first takes room for its declared length here (waiting, not allocating, while
there is none), the body is allocated only as its bytes arrive, and the room is given back
when the request ends. Room is granted for the whole declared length at once, so bodies
that arrive in parallel can never each hold part of the budget and wait for one another.

One user may hold at most `per_user` bytes, so one account (a buggy or hostile client) that
fills its share with slow bodies leaves room for everyone else; the request deadlines
(`ServerConfig.body_seconds`) bound how long any room is held.

Waiters are served in arrival order, skipping those held back only by their user's share.
Bulk worker threads wait on a `threading.Event`; tasks on the trio thread on a `trio.Event`
set through the trio token, so a release from either side wakes the other.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import trio

from server.config import ServerConfig
from server.errors import RequestTimeout

__all__ = ["BodyBudget"]


@dataclass(eq=False)
class _Waiter:
    size: int
    user: int | None
    wake: Callable[[], None]
    granted: bool = False


@dataclass
class _State:
    used: int = 0
    by_user: dict[int, int] = field(default_factory=dict)
    waiters: deque[_Waiter] = field(default_factory=deque)


class BodyBudget:
    """A server-wide byte budget for request bodies, with a share per user."""

    def __init__(self, limit: int, per_user: int) -> None:
        self.limit = max(1, limit)
        self.per_user = max(1, min(per_user, self.limit))
        self._lock = threading.Lock()
        self._state = _State()

    @property
    def used(self) -> int:
        """Bytes granted right now."""
        return self._state.used

    def _clamp(self, size: int) -> int:
        """A body larger than a user's share takes the whole share (it never fits else)."""
        return max(0, min(size, self.per_user))

    def _fits(self, size: int, user: int | None) -> tuple[bool, bool]:
        """(fits the user's share, fits the server's budget); call under the lock."""
        st = self._state
        mine = True if user is None else st.by_user.get(user, 0) + size <= self.per_user
        return mine, st.used + size <= self.limit

    def _grant(self, size: int, user: int | None) -> None:
        st = self._state
        st.used += size
        if user is not None:
            st.by_user[user] = st.by_user.get(user, 0) + size

    def _scan(self) -> list[_Waiter]:
        """Grant room to the waiters that fit, in order; call under the lock."""
        st = self._state
        woken = []
        for waiter in list(st.waiters):
            mine, ours = self._fits(waiter.size, waiter.user)
            if not ours:
                break  # first come, first served for the shared budget
            if mine:
                self._grant(waiter.size, waiter.user)
                waiter.granted = True
                st.waiters.remove(waiter)
                woken.append(waiter)
        return woken

    def _enqueue(self, waiter: _Waiter) -> bool:
        """Queue `waiter`; True if it got its room at once (waiters held back only by their
        own user's share never keep others waiting)."""
        if waiter.size == 0:
            return True
        with self._lock:
            self._state.waiters.append(waiter)
            woken = self._scan()
        for other in woken:
            if other is not waiter:
                other.wake()
        return waiter.granted

    def release(self, size: int, user: int | None) -> None:
        """Give back room taken for `size` bytes (any thread); wakes waiters that now fit."""
        size = self._clamp(size)
        if size == 0:
            return
        with self._lock:
            st = self._state
            st.used -= size
            if user is not None:
                left = st.by_user.get(user, 0) - size
                if left > 0:
                    st.by_user[user] = left
                else:
                    st.by_user.pop(user, None)
            woken = self._scan()
        for waiter in woken:
            waiter.wake()

    def _give_up(self, waiter: _Waiter) -> None:
        """A waiter stops waiting: undo its grant if it came meanwhile."""
        with self._lock:
            granted = waiter.granted
            if not granted:
                self._state.waiters.remove(waiter)
        if granted:
            self.release(waiter.size, waiter.user)

    @contextlib.contextmanager
    def hold_sync(self, size: int, user: int | None, timeout: float) -> Iterator[None]:
        """Hold room for `size` bytes for the block (a worker thread: may wait up to
        `timeout` seconds, then 408)."""
        size = self._clamp(size)
        event = threading.Event()
        waiter = _Waiter(size, user, event.set)
        if not self._enqueue(waiter) and not event.wait(max(0.0, timeout)):
            self._give_up(waiter)
            if not waiter.granted:
                raise RequestTimeout("timed out waiting for room for the request body")
        try:
            yield
        finally:
            self.release(size, user)

    async def take(self, size: int, user: int | None) -> int:
        """Take room for `size` bytes (the trio thread; waits, cancellable); returns what to
        pass to `release`."""
        size = self._clamp(size)
        event = trio.Event()
        token = trio.lowlevel.current_trio_token()
        waiter = _Waiter(size, user, lambda: token.run_sync_soon(event.set))
        if self._enqueue(waiter):
            await trio.lowlevel.checkpoint()
            return size
        try:
            await event.wait()
        except BaseException:
            self._give_up(waiter)
            raise
        return size


@dataclass(frozen=True)
class BodyRules:
    """The memory budget and the deadlines of request heads and bodies (both transports)."""

    budget: BodyBudget
    head_seconds: float
    body_seconds: float
    min_bytes_per_second: int

    @classmethod
    def from_config(cls, config: ServerConfig) -> BodyRules:
        """The rules `config` sets."""
        return cls(
            BodyBudget(config.body_memory_bytes, config.body_memory_per_user_bytes),
            config.request_head_seconds,
            config.request_body_seconds,
            config.request_body_min_bytes_per_second,
        )

    def body_deadline(self, started: float, length: int) -> float:
        """When a body of `length` bytes that started at `started` must have arrived (a slow
        but honest client gets `body_seconds` plus its length at the minimum rate)."""
        return started + self.body_seconds + length / max(1, self.min_bytes_per_second)
