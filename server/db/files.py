"""The file tree: resolving paths, building FileRecords, listing, mkdir, symlink, setattr.

All functions take a connection and run inside the caller's thread; those that change
anything open exactly one write transaction and journal the change in it. Paths reaching
here are already valid (`blockstore.wire.validate_path`). Only live rows (`deleted_at IS
NULL`) are visible by path; a partial unique index keeps live names unique per directory.
"""

from __future__ import annotations

import time
from typing import Any

from blockstore.ids import BlockId
from blockstore.wire import ROOT_ID, FileRecord, join_path, path_parts, split_path
from server.db import journal, lock_namespace, read_txn, write_txn
from server.db.conn import Conn, Row
from server.db.journal import Actor
from server.errors import BadRequest, Exists, NotFound, ParentMissing

COLUMNS = "id, parent_id, name, kind, mode, mtime_ns, rev, size, content_hash, target, deleted_at"
DEFAULT_DIR_MODE = 0o755
DEFAULT_FILE_MODE = 0o644


def get_row(conn: Conn, ns_id: int, file_id: int) -> Row | None:
    """The row of `file_id` (live or deleted), or None."""
    row: Row | None = conn.execute(
        f"SELECT {COLUMNS} FROM files WHERE ns_id = ? AND id = ?", (ns_id, file_id)
    ).fetchone()
    return row


def child(conn: Conn, ns_id: int, parent_id: int, name: str) -> Row | None:
    """The live entry `name` in directory `parent_id`, or None."""
    row: Row | None = conn.execute(
        f"SELECT {COLUMNS} FROM files WHERE ns_id = ? AND parent_id = ? AND name = ?"
        " AND deleted_at IS NULL",
        (ns_id, parent_id, name),
    ).fetchone()
    return row


def resolve(conn: Conn, ns_id: int, path: str) -> Row | None:
    """The live entry at `path`, or None (also None when a parent is not a directory)."""
    row = get_row(conn, ns_id, ROOT_ID)
    for name in path_parts(path):
        if row is None or row["kind"] != "dir":
            return None
        row = child(conn, ns_id, int(row["id"]), name)
    return row


def need(conn: Conn, ns_id: int, path: str) -> Row:
    """The live entry at `path`; 404 if there is none."""
    row = resolve(conn, ns_id, path)
    if row is None:
        raise NotFound(f"no such file or directory: {path}")
    return row


def need_parent_dir(
    conn: Conn, ns_id: int, path: str, parent_id: int | None = None
) -> tuple[Row, str]:
    """The live parent directory of `path` and the last name; 404 `no_parent` / 400.

    `parent_id`: the folder the caller means. Another folder at that path (the caller's was
    renamed or deleted elsewhere and a new one made there) is `no_parent` too, so the entry
    follows its folder instead of landing in a stranger's."""
    parent_path, name = split_path(path)
    parent = resolve(conn, ns_id, parent_path)
    if parent is None:
        raise ParentMissing(f"parent directory does not exist: {parent_path}")
    if parent_id is not None and int(parent["id"]) != parent_id:
        raise ParentMissing(f"{parent_path} is another folder now (not id {parent_id})")
    if parent["kind"] != "dir":
        raise BadRequest(f"parent is not a directory: {parent_path}")
    return parent, name


def path_of(conn: Conn, ns_id: int, file_id: int) -> str:
    """The path of an entry, walking up its parents."""
    names: list[str] = []
    current: int | None = file_id
    while current is not None and current != ROOT_ID:
        row = conn.execute(
            "SELECT parent_id, name FROM files WHERE ns_id = ? AND id = ?", (ns_id, current)
        ).fetchone()
        if row is None:
            break
        names.append(str(row[1]))
        current = None if row[0] is None else int(row[0])
    return "/" + "/".join(reversed(names))


def block_list(conn: Conn, ns_id: int, file_id: int, rev: int) -> tuple[tuple[BlockId, int], ...]:
    """The ordered block list of one version."""
    rows = conn.execute(
        "SELECT block_id, size FROM version_blocks WHERE ns_id = ? AND file_id = ? AND rev = ?"
        " ORDER BY idx",
        (ns_id, file_id, rev),
    ).fetchall()
    return tuple((BlockId(str(r[0])), int(r[1])) for r in rows)


