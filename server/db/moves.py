"""Moves, renames, deletes (to the trash) and undeletes: each one atomic transaction.

A directory move changes one row (its parent and name); descendants follow because paths
are derived from parents. Deleting marks the entry and its whole live subtree with the same
`trash_root`, so undelete brings back exactly what that delete removed (entries deleted
earlier on their own stay in the trash as their own items).

Never lose a write: a delete or a rename-over may name the revision the device saw
(`base_rev`, `src_rev`, `dst_rev`); a file that moved on since is refused with 409 `conflict`
so a stale delete cannot remove a newer edit. History follows the path: a file renamed over a
file becomes the next revision of the target (editors' atomic saves keep the history).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from blockstore.wire import ROOT_PATH, FileRecord, is_within
from server.db import journal, read_txn, versions, write_txn
from server.db.files import Row, block_list, child, get_row, need, need_parent_dir, path_of, record
from server.db.journal import Actor
from server.errors import BadRequest, Conflict, Exists, NotEmpty, NotFound, ParentMissing


@dataclass(frozen=True, slots=True)
class TrashItem:
    """One entry of GET /trash."""

    id: int
    path: str
    kind: str
    deleted_at: float


def _has_children(conn: sqlite3.Connection, ns_id: int, dir_id: int) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM files WHERE ns_id = ? AND parent_id = ? AND deleted_at IS NULL LIMIT 1",
            (ns_id, dir_id),
        ).fetchone()
        is not None
    )


def _trash(conn: sqlite3.Connection, ns_id: int, row: Row, path: str) -> None:
    """Mark `row` and its live subtree deleted, as one trash item."""
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
        "UPDATE files SET trash_path = ? WHERE ns_id = ? AND id = ?", (path, ns_id, root_id)
    )


def _set_place(conn: sqlite3.Connection, ns_id: int, file_id: int, parent: int, name: str) -> None:
    conn.execute(
        "UPDATE files SET parent_id = ?, name = ? WHERE ns_id = ? AND id = ?",
        (parent, name, ns_id, file_id),
    )


def _moved_record(conn: sqlite3.Connection, ns_id: int, file_id: int, path: str) -> FileRecord:
    row = get_row(conn, ns_id, file_id)
    assert row is not None
    return record(conn, ns_id, row, path)


def _check_rev(
    conn: sqlite3.Connection, ns_id: int, row: Row, path: str, expected: int | None
) -> None:
    """409 `conflict` (with `current`) if `row` is a file no longer at revision `expected`;
    no check when `expected` is None (older clients) or the entry is not a file."""
    if expected is None or row["kind"] != "file" or int(row["rev"]) == expected:
        return
    current = record(conn, ns_id, row, path).to_json()
    raise Conflict(f"{path} is no longer at revision {expected}", current=current)


def _replace_content(
    conn: sqlite3.Connection, actor: Actor, row: Row, src: str, target: Row, dst: str, keep: int
) -> FileRecord:
    """Rename the file `row` over the file `target`: the source's current content becomes the
    next revision of the target, which keeps its id and history; the source entry and its
    versions are dropped (not trashed: its content lives on as the target's revision)."""
    ns = actor.ns_id
    src_id = int(row["id"])
    content = versions.Content(
        block_list(conn, ns, src_id, int(row["rev"])), int(row["size"]), row["content_hash"],
        int(row["mtime_ns"]), int(row["mode"]),
    )  # fmt: skip
    gone = record(conn, ns, row, src, deleted=True)
    new = versions.add_version(conn, actor, target, content, None, keep)
    versions.prune(conn, actor, src_id, keep=0)
    conn.execute("DELETE FROM files WHERE ns_id = ? AND id = ?", (ns, src_id))
    journal.append(conn, actor, "delete", gone)
    rec = record(conn, ns, new, dst)
    journal.append(conn, actor, "update", rec)
    return rec


def move(
    conn: sqlite3.Connection,
    actor: Actor,
    src: str,
    dst: str,
    mode: str,
    *,
    keep: int,
    src_rev: int | None = None,
    dst_rev: int | None = None,
) -> FileRecord:
    """POST /move with mode noreplace | replace | exchange.

    `keep` is the number of revisions a file keeps (a rename-over adds one to the target);
    `src_rev`/`dst_rev` are the revisions the caller saw of the source and target files.
    """
    ns = actor.ns_id
    if src == ROOT_PATH or dst == ROOT_PATH:
        raise BadRequest("the root directory cannot be moved or replaced")
    with write_txn(conn):
        row = need(conn, ns, src)
        _check_rev(conn, ns, row, src, src_rev)
        if row["kind"] == "dir" and is_within(dst, src) and dst != src:
            raise BadRequest(f"cannot move a directory into itself: {src} -> {dst}")
        parent, name = need_parent_dir(conn, ns, dst)
        target = child(conn, ns, int(parent["id"]), name)
        if target is not None and int(target["id"]) == int(row["id"]):
            return record(conn, ns, row, src)
        if target is not None and mode != "noreplace":
            _check_rev(conn, ns, target, dst, dst_rev)
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
            _trash(conn, ns, target, dst)
            gone = _moved_record(conn, ns, int(target["id"]), dst)
            journal.append(conn, actor, "delete", gone)
            _set_place(conn, ns, int(row["id"]), int(parent["id"]), name)
        else:
            _set_place(conn, ns, int(row["id"]), int(parent["id"]), name)
        rec = _moved_record(conn, ns, int(row["id"]), dst)
        journal.append(conn, actor, "move", rec, old_path=src)
        return rec


def delete(
    conn: sqlite3.Connection,
    actor: Actor,
    path: str,
    recursive: bool,
    base_rev: int | None = None,
) -> FileRecord:
    """POST /delete: move an entry (and its subtree) to the trash; a file no longer at
    `base_rev` (the revision the caller saw) is refused, so an edit beats a stale delete."""
    ns = actor.ns_id
    if path == ROOT_PATH:
        raise BadRequest("the root directory cannot be deleted")
    with write_txn(conn):
        row = need(conn, ns, path)
        _check_rev(conn, ns, row, path, base_rev)
        if row["kind"] == "dir" and not recursive and _has_children(conn, ns, int(row["id"])):
            raise NotEmpty(f"directory not empty: {path}")
        _trash(conn, ns, row, path)
        rec = _moved_record(conn, ns, int(row["id"]), path)
        journal.append(conn, actor, "delete", rec)
        return rec


def trash(conn: sqlite3.Connection, ns_id: int) -> list[TrashItem]:
    """GET /trash: deleted items (each delete is one item), newest first."""
    with read_txn(conn):
        rows = conn.execute(
            "SELECT id, trash_path, kind, deleted_at FROM files WHERE ns_id = ?"
            " AND deleted_at IS NOT NULL AND trash_root = id ORDER BY deleted_at DESC, id DESC",
            (ns_id,),
        ).fetchall()
    return [TrashItem(int(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]


def undelete(conn: sqlite3.Connection, actor: Actor, path: str) -> FileRecord:
    """POST /undelete: bring back the newest trash item deleted from `path`."""
    ns = actor.ns_id
    with write_txn(conn):
        row = conn.execute(
            "SELECT id, parent_id, name FROM files WHERE ns_id = ? AND deleted_at IS NOT NULL"
            " AND trash_root = id AND trash_path = ? ORDER BY deleted_at DESC, id DESC LIMIT 1",
            (ns, path),
        ).fetchone()
        if row is None:
            raise NotFound(f"nothing deleted at {path}")
        file_id = int(row[0])
        parent = get_row(conn, ns, int(row[1]))
        if parent is None or parent["deleted_at"] is not None or parent["kind"] != "dir":
            raise ParentMissing(f"the parent directory of {path} no longer exists")
        if child(conn, ns, int(row[1]), str(row[2])) is not None:
            raise Exists(f"already exists: {path}")
        conn.execute(
            "UPDATE files SET deleted_at = NULL, trash_root = NULL, trash_path = NULL"
            " WHERE ns_id = ? AND trash_root = ?",
            (ns, file_id),
        )
        rec = _moved_record(conn, ns, file_id, path_of(conn, ns, file_id))
        journal.append(conn, actor, "undelete", rec)
        return rec
