"""The per-namespace journal: append inside a change's transaction, read deltas, trim.

Each namespace has `head_seq`, bumped by one for every change in the same transaction that
makes the change, so the journal never shows a change that did not commit and never misses
one that did; once it has committed, the other API servers hear of it (`server.db.announce`).
Entries store the FileRecord after the change as JSON (what delta returns), and who made it:
the user, the device (name and id) and the client program (the request's `X-Drive-Client`,
or None), so a device's follower can tell its own echoes from changes its own token made
elsewhere (a `drive restore` from the same home's CLI).
`trimmed_seq` is the newest sequence number dropped by trimming: a cursor below it gets
"reset".
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from blockstore.wire import FileRecord
from server.db import read_txn, write_txn
from server.db.conn import Conn


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change: the namespace it lands in, and the user and device to credit."""

    ns_id: int
    user_id: int
    user: str
    device: str
    device_id: int | None = None
    client: str | None = None
    """The request's `X-Drive-Client` id (which program of the device made the change)."""


@dataclass(frozen=True, slots=True)
class Delta:
    """What `delta(cursor)` answers."""

    entries: list[dict[str, Any]]
    cursor: int
    has_more: bool
    reset: bool


def append(
    conn: Conn,
    actor: Actor,
    op: str,
    record: FileRecord,
    old_path: str | None = None,
) -> int:
    """Journal one change (inside the caller's write transaction); returns its seq."""
    conn.execute("UPDATE namespaces SET head_seq = head_seq + 1 WHERE id = ?", (actor.ns_id,))
    (seq,) = conn.execute("SELECT head_seq FROM namespaces WHERE id = ?", (actor.ns_id,)).fetchone()
    conn.execute(
        "INSERT INTO journal (ns_id, seq, op, file_id, record, old_path, device, device_id,"
        " client, user_name, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            actor.ns_id,
            seq,
            op,
            record.id,
            json.dumps(record.to_json(), separators=(",", ":")),
            old_path,
            actor.device,
            actor.device_id,
            actor.client,
            actor.user,
            time.time(),
        ),
    )
    conn.changed(actor.ns_id, int(seq))
    return int(seq)


def head(conn: Conn, ns_id: int) -> int:
    """The namespace's newest sequence number (0 before any change)."""
    row = conn.execute("SELECT head_seq FROM namespaces WHERE id = ?", (ns_id,)).fetchone()
    return 0 if row is None else int(row[0])


def delta(conn: Conn, ns_id: int, cursor: int, limit: int) -> Delta:
    """Changes after `cursor`, oldest first, at most `limit`."""
    with read_txn(conn):
        head_seq, trimmed = conn.execute(
            "SELECT head_seq, trimmed_seq FROM namespaces WHERE id = ?", (ns_id,)
        ).fetchone()
        if cursor < trimmed or cursor > head_seq:
            return Delta([], int(head_seq), False, True)
        rows = conn.execute(
            "SELECT seq, op, record, old_path, device, user_name, created_at, device_id, client"
            " FROM journal WHERE ns_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (ns_id, cursor, limit + 1),
        ).fetchall()
    has_more = len(rows) > limit
    rows = rows[:limit]
    entries = [
        {
            "seq": int(r[0]),
            "op": r[1],
            "file": json.loads(r[2]),
            "old_path": r[3],
            "device": r[4],
            "user": r[5],
            "time": float(r[6]),
            "device_id": None if r[7] is None else int(r[7]),
            "client": None if r[8] is None else str(r[8]),
        }
        for r in rows
    ]
    new_cursor = int(rows[-1][0]) if rows else cursor
    return Delta(entries, new_cursor, has_more, False)


def trim(conn: Conn, keep_entries: int, keep_seconds: float) -> int:
    """Drop entries beyond `keep_entries` per namespace or older than `keep_seconds`.

    Returns:
        The number of entries dropped.
    """
    cutoff = time.time() - keep_seconds
    dropped = 0
    namespaces = conn.execute("SELECT id, head_seq, trimmed_seq FROM namespaces").fetchall()
    for ns_id, head_seq, trimmed in namespaces:
        by_count = int(head_seq) - keep_entries
        row = conn.execute(
            "SELECT MAX(seq) FROM journal WHERE ns_id = ? AND created_at < ?", (ns_id, cutoff)
        ).fetchone()
        by_age = int(row[0]) if row[0] is not None else 0
        upto = max(by_count, by_age)
        if upto <= int(trimmed):
            continue
        with write_txn(conn):
            cur = conn.execute("DELETE FROM journal WHERE ns_id = ? AND seq <= ?", (ns_id, upto))
            conn.execute(
                "UPDATE namespaces SET trimmed_seq = ? WHERE id = ? AND trimmed_seq < ?",
                (upto, ns_id, upto),
            )
            dropped += cur.rowcount
    return dropped
