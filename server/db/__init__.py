"""The metadata database handle: SQLite (embedded) or PostgreSQL (scale-out), used from
worker threads only.

`Database.run(fn, *args)` runs `fn(conn, *args)` in a worker thread with a pooled `Conn`, so
the trio thread never blocks on SQL. Writers wrap their statements in `write_txn(conn)`: one
change is one transaction. On SQLite its BEGIN IMMEDIATE takes the single writer lock (plus
a busy timeout), which serialises writers across threads and processes; on PostgreSQL a
change whose checks read rows another server may be changing locks them first
(`lock_namespace`, `Dialect.for_update`). Readers see one snapshot in `read_txn`.

Portability: all SQL lives in this package's query modules, once, with `?` placeholders
(server.db.conn); engine-specific spellings are named fields of `Dialect`.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Concatenate, ParamSpec, Protocol, TypeVar

import trio

from server.db import schema
from server.db.conn import Conn
from server.db.url import DatabaseUnavailable, DatabaseUrl, SqliteUrl

if TYPE_CHECKING:
    from server.db.listen import ChangeListener

log = logging.getLogger(__name__)

P = ParamSpec("P")
RETRIES = 4
"""Extra attempts of a transaction aborted for a deadlock or serialization failure."""
RETRY_PAUSE_SECONDS = 0.02
"""The first pause before such a retry is random up to this; each next one up to twice it."""
T = TypeVar("T")


@contextmanager
def write_txn(conn: Conn) -> Iterator[Conn]:
    """One write transaction, committed on success; what it journaled is announced after."""
    conn.execute(conn.dialect.begin_write)
    try:
        yield conn
    except BaseException:
        conn.take_changed()
        conn.execute("ROLLBACK")
        raise
    changed = conn.take_changed()  # taken first: a COMMIT that fails announces nothing
    conn.execute("COMMIT")
    conn.commits += 1
    announce(conn, changed)


def announce(conn: Conn, changed: dict[int, int]) -> None:
    """Tell the other API servers which namespaces a committed transaction changed (only
    PostgreSQL has others: `Conn.changed` records nothing on SQLite)."""
    if changed:
        from server.db import postgres

        postgres.announce(conn, changed)


@contextmanager
def read_txn(conn: Conn) -> Iterator[Conn]:
    """A read snapshot spanning several statements."""
    conn.execute(conn.dialect.begin_read)
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")


def lock_row(conn: Conn, table: str, row_id: int) -> None:
    """Inside a write transaction: hold the row `id = row_id` of `table` until it ends, so
    what the transaction checked under it stays true until its change lands. SQLite's
    writer lock already does that."""
    if conn.dialect.row_locks:
        conn.execute(f"SELECT id FROM {table} WHERE id = ?" + conn.dialect.for_update, (row_id,))


def lock_namespace(conn: Conn, ns_id: int) -> None:
    """Hold a namespace (its tree: a base revision, a free name) and its owner's row (the
    usage counters) until the change lands. Every writer takes the user row before any
    block row, so writers of one user never wait for each other in a circle."""
    if conn.dialect.row_locks:
        conn.execute(
            "SELECT n.id FROM namespaces n JOIN users u ON u.id = n.owner_id WHERE n.id = ?"
            + conn.dialect.for_update,
            (ns_id,),
        )


def connect(url: DatabaseUrl) -> Conn:
    """One connection to the configured database (`DatabaseUnavailable` if refused)."""
    if isinstance(url, SqliteUrl):
        from server.db import sqlite

        return sqlite.connect(url.path)
    from server.db import postgres

    return postgres.connect(url)


def open_sync(url: DatabaseUrl) -> Conn:
    """Open (creating and migrating if needed) the database for a synchronous caller."""
    conn = connect(url)
    try:
        schema.migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def is_disk_full(exc: BaseException) -> bool:
    """True for a write the database refused because its disk is full."""
    from server.db import sqlite

    if sqlite.is_disk_full(exc):
        return True
    if "psycopg" not in sys.modules:  # then no error can be PostgreSQL's
        return False
    from server.db import postgres

    return postgres.is_disk_full(exc)


class _Pool(Protocol):
    unavailable_errors: tuple[type[Exception], ...]
    """What the engine raises when its database cannot be reached or used."""
    retryable_errors: tuple[type[Exception], ...]
    """What the engine raises for a transaction it aborted only because a concurrent one
    got in its way (a deadlock, a serialization failure): running it again is right."""

    def connection(self) -> AbstractContextManager[Conn]: ...
    def close(self) -> None: ...


class Database:
    """A pool of connections used from worker threads under one capacity limiter."""

    def __init__(self, url: DatabaseUrl, threads: int = 8) -> None:
        self.url = url
        first = open_sync(url)
        self._pool: _Pool
        if isinstance(url, SqliteUrl):
            from server.db.sqlite import SqlitePool

            self._pool = SqlitePool(first, url.path, threads)
        else:
            from server.db.postgres import PostgresPool

            first.close()
            self._pool = PostgresPool(url, threads)
        self.limiter = trio.CapacityLimiter(threads)

    @property
    def shared(self) -> bool:
        """True when other API server processes may change this database (PostgreSQL)."""
        return not isinstance(self.url, SqliteUrl)

    def change_listener(
        self,
        on_change: Callable[[int, int | None], object],
        on_listening: Callable[[], object],
        on_lost: Callable[[], object],
    ) -> ChangeListener | None:
        """The listener for other servers' changes (server.db.listen); None on SQLite,
        where this process is the only writer."""
        if isinstance(self.url, SqliteUrl):
            return None
        from server.db.listen import ChangeListener

        return ChangeListener(self.url, on_change, on_listening, on_lost)

    def ping_sync(self) -> None:
        """Ask the database a trivial question (worker thread), for the health check.

        Raises:
            DatabaseUnavailable: no connection could be had, or the query failed.
        """
        try:
            with self._pool.connection() as conn:
                conn.execute("SELECT 1").fetchone()
        except self._pool.unavailable_errors as exc:
            raise DatabaseUnavailable(f"database does not answer: {type(exc).__name__}") from exc

    def call(self, fn: Callable[Concatenate[Conn, P], T], *args: P.args, **kw: P.kwargs) -> T:
        """Run `fn(conn, ...)` synchronously with a pooled connection (worker threads only).

        A transaction the engine aborted for a deadlock or a serialization failure (told
        apart by type, `retryable_errors`) rolled back whole, so `fn` is run again, after a
        random pause that grows with each attempt (two servers that collided once should
        not collide again in step), up to `RETRIES` times; only if `fn` committed nothing
        before it failed, since a committed transaction must not be done twice.
        """
        for attempt in range(RETRIES + 1):
            with self._pool.connection() as conn:
                committed = conn.commits
                try:
                    return fn(conn, *args, **kw)
                except self._pool.retryable_errors as exc:
                    if attempt == RETRIES or conn.commits != committed:
                        raise
                    name = getattr(fn, "__name__", "a transaction")
                    log.info("%s: %s; running it again", name, type(exc).__name__)
            time.sleep(random.uniform(0, RETRY_PAUSE_SECONDS * 2**attempt))
        raise AssertionError("unreachable")  # the last attempt returned or raised

    async def run(self, fn: Callable[Concatenate[Conn, P], T], *args: P.args, **kw: P.kwargs) -> T:
        """Run `fn(conn, ...)` in a worker thread; the trio thread never touches SQL."""

        def call() -> T:
            return self.call(fn, *args, **kw)

        return await trio.to_thread.run_sync(call, limiter=self.limiter)

    def close(self) -> None:
        """Close every pooled connection (call when no `run` is in flight)."""
        self._pool.close()
