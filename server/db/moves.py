"""Moves, renames, deletes (to the trash) and undeletes: each one atomic transaction.

A directory move changes one row (its parent and name); descendants follow because paths
are derived from parents. Deleting marks the entry and its whole live subtree with the same
`trash_root`, so undelete brings back exactly what that delete removed (entries deleted
earlier on their own stay in the trash as their own items). Undelete never fails for a
taken name: the item comes back beside the new entry under a "(restored ...)" name. Items
expire after `trash_keep_seconds` (server.db.lifecycle removes them and their versions).

Never lose a write: a delete or a rename-over may name the revision the device saw
(`base_rev`, `src_rev`, `dst_rev`); a file that moved on since is refused with 409 `conflict`
so a stale delete cannot remove a newer edit. History follows the path: a file renamed over a
file becomes the next revisions of the target (editors' atomic saves keep the history).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from blockstore.wire import MAX_NAME_BYTES, ROOT_PATH, FileRecord, is_within
from server.db import journal, lock_namespace, read_txn, versions, write_txn
from server.db.conn import Conn, Row
from server.db.files import child, get_row, need, need_parent_dir, path_of, record
from server.db.journal import Actor
from server.errors import (
    BadRequest,
    Conflict,
    Exists,
    IntoItself,
    NotEmpty,
    NotFound,
    ParentMissing,
)


@dataclass(frozen=True, slots=True)
class TrashItem:
    """One entry of GET /trash."""

    id: int
    path: str
    kind: str
    deleted_at: float
    size: int = 0
    """Bytes of the files in it (their current versions)."""
    device: str | None = None
    """The device that deleted it (None for items deleted before servers recorded it)."""


def _has_children(conn: Conn, ns_id: int, dir_id: int) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM files WHERE ns_id = ? AND parent_id = ? AND deleted_at IS NULL LIMIT 1",
            (ns_id, dir_id),
        ).fetchone()
        is not None
    )


def _trash(conn: Conn, ns_id: int, row: Row, path: str, device: str) -> None:
    """Mark `row` and its live subtree deleted, as one trash item deleted by `device`."""
    now = time.time()
    root_id = int(row["id"])
    conn.execute(
        "WITH RECURSIVE sub(id) AS ("
        " SELECT id FROM files WHERE ns_id = ? AND id = ?"
        " UNION ALL SELECT f.id FROM files f JOIN sub ON f.parent_id = sub.id"
        " WHERE f.ns_id = ? AND f.deleted_at IS NULL)"
        " UPDATE files SET deleted_at = ?, trash_root = ?"
        " WHERE ns_id = ? AND id IN (SELECT id FROM sub)",
        (ns_id, root_id, ns_id, now, root_id, ns_id),
    )
    conn.execute(
        "UPDATE files SET trash_path = ?, deleted_by = ? WHERE ns_id = ? AND id = ?",
        (path, device, ns_id, root_id),
    )


def _set_place(conn: Conn, ns_id: int, file_id: int, parent: int, name: str) -> None:
    conn.execute(
        "UPDATE files SET parent_id = ?, name = ? WHERE ns_id = ? AND id = ?",
        (parent, name, ns_id, file_id),
    )


def _moved_record(conn: Conn, ns_id: int, file_id: int, path: str) -> FileRecord:
    row = get_row(conn, ns_id, file_id)
    assert row is not None
    return record(conn, ns_id, row, path)


def _check_rev(
    conn: Conn,
    ns_id: int,
    row: Row,
    path: str,
    expected: int | None,
    expected_id: int | None = None,
) -> None:
    """409 `conflict` (with `current`) if `row` is a file no longer at revision `expected`,
    or another entry than `expected_id` (the one the caller saw was replaced by another
    device's entry of the same name); no check for what the caller left out (older clients)
    or a revision of an entry that is not a file."""
    other = expected_id is not None and int(row["id"]) != expected_id
    stale = expected is not None and row["kind"] == "file" and int(row["rev"]) != expected
    if not (other or stale):
        return
    current = record(conn, ns_id, row, path).to_json()
    what = "another entry now" if other else f"no longer at revision {expected}"
    raise Conflict(f"{path} is {what}", current=current)


def _need_entry(conn: Conn, ns_id: int, path: str, expected_id: int | None) -> Row:
    """The live entry at `path`; 404 also when it is not the entry `expected_id` the caller
    means (that one was moved or deleted elsewhere, and another took its name)."""
    row = need(conn, ns_id, path)
    if expected_id is not None and int(row["id"]) != expected_id:
        raise NotFound(f"{path} is another entry now (id {int(row['id'])}, not {expected_id})")
    return row


def _replace_content(
    conn: Conn, actor: Actor, row: Row, src: str, target: Row, dst: str, keep: int
) -> FileRecord:
    """Rename the file `row` over the file `target`: the source's revisions, oldest first,
    become the next revisions of the target (with their devices and times), which keeps its
    id and history; the source entry is removed, not trashed. So every version a user saved
    under either name stays restorable under the name the file has now (`keep` applies)."""
    ns = actor.ns_id
    src_id, dst_id = int(row["id"]), int(target["id"])
    gone = record(conn, ns, row, src, deleted=True)
    revs = conn.execute(
        "SELECT rev FROM file_versions WHERE ns_id = ? AND file_id = ? ORDER BY rev",
        (ns, src_id),
    ).fetchall()
    rev = int(target["rev"])
    for (old,) in revs:
        rev += 1
        _move_version(conn, ns, (src_id, int(old)), (dst_id, rev))
    conn.execute(
        "UPDATE files SET rev = ?, size = ?, content_hash = ?, mtime_ns = ?, mode = ?"
        " WHERE ns_id = ? AND id = ?",
        (rev, int(row["size"]), row["content_hash"], int(row["mtime_ns"]), int(row["mode"]),
         ns, dst_id),
    )  # fmt: skip
    versions.prune(conn, actor, dst_id, keep)
    conn.execute("DELETE FROM files WHERE ns_id = ? AND id = ?", (ns, src_id))
    journal.append(conn, actor, "delete", gone)
    new = get_row(conn, ns, dst_id)
    assert new is not None
    rec = record(conn, ns, new, dst)
    journal.append(conn, actor, "update", rec)
    return rec


def _move_version(conn: Conn, ns_id: int, old: tuple[int, int], new: tuple[int, int]) -> None:
    """Re-home one version (its block list and block references with it) from (file, rev)
    `old` to `new`: copy the row, point the block list at the copy, drop the original (the
    foreign keys and the unique commit id allow no other order)."""
    conn.execute(
        "INSERT INTO file_versions (ns_id, file_id, rev, state, size, content_hash, mtime_ns,"
        " device, created_at, commit_id, kept) SELECT ns_id, ?, ?, state, size, content_hash,"
        " mtime_ns, device, created_at, NULL, kept FROM file_versions"
        " WHERE ns_id = ? AND file_id = ? AND rev = ?",
        (*new, ns_id, *old),
    )
    conn.execute(
        "UPDATE version_blocks SET file_id = ?, rev = ?"
        " WHERE ns_id = ? AND file_id = ? AND rev = ?",
        (*new, ns_id, *old),
    )
    commit_id = conn.execute(
        "SELECT commit_id FROM file_versions WHERE ns_id = ? AND file_id = ? AND rev = ?",
        (ns_id, *old),
    ).fetchone()[0]
    conn.execute(
        "DELETE FROM file_versions WHERE ns_id = ? AND file_id = ? AND rev = ?", (ns_id, *old)
    )
    conn.execute(
        "UPDATE file_versions SET commit_id = ? WHERE ns_id = ? AND file_id = ? AND rev = ?",
        (commit_id, ns_id, *new),
    )


def move(
    conn: Conn,
    actor: Actor,
    src: str,
    dst: str,
    mode: str,
    *,
    keep: int,
    src_rev: int | None = None,
    dst_rev: int | None = None,
    src_id: int | None = None,
    dst_id: int | None = None,
    dst_parent_id: int | None = None,
) -> FileRecord:
    """POST /move with mode noreplace | replace | exchange.

    `keep` is the number of revisions a file keeps (a rename-over adds one to the target);
    `src_rev`/`dst_rev` are the revisions the caller saw of the source and target files,
    `src_id`/`dst_id` their ids: a source that is another entry now is 404 (the caller's
    entry is elsewhere or gone), a target that is another entry is 409 `conflict`;
    `dst_parent_id` the destination folder (see `files.need_parent_dir`).
    """
    ns = actor.ns_id
    if src == ROOT_PATH or dst == ROOT_PATH:
        raise BadRequest("the root directory cannot be moved or replaced")
    with write_txn(conn):
        lock_namespace(conn, ns)
        row = _need_entry(conn, ns, src, src_id)
        _check_rev(conn, ns, row, src, src_rev)
        if row["kind"] == "dir" and is_within(dst, src) and dst != src:
            raise IntoItself(f"cannot move a directory into itself: {src} -> {dst}")
        parent, name = need_parent_dir(conn, ns, dst, dst_parent_id)
        target = child(conn, ns, int(parent["id"]), name)
        if target is not None and int(target["id"]) == int(row["id"]):
            return record(conn, ns, row, src)
        if target is not None and mode != "noreplace":
            _check_rev(conn, ns, target, dst, dst_rev, dst_id)
        if mode == "exchange":
            if target is None:
                raise NotFound(f"exchange target does not exist: {dst}")
            if target["kind"] == "dir" and is_within(src, dst):
                raise BadRequest(f"cannot exchange a directory with its descendant: {dst}")
            src_parent, src_name = int(row["parent_id"]), str(row["name"])
            _set_place(conn, ns, int(target["id"]), -int(target["id"]), name)
            _set_place(conn, ns, int(row["id"]), int(parent["id"]), name)
            _set_place(conn, ns, int(target["id"]), src_parent, src_name)
            other = _moved_record(conn, ns, int(target["id"]), src)
            journal.append(conn, actor, "move", other, old_path=dst)
        elif target is not None:
            if mode == "noreplace":
                raise Exists(f"already exists: {dst}")
            if target["kind"] == "dir":
                if row["kind"] != "dir":
                    raise Exists(f"cannot replace a directory with a file: {dst}")
                if _has_children(conn, ns, int(target["id"])):
                    raise NotEmpty(f"directory not empty: {dst}")
            elif row["kind"] == "dir":
                raise Exists(f"cannot replace a file with a directory: {dst}")
            elif row["kind"] == "file" and target["kind"] == "file":
                return _replace_content(conn, actor, row, src, target, dst, keep)
            _trash(conn, ns, target, dst, actor.device)
            gone = _moved_record(conn, ns, int(target["id"]), dst)
            journal.append(conn, actor, "delete", gone)
            _set_place(conn, ns, int(row["id"]), int(parent["id"]), name)
        else:
            _set_place(conn, ns, int(row["id"]), int(parent["id"]), name)
        rec = _moved_record(conn, ns, int(row["id"]), dst)
        journal.append(conn, actor, "move", rec, old_path=src)
        return rec


def delete(
    conn: Conn,
    actor: Actor,
    path: str,
    recursive: bool,
    base_rev: int | None = None,
    file_id: int | None = None,
) -> FileRecord:
    """POST /delete: move an entry (and its subtree) to the trash; a file no longer at
    `base_rev` (the revision the caller saw) is refused, so an edit beats a stale delete;
    an entry that is not `file_id` (another device's entry took the name) is 404."""
    ns = actor.ns_id
    if path == ROOT_PATH:
        raise BadRequest("the root directory cannot be deleted")
    with write_txn(conn):
        lock_namespace(conn, ns)
        row = _need_entry(conn, ns, path, file_id)
        _check_rev(conn, ns, row, path, base_rev)
        if row["kind"] == "dir" and not recursive and _has_children(conn, ns, int(row["id"])):
            raise NotEmpty(f"directory not empty: {path}")
        _trash(conn, ns, row, path, actor.device)
        rec = _moved_record(conn, ns, int(row["id"]), path)
        journal.append(conn, actor, "delete", rec)
        return rec


def trash(conn: Conn, ns_id: int) -> list[TrashItem]:
    """GET /trash: deleted items (each delete is one item), newest first."""
    with read_txn(conn):
        rows = conn.execute(
            "SELECT r.id, r.trash_path, r.kind, r.deleted_at, r.deleted_by,"
            " (SELECT COALESCE(SUM(f.size), 0) FROM files f WHERE f.ns_id = r.ns_id"
            "  AND f.trash_root = r.id AND f.kind = 'file')"
            " FROM files r WHERE r.ns_id = ? AND r.deleted_at IS NOT NULL AND r.trash_root = r.id"
            " ORDER BY r.deleted_at DESC, r.id DESC",
            (ns_id,),
        ).fetchall()
    return [TrashItem(int(r[0]), str(r[1]), str(r[2]), float(r[3]), int(r[5]), r[4]) for r in rows]


def undelete(conn: Conn, actor: Actor, path: str | None, item_id: int | None = None) -> FileRecord:
    """POST /undelete: bring back the trash item `item_id`, else the newest one deleted from
    `path`, with its subtree and history. If its name is taken now, it comes back beside it
    as `NAME (restored YYYY-MM-DD HHMMSS).EXT` (nothing is refused for a name)."""
    ns = actor.ns_id
    with write_txn(conn):
        lock_namespace(conn, ns)
        sql = (
            "SELECT id, parent_id, name, trash_path FROM files WHERE ns_id = ?"
            " AND deleted_at IS NOT NULL AND trash_root = id"
        )
        if item_id is not None:
            row = conn.execute(sql + " AND id = ?", (ns, item_id)).fetchone()
        else:
            row = conn.execute(
                sql + " AND trash_path = ? ORDER BY deleted_at DESC, id DESC LIMIT 1", (ns, path)
            ).fetchone()
        if row is None:
            what = f"trash item {item_id}" if item_id is not None else f"anything at {path}"
            raise NotFound(f"no deleted {what}")
        file_id, old_path = int(row[0]), str(row[3])
        parent = get_row(conn, ns, int(row[1]))
        if parent is None or parent["deleted_at"] is not None or parent["kind"] != "dir":
            raise ParentMissing(f"the parent directory of {old_path} no longer exists")
        name = free_name(conn, ns, int(row[1]), str(row[2]), time.time())
        conn.execute("UPDATE files SET name = ? WHERE ns_id = ? AND id = ?", (name, ns, file_id))
        conn.execute(
            "UPDATE files SET deleted_at = NULL, trash_root = NULL, trash_path = NULL,"
            " deleted_by = NULL WHERE ns_id = ? AND trash_root = ?",
            (ns, file_id),
        )
        rec = _moved_record(conn, ns, file_id, path_of(conn, ns, file_id))
        journal.append(conn, actor, "undelete", rec)
        return rec


def free_name(conn: Conn, ns_id: int, parent_id: int, name: str, now: float) -> str:
    """`name` if no live entry of the directory has it, else `NAME (restored DATE TIME).EXT`
    (with ` 2`, ` 3`, ... inside the parentheses should that be taken too)."""
    if child(conn, ns_id, parent_id, name) is None:
        return name
    stem, dot, ext = name.rpartition(".")
    if not stem:  # no extension, or a dot file
        stem, dot, ext = name, "", ""
    stamp = time.strftime("%Y-%m-%d %H%M%S", time.localtime(now))
    for n in range(1, 10_000):
        extra = "" if n == 1 else f" {n}"
        candidate = f"{stem} (restored {stamp}{extra}){dot}{ext}"
        if len(candidate.encode()) > MAX_NAME_BYTES:
            candidate = f"(restored {stamp}{extra}){dot}{ext}"[-MAX_NAME_BYTES:]
        if child(conn, ns_id, parent_id, candidate) is None:
            return candidate
    raise Exists(f"no free name for {name!r} in its folder")
