"""Changes committed by the other API servers of a PostgreSQL deployment, as they happen.

Every write transaction that journals announces `NS:SEQ` on `CHANGES_CHANNEL` once it has
committed (`server.db.announce`). Each server process holds one extra connection that
LISTENs there, in a thread of its own (psycopg's blocking API; trio never waits on it), and
hands every announcement to the trio thread with `trio.from_thread.run_sync`: one listening
connection per process however many long polls it holds.

A notification can be lost only while this connection is down, so when it comes back (the
database restarted, the network dropped) the owner is told to resynchronise (`on_listening`)
after LISTEN is in place again; while it is down (`on_lost`) nothing here can be trusted to
be complete. Reconnection retries by itself with doubling, jittered delays; every state
change is one line in the server log.
"""

from __future__ import annotations

import logging
import os
import random
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import trio
from psycopg.conninfo import make_conninfo

from server.db.conn import CHANGES_CHANNEL
from server.db.postgres import describe, full_conninfo
from server.db.url import PostgresUrl

log = logging.getLogger(__name__)

RETRY_FIRST_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
# A peer that vanishes without closing the connection is noticed within about 25 s.
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
             "keepalives_count": 3}  # fmt: skip


def parse(payload: str) -> tuple[int, int | None] | None:
    """`NS:SEQ` (or a bare `NS`, e.g. from a `NOTIFY` typed by hand) as (ns, seq)."""
    ns, _, seq = payload.partition(":")
    try:
        return int(ns), (int(seq) if seq else None)
    except ValueError:
        return None


class _Stopped(Exception):
    """The owner asked the thread to end."""


class ChangeListener:
    """One LISTEN connection and its thread (see the module docstring).

    The callbacks run on the trio thread and must not block: `on_change(ns, seq)` for each
    announcement (`seq` None when the sender gave none), `on_listening()` each time LISTEN
    is (again) in place, `on_lost()` when the connection broke.
    """

    def __init__(
        self,
        url: PostgresUrl,
        on_change: Callable[[int, int | None], object],
        on_listening: Callable[[], object],
        on_lost: Callable[[], object],
    ) -> None:
        self._conninfo = make_conninfo(full_conninfo(url), **KEEPALIVE)
        self._shown = url.shown()
        self._on_change = on_change
        self._on_listening = on_listening
        self._on_lost = on_lost
        self._stop_r, self._stop_w = os.pipe()
        self._stopping = False

    async def run(self) -> None:
        """Listen until cancelled (a trio task; the waiting happens in a thread)."""
        token = trio.lowlevel.current_trio_token()
        thread = threading.Thread(
            target=self._thread_main, args=(token,), name="drive-change-listener", daemon=True
        )
        thread.start()
        try:
            await trio.sleep_forever()
        finally:
            self._stopping = True
            os.write(self._stop_w, b"x")
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join, 5.0)
            if not thread.is_alive():  # else it is stuck connecting: leave it its pipe
                os.close(self._stop_r)
                os.close(self._stop_w)

    # -- the listener thread --------------------------------------------------------------

    def _thread_main(self, token: trio.lowlevel.TrioToken) -> None:
        try:
            self._listen_forever(token)
        except (_Stopped, trio.RunFinishedError):
            pass
        except Exception:
            log.exception("change listener stopped; other servers' changes wake no one here")

    def _to_trio(
        self, token: trio.lowlevel.TrioToken, fn: Callable[..., object], *args: object
    ) -> None:
        if self._stopping:
            raise _Stopped
        trio.from_thread.run_sync(fn, *args, trio_token=token)

    def _listen_forever(self, token: trio.lowlevel.TrioToken) -> None:
        delay = RETRY_FIRST_SECONDS
        lost_at: float | None = None
        while True:
            try:
                conn = psycopg.connect(self._conninfo, autocommit=True)
            except psycopg.Error as exc:
                log.warning(
                    "change listener: cannot reach %s (%s); retrying in %.1f s",
                    self._shown, describe(exc), delay,
                )  # fmt: skip
                self._sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            try:
                conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                self._to_trio(token, self._on_listening)
                if lost_at is None:
                    log.info("change listener: listening on %s", self._shown)
                else:
                    log.warning(
                        "change listener: listening again after %.1f s; woke every long poll",
                        time.monotonic() - lost_at,
                    )
                delay = RETRY_FIRST_SECONDS
                self._receive(conn, token)
            except psycopg.Error as exc:
                lost_at = time.monotonic()
                log.warning(
                    "change listener: lost %s (%s); reconnecting", self._shown, describe(exc)
                )
                self._to_trio(token, self._on_lost)
            finally:
                conn.close()

    def _receive(self, conn: psycopg.Connection[Any], token: trio.lowlevel.TrioToken) -> None:
        """Hand over notifications until the connection breaks (psycopg.Error) or stop."""
        waiter = select.poll()  # not select.select: a busy server's descriptors pass 1024
        waiter.register(conn.fileno(), select.POLLIN)
        waiter.register(self._stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in waiter.poll()}
            if self._stop_r in ready:
                raise _Stopped
            for note in conn.notifies(timeout=0):
                parsed = parse(note.payload)
                if parsed is None:
                    log.debug("change listener: ignored payload %r", note.payload)
                    continue
                self._to_trio(token, self._on_change, *parsed)

    def _sleep(self, seconds: float) -> None:
        """Wait before a retry, ending at once if asked to stop."""
        waiter = select.poll()
        waiter.register(self._stop_r, select.POLLIN)
        if waiter.poll(seconds * 1000):
            raise _Stopped
