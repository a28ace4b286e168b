"""The scale-out engine: PostgreSQL through psycopg 3's synchronous API in worker threads
(its async mode does not run under trio), connections from a psycopg-pool pool.

Connections run in autocommit mode and the query modules issue BEGIN/COMMIT themselves, as
on SQLite. Transactions are READ COMMITTED; the writes whose checks must not race take row
locks first (`Dialect.for_update`, `server.db.lock_namespace`), so two API servers on one
database serialise exactly where SQLite's single writer would.
"""

from __future__ import annotations

import functools
import logging
import select
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import RowMaker
from psycopg_pool import ConnectionPool, PoolTimeout

from server.db.conn import POSTGRES, Conn
from server.db.url import DatabaseUnavailable, PostgresUrl

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10


class PgRow(tuple[Any, ...]):
    """A row readable by position and by column name, like sqlite3.Row."""

    __slots__ = ()
    _index: ClassVar[dict[str, int]] = {}

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)


@functools.lru_cache(maxsize=512)
def _row_class(names: tuple[str, ...]) -> type[PgRow]:
    index = {name: i for i, name in enumerate(names)}
    return type("PgRow", (PgRow,), {"__slots__": (), "_index": index})


def pg_row(cursor: psycopg.Cursor[Any]) -> RowMaker[PgRow]:
    """psycopg row factory making `PgRow`s."""
    desc = cursor.description
    names = tuple(c.name for c in desc) if desc else ()
    cls = _row_class(names)

    def make(values: Sequence[Any]) -> PgRow:
        return cls(values)

    return make


def full_conninfo(url: PostgresUrl) -> str:
    """The URL with a connect timeout unless it sets one (an unreachable host fails fast)."""
    if "connect_timeout" in conninfo_to_dict(url.conninfo):
        return url.conninfo
    return make_conninfo(url.conninfo, connect_timeout=CONNECT_TIMEOUT_SECONDS)


def describe(exc: BaseException) -> str:
    """A driver error as one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def connect(url: PostgresUrl) -> Conn:
    """One connection (the admin commands, migrations); `DatabaseUnavailable` if refused."""
    try:
        raw = psycopg.connect(full_conninfo(url), autocommit=True, row_factory=pg_row)
    except psycopg.Error as exc:
        raise DatabaseUnavailable(f"cannot use database {url.shown()}: {describe(exc)}") from None
    return Conn(raw, POSTGRES)


def is_disk_full(exc: BaseException) -> bool:
    """PostgreSQL's disk_full (SQLSTATE 53100), told apart by type."""
    return isinstance(exc, pg_errors.DiskFull)


def announce(conn: Conn, changed: dict[int, int]) -> None:
    """NOTIFY `NS:SEQ` for each changed namespace, right after the change committed.

    After COMMIT rather than inside the transaction: PostgreSQL serialises the commits of
    all transactions that notify under one lock held across their WAL flush, which would cap
    every server's commits together at one disk flush each. The change is already durable,
    so a failure here costs the other servers' waiters only a delay (the next change or
    their timeout wakes them): it is logged, never raised into an acknowledged write.
    """
    try:
        conn.execute(conn.dialect.announce, ([f"{ns}:{seq}" for ns, seq in changed.items()],))
    except psycopg.Error as exc:
        log.warning("could not announce a change to the other servers: %s", describe(exc))


def closed_by_server(raw: psycopg.Connection[Any]) -> bool:
    """True when an idle connection was closed from the server's side (PostgreSQL restarted
    or ended the session). An idle connection has nothing to read unless the server said
    something, so the usual answer costs one poll(2) and no round trip."""
    if raw.closed:
        return True
    waiter = select.poll()
    waiter.register(raw.fileno(), select.POLLIN)
    if not waiter.poll(0):
        return False
    try:
        raw.execute("")  # reads what the server said: a notice passes, a goodbye raises
    except psycopg.Error:
        return True
    return False


class PostgresPool:
    """`size` pooled connections; broken ones are replaced by the pool's workers.

    A connection the server closed while it sat in the pool is never handed out: it is
    dropped (the pool replaces it) and the next one taken, so a restart of PostgreSQL fails
    no request that starts after it (a request running during it still fails).
    """

    unavailable_errors: tuple[type[Exception], ...] = (psycopg.Error, PoolTimeout)
    retryable_errors: tuple[type[Exception], ...] = (
        pg_errors.SerializationFailure,
        pg_errors.DeadlockDetected,
    )

    def __init__(self, url: PostgresUrl, size: int) -> None:
        self._size = size
        self._pool: ConnectionPool[psycopg.Connection[PgRow]] = ConnectionPool(
            full_conninfo(url),
            kwargs={"autocommit": True, "row_factory": pg_row},
            min_size=size,
            max_size=size,
            open=True,
            name="drive-metadata",
        )

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        """A connection for the duration of one call."""
        for _ in range(self._size):
            with self._pool.connection() as raw:
                if closed_by_server(raw):
                    raw.close()  # returned closed: the pool opens a new one in its place
                    continue
                yield Conn(raw, POSTGRES)
                return
        with self._pool.connection() as raw:  # all were closed: wait for a new one
            yield Conn(raw, POSTGRES)

    def close(self) -> None:
        """Close every connection."""
        self._pool.close()
