"""Resumable upload sessions (the seeds' `uploadType=resumable`): rows that survive restarts.

The bytes themselves live in `DATA/uploads/{id}.part`; its length is the authoritative
"how much arrived". A finished session keeps its result (the FileRecord JSON) until it
expires, so a client that lost the final answer can ask again and get the same record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from server.db import lock_row, write_txn
from server.db.conn import Conn
from server.errors import TooManyUploads


@dataclass(frozen=True, slots=True)
class Session:
    """One upload session."""

    id: str
    user_id: int
    ns_id: int
    path: str
    base_rev: int | None
    total_size: int | None
    reserved_id: int | None
    expires_at: float
    result: str | None


def create(
    conn: Conn,
    session_id: str,
    user_id: int,
    ns_id: int,
    path: str,
    base_rev: int | None,
    total_size: int | None,
    reserved_id: int | None,
    device: str,
    lifetime_seconds: float,
    max_open: int,
) -> float:
    """Record a new session unless the user has `max_open` unfinished ones already (429,
    counted in the same transaction, so concurrent starts cannot pass it together);
    returns its expiry time (unix seconds)."""
    now = time.time()
    expires = now + lifetime_seconds
    with write_txn(conn):
        # Concurrent starts of one user wait here, so they cannot pass the count together.
        lock_row(conn, "users", user_id)
        check_open(conn, user_id, max_open)
        conn.execute(
            "INSERT INTO upload_sessions (id, user_id, ns_id, path, base_rev, total_size,"
            " reserved_id, device, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (session_id, user_id, ns_id, path, base_rev, total_size, reserved_id, device, now,
             expires),
        )  # fmt: skip
    return expires


def open_ids(conn: Conn, user_id: int) -> list[str]:
    """The user's unfinished, unexpired sessions (their part files hold bytes that count
    against the quota)."""
    rows = conn.execute(
        "SELECT id FROM upload_sessions WHERE user_id = ? AND result IS NULL AND expires_at > ?",
        (user_id, time.time()),
    )
    return [str(r[0]) for r in rows]


def check_open(conn: Conn, user_id: int, max_open: int) -> None:
    """Refuse (429) when the user already has `max_open` unfinished sessions."""
    if len(open_ids(conn, user_id)) >= max_open:
        raise TooManyUploads(
            f"{max_open} resumable upload sessions are open, the most a user may have: "
            "finish or abandon some (abandoned ones are removed after a day unused)"
        )


def get(conn: Conn, session_id: str, user_id: int) -> Session | None:
    """The caller's unexpired session, or None (someone else's is None too)."""
    row = conn.execute(
        "SELECT id, user_id, ns_id, path, base_rev, total_size, reserved_id, expires_at, result"
        " FROM upload_sessions WHERE id = ? AND user_id = ? AND expires_at > ?",
        (session_id, user_id, time.time()),
    ).fetchone()
    if row is None:
        return None
    return Session(
        str(row[0]), int(row[1]), int(row[2]), str(row[3]),
        None if row[4] is None else int(row[4]), None if row[5] is None else int(row[5]),
        None if row[6] is None else int(row[6]), float(row[7]), row[8],
    )  # fmt: skip


def set_total(conn: Conn, session_id: str, total: int) -> None:
    """Record the total size once a part declares it."""
    with write_txn(conn):
        conn.execute("UPDATE upload_sessions SET total_size = ? WHERE id = ?", (total, session_id))


def set_result(conn: Conn, session_id: str, result: str) -> None:
    """Record the final answer of a finished session."""
    with write_txn(conn):
        conn.execute("UPDATE upload_sessions SET result = ? WHERE id = ?", (result, session_id))


def expire(conn: Conn) -> list[str]:
    """Delete expired sessions; returns their ids (so their files can be removed)."""
    now = time.time()
    with write_txn(conn):
        ids = [
            str(r[0])
            for r in conn.execute("SELECT id FROM upload_sessions WHERE expires_at <= ?", (now,))
        ]
        conn.execute("DELETE FROM upload_sessions WHERE expires_at <= ?", (now,))
    return ids


def live_ids(conn: Conn) -> set[str]:
    """Ids of every session still recorded."""
    return {str(r[0]) for r in conn.execute("SELECT id FROM upload_sessions")}


def unfinished_ids(conn: Conn) -> set[str]:
    """Ids of every session still waiting for bytes (the sweep checks their part files)."""
    return {str(r[0]) for r in conn.execute("SELECT id FROM upload_sessions WHERE result IS NULL")}


def delete(conn: Conn, session_ids: list[str]) -> None:
    """Forget abandoned sessions (their part files go next)."""
    with write_txn(conn):
        conn.executemany("DELETE FROM upload_sessions WHERE id = ?", [(i,) for i in session_ids])
