"""The SQL of the storage lifecycle's metadata side: keep marks, version thinning, trash
expiry and the usage a user sees (server.lifecycle runs the pass).

Thinning and expiry release block references exactly as a commit's pruning does
(`versions.drop_versions`), so the quota accounting stays the sum over referenced blocks, and
the blocks themselves go only through garbage collection, after its grace period. Each file
(each trash item) is thinned (purged) in its own transaction under its namespace's lock, so
a pass never holds up the users' writes for long, and a commit racing it either lands
before (and is the newest version, never thinned) or after.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from blockstore.wire import RevisionInfo
from server.db import lock_namespace, write_txn
from server.db.conn import Conn
from server.db.files import block_list, need
from server.db.versions import drop_versions, revision_info
from server.errors import BadRequest, NotFound
from server.thinning import ThinningPolicy, Version, to_remove


def set_kept(conn: Conn, ns_id: int, path: str, revision: int, kept: bool) -> RevisionInfo:
    """Mark (or unmark) one version of a file "keep"; 404 if the file has no such version."""
    with write_txn(conn):
        lock_namespace(conn, ns_id)
        row = need(conn, ns_id, path)
        if row["kind"] != "file":
            raise BadRequest(f"not a regular file: {path}")
        cur = conn.execute(
            "UPDATE file_versions SET kept = ? WHERE ns_id = ? AND file_id = ? AND rev = ?",
            (1 if kept else 0, ns_id, int(row["id"]), revision),
        )
        if cur.rowcount == 0:
            raise NotFound(f"{path} has no revision {revision}")
        found = conn.execute(
            "SELECT rev, size, created_at, device, content_hash, kept FROM file_versions"
            " WHERE ns_id = ? AND file_id = ? AND rev = ?",
            (ns_id, int(row["id"]), revision),
        ).fetchone()
    return revision_info(found)


@dataclass(slots=True)
class Released:
    """What one part of a pass took away from the users' retained data."""

    versions: int = 0
    files: int = 0
    """Files thinned, or entries purged from the trash."""
    items: int = 0
    """Trash items expired."""
    bytes: int = 0
    """Referenced bytes released: blocks no retained version uses any more (they are
    collected once their grace period is over)."""


@contextmanager
def _txn(conn: Conn, dry_run: bool) -> Iterator[Conn]:
    """A write transaction that commits, or (dry run) one that is always rolled back: a
    dry run makes each change, counts what it did and keeps none. One short transaction
    per change either way, so a preview never holds the users' writes up for long."""
    if not dry_run:
        with write_txn(conn):
            yield conn
        return
    conn.execute(conn.dialect.begin_write)
    try:
        yield conn
    finally:
        conn.take_changed()
        conn.execute("ROLLBACK")


def _used_total(conn: Conn, user_id: int) -> int:
    return int(conn.execute("SELECT used_bytes FROM users WHERE id = ?", (user_id,)).fetchone()[0])


def files_with_history(conn: Conn) -> list[tuple[int, int, int]]:
    """`(ns_id, owner user id, file_id)` of every file with more than one version."""
    rows = conn.execute(
        "SELECT v.ns_id, n.owner_id, v.file_id FROM file_versions v"
        " JOIN namespaces n ON n.id = v.ns_id"
        " GROUP BY v.ns_id, n.owner_id, v.file_id HAVING COUNT(*) > 1"
    ).fetchall()
    return [(int(r[0]), int(r[1]), int(r[2])) for r in rows]


def thin_file(
    conn: Conn,
    target: tuple[int, int, int],
    now: float,
    policy: ThinningPolicy,
    out: Released,
    *,
    dry_run: bool = False,
    drops: Drops | None = None,
) -> list[int]:
    """Thin one file's versions (`target` as from `files_with_history`) at time `now`; adds
    to `out` and returns the revisions dropped (a dry run keeps them, and counts the block
    references they held in `drops` instead of the bytes: see `released_by`)."""
    ns_id, user_id, file_id = target
    with _txn(conn, dry_run):
        lock_namespace(conn, ns_id)
        rows = conn.execute(
            "SELECT rev, created_at, kept FROM file_versions WHERE ns_id = ? AND file_id = ?",
            (ns_id, file_id),
        ).fetchall()
        versions = [Version(int(r[0]), float(r[1]), bool(r[2])) for r in rows]
        gone = to_remove(versions, now, policy)
        if gone:
            _count_drops(conn, drops, ns_id, user_id, file_id, gone)
            before = _used_total(conn, user_id)
            drop_versions(conn, ns_id, user_id, file_id, gone)
            out.bytes += 0 if dry_run else before - _used_total(conn, user_id)
            out.versions += len(gone)
            out.files += 1
    return gone