def record(
    conn: Conn,
    ns_id: int,
    row: Row,
    path: str,
    *,
    with_blocks: bool = True,
    **overrides: Any,
) -> FileRecord:
    """The FileRecord of a row whose path is known."""
    kind = str(row["kind"])
    blocks = None
    if kind == "file" and with_blocks:
        blocks = block_list(conn, ns_id, int(row["id"]), int(row["rev"]))
    values: dict[str, Any] = {
        "id": int(row["id"]),
        "parent_id": None if row["parent_id"] is None else int(row["parent_id"]),
        "name": str(row["name"]),
        "path": path,
        "kind": kind,
        "mode": int(row["mode"]),
        "size": int(row["size"]),
        "mtime_ns": int(row["mtime_ns"]),
        "rev": int(row["rev"]),
        "content_hash": row["content_hash"],
        "blocks": blocks,
        "target": row["target"],
        "deleted": row["deleted_at"] is not None,
    }
    values.update(overrides)
    return FileRecord(**values)


def meta_by_path(conn: Conn, ns_id: int, path: str) -> FileRecord:
    """GET /meta?path=."""
    with read_txn(conn):
        return record(conn, ns_id, need(conn, ns_id, path), path)


def meta_by_id(conn: Conn, ns_id: int, file_id: int) -> FileRecord:
    """GET /meta?id=; deleted entries are 404 like absent ones."""
    with read_txn(conn):
        row = get_row(conn, ns_id, file_id)
        if row is None or row["deleted_at"] is not None:
            raise NotFound(f"no file with id {file_id}")
        return record(conn, ns_id, row, path_of(conn, ns_id, file_id))


def list_dir(
    conn: Conn,
    ns_id: int,
    path: str | None,
    limit: int,
    after: str | None,
    file_id: int | None = None,
) -> tuple[list[FileRecord], str | None]:
    """Children of a directory sorted by name (bytewise), one page after `after`; the
    directory named by `path`, or by `file_id` (wherever it is now: a client whose view of
    the tree is behind still lists the folder it means)."""
    with read_txn(conn):
        if path is None:
            assert file_id is not None
            found = get_row(conn, ns_id, file_id)
            if found is None or found["deleted_at"] is not None:
                raise NotFound(f"no file with id {file_id}")
            row, path = found, path_of(conn, ns_id, file_id)
        else:
            row = need(conn, ns_id, path)
        if row["kind"] != "dir":
            raise BadRequest(f"not a directory: {path}")
        # Bytewise order on both engines: SQLite's BINARY collation, COLLATE "C" (schema).
        sql = (
            f"SELECT {COLUMNS} FROM files WHERE ns_id = ? AND parent_id = ? AND deleted_at IS NULL"
        )
        args: list[Any] = [ns_id, int(row["id"])]
        if after is not None:
            sql += " AND name > ?"
            args.append(after)
        sql += " ORDER BY name LIMIT ?"
        args.append(limit + 1)
        rows = conn.execute(sql, args).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        entries = [
            record(conn, ns_id, r, join_path(path, str(r["name"])), with_blocks=False) for r in rows
        ]
    return entries, (entries[-1].name if more and entries else None)


def new_file_id(conn: Conn, ns_id: int) -> int:
    """Allocate the next file id of a namespace (inside a write transaction)."""
    conn.execute("UPDATE namespaces SET next_file_id = next_file_id + 1 WHERE id = ?", (ns_id,))
    (next_id,) = conn.execute(
        "SELECT next_file_id FROM namespaces WHERE id = ?", (ns_id,)
    ).fetchone()
    return int(next_id) - 1


