"""Resumable upload sessions (the seeds' `uploadType=resumable`): rows that survive restarts.

The bytes themselves live in the part store (server.upload_parts): `DATA/uploads/{id}.part`
on one server, pieces in the block store recorded in `upload_parts` when several share the
database; what is recorded there is the authoritative "how much arrived". A finished
session keeps its result (the FileRecord JSON) until it expires, so a client that lost the
final answer can ask again and get the same record.
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


@dataclass(frozen=True, slots=True)
class Piece:
    """Bytes `start` to `start + size` of a session, stored as the sealed object of `block_id`
    (the SHA-256 of those bytes)."""

    start: int
    size: int
    block_id: str


def add_piece(conn: Conn, session_id: str, piece: Piece) -> bool:
    """Record a stored piece; False (nothing recorded) when the session has one starting
    there already (another request wrote it first) or is finished or gone."""
    with write_txn(conn):
        cur = conn.execute(
            "INSERT INTO upload_parts (session_id, start_at, size, block_id, created_at)"
            " SELECT ?, ?, ?, ?, ? WHERE EXISTS"
            " (SELECT 1 FROM upload_sessions WHERE id = ? AND result IS NULL)"
            " ON CONFLICT DO NOTHING",
            (session_id, piece.start, piece.size, piece.block_id, time.time(), session_id),
        )
        return cur.rowcount == 1


def pieces(conn: Conn, session_id: str) -> list[Piece]:
    """The session's recorded pieces, contiguous from byte 0 (what arrived, in order)."""
    rows = conn.execute(
        "SELECT start_at, size, block_id FROM upload_parts WHERE session_id = ? ORDER BY start_at",
        (session_id,),
    )
    out: list[Piece] = []
    end = 0
    for start, size, bid in rows:
        if int(start) != end:
            break
        out.append(Piece(end, int(size), str(bid)))
        end += int(size)
    return out


def piece_bytes(conn: Conn, session_ids: list[str]) -> int:
    """The bytes recorded for these sessions together."""
    if not session_ids:
        return 0
    marks = ", ".join("?" for _ in session_ids)
    row = conn.execute(
        f"SELECT COALESCE(SUM(size), 0) FROM upload_parts WHERE session_id IN ({marks})",
        tuple(session_ids),
    ).fetchone()
    return int(row[0])


def idle_unfinished(conn: Conn, idle_before: float) -> list[str]:
    """Unfinished sessions whose last piece (or start, without one) is older than
    `idle_before`: abandoned."""
    rows = conn.execute(
        "SELECT s.id FROM upload_sessions s WHERE s.result IS NULL AND COALESCE("
        "(SELECT MAX(p.created_at) FROM upload_parts p WHERE p.session_id = s.id),"
        " s.created_at) < ?",
        (idle_before,),
    )
    return [str(r[0]) for r in rows]


def forget_pieces(conn: Conn, session_id: str) -> None:
    """Drop the piece rows of a finished session (its objects are deleted first)."""
    with write_txn(conn):
        conn.execute("DELETE FROM upload_parts WHERE session_id = ?", (session_id,))
