"""File content changes: commit a version (optimistic concurrency), revisions, restore.

A commit is one transaction: check the base revision, check every block is held, insert the
version and its block list, take references on the blocks, update the file row, prune the
oldest versions beyond the per-file limit (releasing their block references), check the quota
against what that did to the referenced total (server/quota.py; over it, all of this is
rolled back) and journal the change.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from blockstore.ids import BlockId
from blockstore.wire import FileRecord, RevisionInfo
from server.db import accounts, journal, lock_namespace, read_txn, write_txn
from server.db import blocks as block_rows
from server.db.conn import Conn, Row
from server.db.files import (
    DEFAULT_FILE_MODE,
    block_list,
    child,
    get_row,
    insert_entry,
    need,
    need_parent_dir,
    new_file_id,
    path_of,
    record,
)
from server.db.journal import Actor
from server.errors import BadRequest, BlocksMissing, Conflict, Exists, NotFound, TooLarge
from server.quota import check_commit
from server.thinning import cap

EMPTY_HASH = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True, slots=True)
class CommitRequest:
    """One new version of the file at `path` (see POST /api/v1/commit)."""

    path: str
    base_rev: int | None
    blocks: tuple[tuple[BlockId, int], ...]
    size: int
    mtime_ns: int
    mode: int | None
    commit_id: str | None
    content_hash: str | None = None
    overwrite: bool = False
    """Seeds' upload API: without base_rev, replace an existing file's content."""
    reserved_id: int | None = None
    """A file id reserved by an upload session for a file that did not exist yet."""
    op: str | None = None
    """Journal op to use instead of create/update (restore)."""
    base_id: int | None = None
    """The id of the file `base_rev` is a revision of: another file now at `path` (the
    caller's moved or deleted elsewhere, a new one made there) is a conflict, even at the
    same revision number (revisions count per file)."""
    parent_id: int | None = None
    """The folder the caller means (see `files.need_parent_dir`)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits a commit enforces."""

    max_file_bytes: int
    revisions_kept: int


def _content_hash(req: CommitRequest) -> str | None:
    if req.content_hash is not None:
        return req.content_hash
    if not req.blocks:
        return EMPTY_HASH
    if len(req.blocks) == 1:
        return str(req.blocks[0][0])  # one block: its id is the SHA-256 of the whole content
    return None


def made_by_commit(conn: Conn, ns_id: int, commit_id: str) -> FileRecord | None:
    """The version commit `commit_id` made (the file where it is now, at that revision),
    or None if no version kept says it was made by that commit."""
    row = conn.execute(
        "SELECT file_id, rev, size, content_hash, mtime_ns FROM file_versions"
        " WHERE ns_id = ? AND commit_id = ?",
        (ns_id, commit_id),
    ).fetchone()
    if row is None:
        return None
    frow = get_row(conn, ns_id, int(row[0]))
    assert frow is not None
    file_id, rev = int(row[0]), int(row[1])
    return record(
        conn,
        ns_id,
        frow,
        path_of(conn, ns_id, file_id),
        rev=rev,
        size=int(row[2]),
        content_hash=row[3],
        mtime_ns=int(row[4]),
        blocks=block_list(conn, ns_id, file_id, rev),
    )


def meta_by_commit(conn: Conn, ns_id: int, commit_id: str) -> FileRecord:
    """GET /meta?commit_id=: what a commit whose answer a client never got made; 404 if
    it made nothing (it never arrived, or was refused)."""
    with read_txn(conn):
        rec = made_by_commit(conn, ns_id, commit_id)
    if rec is None:
        raise NotFound(f"no version was made by commit {commit_id}")
    return rec


def prune(conn: Conn, actor: Actor, file_id: int, keep: int) -> None:
    """Drop the oldest versions of a file beyond `keep`, releasing their block references.
    The newest version and versions marked "keep" always stay (`server.thinning.cap`)."""
    rows = conn.execute(
        "SELECT rev, kept FROM file_versions WHERE ns_id = ? AND file_id = ? ORDER BY rev DESC",
        (actor.ns_id, file_id),
    ).fetchall()
    if len(rows) <= keep:
        return
    protected = {int(r[0]) for r in rows if r[1]} | {int(rows[0][0])}
    gone = cap([int(r[0]) for r in rows], protected, keep)
    drop_versions(conn, actor.ns_id, actor.user_id, file_id, gone)


def drop_versions(conn: Conn, ns_id: int, user_id: int, file_id: int, revs: list[int]) -> None:
    """Delete versions of a file (inside the caller's write transaction), releasing the
    references their block lists hold (the blocks become garbage once nothing else does)."""
    for rev in revs:
        ids = [b for b, _ in block_list(conn, ns_id, file_id, rev)]
        block_rows.add_refs(conn, user_id, ids, -1)
        conn.execute(
            "DELETE FROM version_blocks WHERE ns_id = ? AND file_id = ? AND rev = ?",
            (ns_id, file_id, rev),
        )
        conn.execute(
            "DELETE FROM file_versions WHERE ns_id = ? AND file_id = ? AND rev = ?",
            (ns_id, file_id, rev),
        )


@dataclass(frozen=True, slots=True)
class Content:
    """What one version holds (the file's mode is kept as is when `mode` is None)."""

    blocks: tuple[tuple[BlockId, int], ...]
    size: int
    content_hash: str | None
    mtime_ns: int
    mode: int | None


def add_version(
    conn: Conn,
    actor: Actor,
    row: Row,
    content: Content,
    commit_id: str | None,
    keep: int,
) -> Row:
    """Make `content` the next revision of the file `row` (inside the caller's write
    transaction): insert the version and its block list, take references on the blocks,
    update the file row and prune beyond `keep` versions. Journaling is the caller's.

    Returns:
        The file's row after the change.
    """
    ns = actor.ns_id
    file_id = int(row["id"])
    rev = int(row["rev"]) + 1
    conn.execute(
        "INSERT INTO file_versions (ns_id, file_id, rev, state, size, content_hash,"
        " mtime_ns, device, created_at, commit_id) VALUES (?, ?, ?, 'done', ?, ?, ?, ?, ?, ?)",
        (ns, file_id, rev, content.size, content.content_hash, content.mtime_ns, actor.device,
         time.time(), commit_id),
    )  # fmt: skip
    conn.executemany(
        "INSERT INTO version_blocks (ns_id, file_id, rev, idx, block_id, size)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(ns, file_id, rev, i, bid, size) for i, (bid, size) in enumerate(content.blocks)],
    )
    block_rows.add_refs(conn, actor.user_id, [b for b, _ in content.blocks], +1)
    mode = int(row["mode"]) if content.mode is None else content.mode & 0o7777
    conn.execute(
        "UPDATE files SET rev = ?, size = ?, content_hash = ?, mtime_ns = ?, mode = ?"
        " WHERE ns_id = ? AND id = ?",
        (rev, content.size, content.content_hash, content.mtime_ns, mode, ns, file_id),
    )
    prune(conn, actor, file_id, keep)
    new = get_row(conn, ns, file_id)
    assert new is not None
    return new


def _check_blocks(conn: Conn, user_id: int, blocks: tuple[tuple[BlockId, int], ...]) -> None:
    """400 unless the account holds every block and each has the size the commit declares:
    a wrong size would make every mount show a size that reading never delivers."""
    ids = [b for b, _ in blocks]
    stored = block_rows.sizes(conn, user_id, ids, lock=True)
    missing = [b for b in dict.fromkeys(ids) if b not in stored]
    if missing:
        raise BlocksMissing(f"{len(missing)} blocks are missing", missing=missing)
    wrong = list(dict.fromkeys(b for b, size in blocks if stored[b] != size))
    if wrong:
        raise BadRequest(f"{len(wrong)} blocks have another size than declared", wrong_size=wrong)


def commit(conn: Conn, actor: Actor, req: CommitRequest, limits: Limits) -> tuple[FileRecord, bool]:
    """Commit a new version; returns the record and whether the file was created.

    Raises:
        Conflict: base revision mismatch (with `current`), BadRequest: missing blocks or a
        wrong size, ParentMissing: no parent, TooLarge, QuotaExceeded, Exists: a directory there.
    """
    ns = actor.ns_id
    if req.size != sum(size for _, size in req.blocks):
        raise BadRequest("size is not the sum of the block sizes")
    if req.size > limits.max_file_bytes:
        raise TooLarge(f"file of {req.size} bytes is over the limit of {limits.max_file_bytes}")
    with write_txn(conn):
        lock_namespace(conn, ns)
        if req.commit_id is not None:
            previous = made_by_commit(conn, ns, req.commit_id)
            if previous is not None:
                return previous, False
        parent, name = need_parent_dir(conn, ns, req.path, req.parent_id)
        row = child(conn, ns, int(parent["id"]), name)
        if row is not None and row["kind"] != "file":
            if req.base_rev is None and not req.overwrite:
                raise Conflict(
                    f"exists: {req.path}", current=record(conn, ns, row, req.path).to_json()
                )
            raise Exists(f"not a regular file: {req.path}")
        if req.base_rev is None:
            if row is not None and not req.overwrite:
                current = record(conn, ns, row, req.path).to_json()
                raise Conflict(f"file exists: {req.path}", current=current)
        elif (
            row is None
            or int(row["rev"]) != req.base_rev
            or (req.base_id is not None and int(row["id"]) != req.base_id)
        ):
            gone_or = None if row is None else record(conn, ns, row, req.path).to_json()
            raise Conflict(f"{req.path} is no longer at revision {req.base_rev}", current=gone_or)
        _check_blocks(conn, actor.user_id, req.blocks)
        before = accounts.usage(conn, actor.user_id)
        created = row is None
        if row is None:
            file_id = req.reserved_id or new_file_id(conn, ns)
            if get_row(conn, ns, file_id) is not None:
                file_id = new_file_id(conn, ns)
            mode = DEFAULT_FILE_MODE if req.mode is None else req.mode
            row = insert_entry(
                conn, ns, file_id, int(parent["id"]), name, "file", mode, req.mtime_ns
            )
        content = Content(req.blocks, req.size, _content_hash(req), req.mtime_ns, req.mode)
        new = add_version(conn, actor, row, content, req.commit_id, limits.revisions_kept)
        check_commit(before.quota, before.used, accounts.usage(conn, actor.user_id).used)
        rec = record(conn, ns, new, req.path)
        op = req.op or ("create" if created else "update")
        journal.append(conn, actor, op, rec)
        return rec, created


def revisions(conn: Conn, ns_id: int, path: str, limit: int) -> list[RevisionInfo]:
    """Kept versions of a file, newest first."""
    with read_txn(conn):
        row = need(conn, ns_id, path)
        if row["kind"] != "file":
            raise BadRequest(f"not a regular file: {path}")
        rows = conn.execute(
            "SELECT rev, size, created_at, device, content_hash, kept FROM file_versions"
            " WHERE ns_id = ? AND file_id = ? AND state = 'done' ORDER BY rev DESC LIMIT ?",
            (ns_id, row["id"], limit),
        ).fetchall()
    return [revision_info(r) for r in rows]


def revision_info(r: Row) -> RevisionInfo:
    """A row of `rev, size, created_at, device, content_hash, kept` as the API shows it."""
    return RevisionInfo(int(r[0]), int(r[1]), float(r[2]), str(r[3]), r[4], bool(r[5]))


def version_of(conn: Conn, ns_id: int, path: str, revision: int | None) -> FileRecord:
    """The record of a file as of `revision` (None: the current one), with its blocks."""
    with read_txn(conn):
        row = need(conn, ns_id, path)
        if row["kind"] != "file":
            raise BadRequest(f"not a regular file: {path}")
        if revision is None or revision == int(row["rev"]):
            return record(conn, ns_id, row, path)
        v = conn.execute(
            "SELECT size, content_hash, mtime_ns FROM file_versions"
            " WHERE ns_id = ? AND file_id = ? AND rev = ?",
            (ns_id, row["id"], revision),
        ).fetchone()
        if v is None:
            raise NotFound(f"{path} has no revision {revision}")
        return record(
            conn, ns_id, row, path, rev=revision, size=int(v[0]), content_hash=v[1],
            mtime_ns=int(v[2]), blocks=block_list(conn, ns_id, int(row["id"]), revision),
        )  # fmt: skip


def restore(conn: Conn, actor: Actor, path: str, revision: int, limits: Limits) -> FileRecord:
    """Make a new revision with the content of an old one."""
    old = version_of(conn, actor.ns_id, path, revision)
    assert old.blocks is not None
    req = CommitRequest(
        path=path, base_rev=None, blocks=old.blocks, size=old.size, mtime_ns=time.time_ns(),
        mode=None, commit_id=None, content_hash=old.content_hash, overwrite=True, op="restore",
    )  # fmt: skip
    rec, _ = commit(conn, actor, req, limits)
    return rec


def mark_pending(conn: Conn, actor: Actor, path: str, reserve: bool, size: int = 0) -> int | None:
    """Journal a `pending` change for `path` (R10): someone is changing this file.

    For an existing file the entry carries its record with state "pending". For a file that
    does not exist yet (only when `reserve`, for uploads) a file id is reserved and the entry
    carries a provisional record (rev 0) with that id; returns the reserved id.
    """
    with write_txn(conn):
        lock_namespace(conn, actor.ns_id)
        parent, name = need_parent_dir(conn, actor.ns_id, path)
        row = child(conn, actor.ns_id, int(parent["id"]), name)
        if row is not None:
            if row["kind"] != "file":
                raise Exists(f"not a regular file: {path}")
            rec = record(conn, actor.ns_id, row, path, state="pending")
            journal.append(conn, actor, "pending", rec)
            return None
        if not reserve:
            raise NotFound(f"no such file: {path}")
        file_id = new_file_id(conn, actor.ns_id)
        rec = FileRecord(
            id=file_id, parent_id=int(parent["id"]), name=name, path=path, kind="file",
            mode=DEFAULT_FILE_MODE, size=size, mtime_ns=time.time_ns(), rev=0, state="pending",
        )  # fmt: skip
        journal.append(conn, actor, "pending", rec)
        return file_id