def insert_entry(
    conn: Conn,
    ns_id: int,
    file_id: int,
    parent_id: int,
    name: str,
    kind: str,
    mode: int,
    mtime_ns: int,
    target: str | None = None,
) -> Row:
    """Insert a live entry and return its row."""
    conn.execute(
        "INSERT INTO files (ns_id, id, parent_id, name, kind, mode, mtime_ns, rev, size, target)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0, ?)",
        (ns_id, file_id, parent_id, name, kind, mode & 0o7777, mtime_ns, target),
    )
    row = get_row(conn, ns_id, file_id)
    assert row is not None
    return row


def _make(
    conn: Conn, actor: Actor, path: str, kind: str, mode: int, target: str | None,
    parent_id: int | None,
) -> FileRecord:  # fmt: skip
    with write_txn(conn):
        lock_namespace(conn, actor.ns_id)
        return _make_in_txn(conn, actor, path, kind, mode, target, parent_id)


def _make_in_txn(
    conn: Conn, actor: Actor, path: str, kind: str, mode: int, target: str | None,
    parent_id: int | None = None,
) -> FileRecord:  # fmt: skip
    """Create and journal one entry inside the caller's write transaction."""
    parent, name = need_parent_dir(conn, actor.ns_id, path, parent_id)
    existing = child(conn, actor.ns_id, int(parent["id"]), name)
    if existing is not None:
        raise Exists(f"already exists: {path}")
    file_id = new_file_id(conn, actor.ns_id)
    row = insert_entry(
        conn, actor.ns_id, file_id, int(parent["id"]), name, kind, mode, time.time_ns(),
        target,
    )  # fmt: skip
    rec = record(conn, actor.ns_id, row, path)
    journal.append(conn, actor, "mkdir" if kind == "dir" else "symlink", rec)
    return rec


def mkdir(
    conn: Conn, actor: Actor, path: str, mode: int, parent_id: int | None = None
) -> FileRecord:
    """POST /mkdir (`parent_id`: see `need_parent_dir`)."""
    return _make(conn, actor, path, "dir", mode, None, parent_id)


def make_parents(conn: Conn, actor: Actor, path: str) -> int:
    """Create the missing folders above `path` (as `mkdir` does, each journaled), in one
    transaction; returns how many were made. 400 if an ancestor is not a folder."""
    parts = path_parts(split_path(path)[0])
    made = 0
    with write_txn(conn):
        lock_namespace(conn, actor.ns_id)
        parent = get_row(conn, actor.ns_id, ROOT_ID)
        for depth, name in enumerate(parts, 1):
            assert parent is not None
            here = "/" + "/".join(parts[:depth])
            row = child(conn, actor.ns_id, int(parent["id"]), name)
            if row is None:
                rec = _make_in_txn(conn, actor, here, "dir", DEFAULT_DIR_MODE, None)
                row = get_row(conn, actor.ns_id, rec.id)
                made += 1
            elif row["kind"] != "dir":
                raise BadRequest(f"parent is not a directory: {here}")
            parent = row
    return made


def symlink(
    conn: Conn, actor: Actor, path: str, target: str, parent_id: int | None = None
) -> FileRecord:
    """POST /symlink (`parent_id`: see `need_parent_dir`)."""
    return _make(conn, actor, path, "symlink", 0o777, target, parent_id)


def setattr_(
    conn: Conn, actor: Actor, path: str, mode: int | None, mtime_ns: int | None
) -> FileRecord:
    """POST /setattr: chmod and/or utimens; journaled, no new revision."""
    with write_txn(conn):
        lock_namespace(conn, actor.ns_id)
        row = need(conn, actor.ns_id, path)
        if mode is not None:
            conn.execute(
                "UPDATE files SET mode = ? WHERE ns_id = ? AND id = ?",
                (mode & 0o7777, actor.ns_id, row["id"]),
            )
        if mtime_ns is not None:
            conn.execute(
                "UPDATE files SET mtime_ns = ? WHERE ns_id = ? AND id = ?",
                (mtime_ns, actor.ns_id, row["id"]),
            )
        new = get_row(conn, actor.ns_id, int(row["id"]))
        assert new is not None
        rec = record(conn, actor.ns_id, new, path)
        journal.append(conn, actor, "setattr", rec)
        return rec
