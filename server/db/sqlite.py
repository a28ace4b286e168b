"""The embedded engine: an SQLite file in WAL mode, a fixed set of connections.

SQLite serialises writers itself (`BEGIN IMMEDIATE` plus a busy timeout), across threads
and processes (the admin commands run while the server does), so no row locks are needed.
"""

from __future__ import annotations

import queue
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from server.db.conn import SQLITE, Conn
from server.private import create_private_file, private_dir

BUSY_TIMEOUT_MS = 15_000


def connect(path: Path) -> Conn:
    """Open one connection with the settings every user of the database relies on; the
    file (and so its -wal and -shm files) is created private."""
    private_dir(path.parent)
    create_private_file(path)
    raw = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    raw.row_factory = sqlite3.Row
    raw.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    raw.execute("PRAGMA journal_mode = WAL")
    raw.execute("PRAGMA synchronous = NORMAL")
    raw.execute("PRAGMA foreign_keys = ON")
    return Conn(raw, SQLITE)


def is_disk_full(exc: BaseException) -> bool:
    """SQLITE_FULL, told apart by its code."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_FULL


class SqlitePool:
    """`size` connections handed out one per worker thread call."""

    unavailable_errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    retryable_errors: tuple[type[Exception], ...] = ()
    """None: SQLite serialises writers, so no transaction is aborted for another's sake."""

    def __init__(self, first: Conn, path: Path, size: int) -> None:
        self._pool: queue.SimpleQueue[Conn] = queue.SimpleQueue()
        self._pool.put(first)
        for _ in range(size - 1):
            self._pool.put(connect(path))
        self._size = size

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        """A connection for the duration of one call."""
        conn = self._pool.get()
        try:
            yield conn
        finally:
            self._pool.put(conn)

    def close(self) -> None:
        """Close every connection (call when none is in use)."""
        for _ in range(self._size):
            self._pool.get_nowait().close()
