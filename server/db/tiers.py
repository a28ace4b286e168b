"""The SQL behind the archive tier (server.archive moves the objects).

A block's row says which tier holds it (`tier`: 'hot' or 'archive'). A move first records
its intent (`block_moves`), then copies the object, then flips the row in a transaction that
still finds its intent, then deletes the source copy, then drops the intent. So the object is
in the tier the row names at every moment, and an intent left by a crash says exactly which
copy may be a leftover (server.archive.Tiers.repair).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from server.db import write_txn
from server.db.conn import Conn

HOT = "hot"
ARCHIVE = "archive"

Selector = Callable[[Conn, float, float, int], list[tuple[int, str, int]]]
"""`cold` or `warm`: blocks to move, `(user_id, block_id, stored_size)`."""

_NEWER_VERSION = (
    "EXISTS (SELECT 1 FROM namespaces n JOIN version_blocks vb ON vb.ns_id = n.id"
    " JOIN file_versions fv ON fv.ns_id = vb.ns_id AND fv.file_id = vb.file_id"
    " AND fv.rev = vb.rev WHERE n.owner_id = b.user_id AND vb.block_id = b.block_id"
    " AND fv.created_at >= ?)"
)


def cold(
    conn: Conn, version_cutoff: float, read_cutoff: float, limit: int
) -> list[tuple[int, str, int]]:
    """Hot blocks some version references, all of them made before `version_cutoff`, and
    not read since `read_cutoff`: `(user_id, block_id, stored_size)`."""
    return _blocks(
        conn, "b.refcount > 0 AND b.last_access < ? AND NOT " + _NEWER_VERSION,
        (HOT, read_cutoff, version_cutoff, limit),
    )  # fmt: skip


def warm(
    conn: Conn, version_cutoff: float, read_cutoff: float, limit: int
) -> list[tuple[int, str, int]]:
    """Archived blocks that are hot again: read (or uploaded again) since `read_cutoff`, or
    referenced by a version made since `version_cutoff`."""
    return _blocks(
        conn, "(b.last_access >= ? OR " + _NEWER_VERSION + ")",
        (ARCHIVE, read_cutoff, version_cutoff, limit),
    )  # fmt: skip


def _blocks(conn: Conn, where: str, args: tuple[object, ...]) -> list[tuple[int, str, int]]:
    """Blocks of the tier `args[0]` that match `where`, at most `args[-1]`."""
    rows = conn.execute(
        "SELECT b.user_id, b.block_id, b.stored_size FROM blocks b WHERE b.tier = ? AND "
        + where + " LIMIT ?",
        args,
    ).fetchall()  # fmt: skip
    return [(int(r[0]), str(r[1]), int(r[2])) for r in rows]


def tier_of(conn: Conn, user_id: int, block_id: str) -> str | None:
    """The tier the row names, None when the block is gone."""
    row = conn.execute(
        "SELECT tier FROM blocks WHERE user_id = ? AND block_id = ?", (user_id, block_id)
    ).fetchone()
    return None if row is None else str(row[0])


def begin_move(conn: Conn, user_id: int, block_id: str, to_tier: str, now: float) -> bool:
    """Record the intent to move a block; False when another move of it is recorded."""
    with write_txn(conn):
        cur = conn.execute(
            "INSERT INTO block_moves (user_id, block_id, to_tier, started_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, block_id) DO NOTHING",
            (user_id, block_id, to_tier, now),
        )
        return cur.rowcount > 0


def flip(conn: Conn, user_id: int, block_id: str, from_tier: str, to_tier: str) -> bool:
    """Point the row at `to_tier`, only while this move's intent is still recorded and the
    row still names `from_tier`; True if flipped."""
    with write_txn(conn):
        intent = conn.execute(
            "SELECT 1 FROM block_moves WHERE user_id = ? AND block_id = ? AND to_tier = ?"
            + conn.dialect.for_update,
            (user_id, block_id, to_tier),
        ).fetchone()
        if intent is None:
            return False
        cur = conn.execute(
            "UPDATE blocks SET tier = ? WHERE user_id = ? AND block_id = ? AND tier = ?",
            (to_tier, user_id, block_id, from_tier),
        )
        return cur.rowcount > 0


def end_move(conn: Conn, user_id: int, block_id: str) -> None:
    """Forget a finished (or repaired) move."""
    with write_txn(conn):
        conn.execute(
            "DELETE FROM block_moves WHERE user_id = ? AND block_id = ?", (user_id, block_id)
        )


def stale_moves(conn: Conn, started_before: float) -> list[tuple[int, str, str]]:
    """Intents older than any live move can be: `(user_id, block_id, to_tier)`."""
    rows = conn.execute(
        "SELECT user_id, block_id, to_tier FROM block_moves WHERE started_at < ?",
        (started_before,),
    ).fetchall()
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


def note_reads(conn: Conn, reads: Sequence[tuple[int, str, float]]) -> None:
    """Record when blocks were last read (`(user_id, block_id, time)`), never backwards."""
    with write_txn(conn):
        conn.executemany(
            "UPDATE blocks SET last_access = ? WHERE user_id = ? AND block_id = ?"
            " AND last_access < ?",
            [(t, user_id, bid, t) for user_id, bid, t in reads],
        )