def expired_trash(conn: Conn, cutoff: float) -> list[tuple[int, int, int]]:
    """`(ns_id, owner user id, item id)` of trash items deleted before `cutoff`."""
    rows = conn.execute(
        "SELECT f.ns_id, n.owner_id, f.id FROM files f JOIN namespaces n ON n.id = f.ns_id"
        " WHERE f.deleted_at IS NOT NULL AND f.deleted_at < ? AND f.trash_root = f.id"
        " ORDER BY f.deleted_at",
        (cutoff,),
    ).fetchall()
    return [(int(r[0]), int(r[1]), int(r[2])) for r in rows]


def purge_item(
    conn: Conn,
    item: tuple[int, int, int],
    cutoff: float,
    out: Released,
    *,
    dry_run: bool = False,
    drops: Drops | None = None,
) -> bool:
    """Remove one expired trash item (`item` as from `expired_trash`) for good: every entry
    that delete took away, and their versions. Checked again under the lock, so an item
    undeleted meanwhile stays. True if it was (dry run: would be) purged."""
    ns_id, user_id, item_id = item
    with _txn(conn, dry_run):
        lock_namespace(conn, ns_id)
        still = conn.execute(
            "SELECT 1 FROM files WHERE ns_id = ? AND id = ? AND trash_root = id"
            " AND deleted_at IS NOT NULL AND deleted_at < ?",
            (ns_id, item_id, cutoff),
        ).fetchone()
        if still is None:
            return False
        before = _used_total(conn, user_id)
        entries = [int(r[0]) for r in conn.execute(
            "SELECT id FROM files WHERE ns_id = ? AND trash_root = ?", (ns_id, item_id)
        ).fetchall()]  # fmt: skip
        for file_id in entries:
            revs = [int(r[0]) for r in conn.execute(
                "SELECT rev FROM file_versions WHERE ns_id = ? AND file_id = ?", (ns_id, file_id)
            ).fetchall()]  # fmt: skip
            _count_drops(conn, drops, ns_id, user_id, file_id, revs)
            drop_versions(conn, ns_id, user_id, file_id, revs)
            out.versions += len(revs)
        conn.execute("DELETE FROM files WHERE ns_id = ? AND trash_root = ?", (ns_id, item_id))
        out.bytes += 0 if dry_run else before - _used_total(conn, user_id)
        out.files += len(entries)
        out.items += 1
    return True


Drops = Counter[tuple[int, str]]
"""Block references dropped versions held: `(user_id, block_id) -> how many`."""


def _count_drops(
    conn: Conn, drops: Drops | None, ns_id: int, user_id: int, file_id: int, revs: list[int]
) -> None:
    if drops is not None:
        for rev in revs:
            drops.update((user_id, b) for b, _ in block_list(conn, ns_id, file_id, rev))


def released_by(conn: Conn, drops: Drops) -> dict[tuple[int, str], int]:
    """The blocks that dropping these references would release (no other reference left),
    with their sizes: a dry run's figure for the whole pass, where one rolled-back
    transaction per file would miss a block only several thinned files share."""
    released: dict[tuple[int, str], int] = {}
    for (user_id, block_id), n in drops.items():
        row = conn.execute(
            "SELECT refcount, size FROM blocks WHERE user_id = ? AND block_id = ?",
            (user_id, block_id),
        ).fetchone()
        if row is not None and 0 < int(row[0]) <= n:
            released[(user_id, block_id)] = int(row[1])
    return released


@dataclass(frozen=True, slots=True)
class UsageDetail:
    """What a user's retained versions hold: `logical` bytes (every version's size, as if
    nothing were shared), `stored` (the sealed, compressed bytes of the blocks they
    reference, once each), `archived` (the part of the referenced bytes in the archive)."""

    logical: int
    stored: int
    archived: int


def usage_detail(conn: Conn, user_id: int) -> UsageDetail:
    """The figures beside `used_bytes` that `whoami` reports."""
    (logical,) = conn.execute(
        "SELECT COALESCE(SUM(v.size), 0) FROM file_versions v"
        " JOIN namespaces n ON n.id = v.ns_id WHERE n.owner_id = ?",
        (user_id,),
    ).fetchone()
    stored, archived = conn.execute(
        "SELECT COALESCE(SUM(stored_size), 0),"
        " COALESCE(SUM(CASE WHEN tier = 'archive' THEN size ELSE 0 END), 0)"
        " FROM blocks WHERE user_id = ? AND refcount > 0",
        (user_id,),
    ).fetchone()
    return UsageDetail(int(logical), int(stored), int(archived))
