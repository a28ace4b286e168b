"""Block rows: which blocks an account holds, their sizes and reference counts.

A row exists exactly while the block is in the store (the block service keeps the two in
step under a per-key lock). `refcount` counts references from kept versions; a block whose
count dropped to zero records `zero_since`, and is collected only after a grace period, so
a block uploaded for a commit that has not happened yet is never collected under it.

Accounting (server/quota.py): a block's size is in its user's `used_bytes` while its
refcount is above zero and in `staged_bytes` otherwise. Every function here that creates a
row, crosses zero or deletes a row moves the size between the two (or out) in the same
transaction, so `used_bytes` is always the sum over referenced blocks.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from server.db import lock_row, write_txn
from server.db.conn import Conn

_BATCH = 500


def present(conn: Conn, user_id: int, ids: Sequence[str]) -> set[str]:
    """The subset of `ids` this user holds."""
    return set(sizes(conn, user_id, ids))


def sizes(conn: Conn, user_id: int, ids: Sequence[str], *, lock: bool = False) -> dict[str, int]:
    """`block id -> plaintext size as stored` of the blocks among `ids` this user holds
    (a commit is checked against these, never trusted for them). With `lock` (inside a
    write transaction) the rows stay locked until it ends, so garbage collection cannot
    remove a block between this check and the references the caller then takes."""
    suffix = conn.dialect.for_update if lock else ""
    found: dict[str, int] = {}
    unique = list(dict.fromkeys(ids))
    for i in range(0, len(unique), _BATCH):
        batch = unique[i : i + _BATCH]
        marks = ",".join("?" * len(batch))
        rows = conn.execute(
            f"SELECT block_id, size FROM blocks WHERE user_id = ? AND block_id IN ({marks})"
            + suffix,
            (user_id, *batch),
        )
        found.update((str(r[0]), int(r[1])) for r in rows)
    return found


def touch_if_present(conn: Conn, user_id: int, block_id: str) -> bool:
    """If the block is held, restart its grace period (a new upload wants it); True if held."""
    with write_txn(conn):
        cur = conn.execute(
            "UPDATE blocks SET last_access = ?,"
            " zero_since = CASE WHEN refcount = 0 THEN ? ELSE zero_since END"
            " WHERE user_id = ? AND block_id = ?",
            (time.time(), time.time(), user_id, block_id),
        )
        return cur.rowcount > 0


def insert(conn: Conn, user_id: int, block_id: str, size: int, stored_size: int) -> bool:
    """Record a newly stored block (refcount 0, so staged; grace period starting now).

    Returns:
        False if another writer recorded it first.
    """
    now = time.time()
    with write_txn(conn):
        cur = conn.execute(
            "INSERT INTO blocks (user_id, block_id, size, stored_size, refcount, created_at,"
            " last_access, zero_since) VALUES (?, ?, ?, ?, 0, ?, ?, ?)"
            " ON CONFLICT (user_id, block_id) DO NOTHING",
            (user_id, block_id, size, stored_size, now, now, now),
        )
        if cur.rowcount > 0:
            conn.execute(
                "UPDATE users SET staged_bytes = staged_bytes + ? WHERE id = ?", (size, user_id)
            )
            return True
        return False


def add_refs(conn: Conn, user_id: int, ids: Iterable[str], delta: int) -> None:
    """Add `delta` (+1/-1) references per occurrence (inside the caller's transaction), and
    move the size of every block whose count crosses zero between staged and used."""
    counts = Counter(ids)
    now = time.time()
    moved = 0
    for bid, (refcount, size) in _refcounts(conn, user_id, list(counts)).items():
        after = refcount + delta * counts[bid]
        if refcount <= 0 < after:
            moved += size
        elif after <= 0 < refcount:
            moved -= size
    conn.executemany(
        "UPDATE blocks SET refcount = refcount + ?,"
        " zero_since = CASE WHEN refcount + ? <= 0 THEN ? ELSE NULL END"
        " WHERE user_id = ? AND block_id = ?",
        [(delta * n, delta * n, now, user_id, bid) for bid, n in counts.items()],
    )
    if moved:
        conn.execute(
            "UPDATE users SET used_bytes = used_bytes + ?, staged_bytes = staged_bytes - ?"
            " WHERE id = ?",
            (moved, moved, user_id),
        )


def _refcounts(conn: Conn, user_id: int, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """`block id -> (refcount, size)` of the held blocks among `ids` (each id once)."""
    found: dict[str, tuple[int, int]] = {}
    for i in range(0, len(ids), _BATCH):
        batch = ids[i : i + _BATCH]
        marks = ",".join("?" * len(batch))
        rows = conn.execute(
            f"SELECT block_id, refcount, size FROM blocks WHERE user_id = ?"
            f" AND block_id IN ({marks})",
            (user_id, *batch),
        )
        found.update((str(r[0]), (int(r[1]), int(r[2]))) for r in rows)
    return found


def gc_candidates(
    conn: Conn, grace_seconds: float, limit: int, after: tuple[int, str] = (0, "")
) -> list[tuple[int, str, int]]:
    """Unreferenced blocks whose grace period is over, in key order after `after`:
    `(user_id, block_id, stored_size)`."""
    cutoff = time.time() - grace_seconds
    rows = conn.execute(
        "SELECT user_id, block_id, stored_size FROM blocks WHERE refcount <= 0"
        " AND zero_since IS NOT NULL AND zero_since < ?"
        " AND (user_id > ? OR (user_id = ? AND block_id > ?))"
        " ORDER BY user_id, block_id LIMIT ?",
        (cutoff, after[0], after[0], after[1], limit),
    ).fetchall()
    return [(int(r[0]), str(r[1]), int(r[2])) for r in rows]


def forget_if_unused(
    conn: Conn,
    user_id: int,
    block_id: str,
    grace_seconds: float,
    remove: Callable[[], None] = lambda: None,
) -> bool:
    """Delete the row if it is still unreferenced past its grace period, and call `remove`
    (which deletes the object) before that commits; True if deleted. The object goes while
    the row is still locked: a put of the same block by another process waits for the
    transaction (its `touch_if_present` writes the row), then finds neither and stores it
    anew, instead of finding the object about to vanish under its new row."""
    cutoff = time.time() - grace_seconds
    with write_txn(conn):
        lock_row(conn, "users", user_id)  # before the block row, as every writer does
        row = conn.execute(
            "SELECT size FROM blocks WHERE user_id = ? AND block_id = ? AND refcount <= 0"
            " AND zero_since IS NOT NULL AND zero_since < ?" + conn.dialect.for_update,
            (user_id, block_id, cutoff),
        ).fetchone()
        if row is None:
            return False
        conn.execute("DELETE FROM blocks WHERE user_id = ? AND block_id = ?", (user_id, block_id))
        conn.execute(
            "UPDATE users SET staged_bytes = staged_bytes - ? WHERE id = ?", (int(row[0]), user_id)
        )
        remove()
        return True


def has_block(conn: Conn, user_id: int, block_id: str) -> bool:
    """True if the user holds the block."""
    row = conn.execute(
        "SELECT 1 FROM blocks WHERE user_id = ? AND block_id = ?", (user_id, block_id)
    ).fetchone()
    return row is not None
