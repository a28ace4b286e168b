"""The metadata database handle: SQLite in WAL mode, used from worker threads only.

`Database.run(fn, *args)` runs `fn(conn, *args)` in a worker thread with a pooled
connection, so the trio thread never blocks on SQL. Writers wrap their statements in
`write_txn(conn)` (BEGIN IMMEDIATE ... COMMIT): one change is one transaction, and SQLite's
single writer lock plus a busy timeout serialises writers across threads and processes (the
admin commands run while the server does). Readers see a consistent snapshot via WAL.

Portability: all SQL lives in this package's query modules and uses `?` placeholders and
syntax PostgreSQL also accepts; `write_txn` is the one SQLite-specific spelling of BEGIN.
"""

from __future__ import annotations

import queue
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import trio

from server.db import schema
from server.private import create_private_file, private_dir

P = ParamSpec("P")
T = TypeVar("T")

BUSY_TIMEOUT_MS = 15_000
DB_FILE = "drive.db"


def connect(path: Path) -> sqlite3.Connection:
    """Open one connection with the settings every user of the database relies on."""
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


@contextmanager
def write_txn(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: taken at BEGIN (IMMEDIATE), committed on success."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def read_txn(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A read snapshot spanning several statements."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")


def open_sync(data_dir: Path) -> sqlite3.Connection:
    """Open (creating and migrating if needed) the database for a synchronous caller."""
    private_dir(data_dir)
    create_private_file(data_dir / DB_FILE)  # its -wal and -shm files get its mode
    conn = connect(data_dir / DB_FILE)
    schema.migrate(conn)
    return conn


class Database:
    """A pool of connections used from worker threads under one capacity limiter."""

    def __init__(self, data_dir: Path, threads: int = 8) -> None:
        self.path = data_dir / DB_FILE
        first = open_sync(data_dir)
        self._pool: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._pool.put(first)
        for _ in range(threads - 1):
            self._pool.put(connect(self.path))
        self._all = threads
        self.limiter = trio.CapacityLimiter(threads)

    def call(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kw: P.kwargs
    ) -> T:
        """Run `fn(conn, ...)` synchronously with a pooled connection (worker threads only)."""
        conn = self._pool.get()
        try:
            return fn(conn, *args, **kw)
        finally:
            self._pool.put(conn)

    async def run(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kw: P.kwargs
    ) -> T:
        """Run `fn(conn, ...)` in a worker thread; the trio thread never touches SQLite."""

        def call() -> T:
            return self.call(fn, *args, **kw)

        return await trio.to_thread.run_sync(call, limiter=self.limiter)

    def close(self) -> None:
        """Close every pooled connection (call when no `run` is in flight)."""
        for _ in range(self._all):
            self._pool.get_nowait().close()
