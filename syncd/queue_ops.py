"""The operations of the durable upload queue, as types.

The mount appends one per local change (`StateDB.add_op`), the uploader replays them in
order and may rewrite their paths while it resolves a refusal (a folder that moved, a name
that was taken). Stored as JSON objects tagged by `"op"`; the field names are those the
queue has always used, so a queue written by an older client still loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "Commit",
    "Delete",
    "Mkdir",
    "Move",
    "QueuedOp",
    "SetAttr",
    "Symlink",
    "op_from_json",
    "op_to_json",
]


@dataclass(slots=True)
class Commit:
    """Upload the content of file `ino` to `path` (its name when the change was queued).
    `commit_id` and `digest` are saved before the commit is sent, so a retry after a lost
    reply or a crash sends the same id (the server answers the version it made)."""

    kind: ClassVar[str] = "commit"
    ino: int
    path: str
    commit_id: str | None = None
    digest: str | None = None

    @property
    def where(self) -> str:
        return self.path


@dataclass(slots=True)
class Mkdir:
    kind: ClassVar[str] = "mkdir"
    ino: int
    path: str
    mode: int

    @property
    def where(self) -> str:
        return self.path


@dataclass(slots=True)
class Symlink:
    kind: ClassVar[str] = "symlink"
    ino: int
    path: str
    target: str

    @property
    def where(self) -> str:
        return self.path


@dataclass(slots=True)
class SetAttr:
    kind: ClassVar[str] = "setattr"
    ino: int
    path: str
    mode: int | None = None
    mtime_ns: int | None = None

    @property
    def where(self) -> str:
        return self.path


@dataclass(slots=True)
class Move:
    """Rename `src` to `dst`; `dst_rev` is the revision of the file it replaces (inode
    `dst_ino`, server id `dst_id` if it had one when queued) as this device saw it (edits
    beat deletes: the server refuses a stale one)."""

    kind: ClassVar[str] = "move"
    ino: int
    src: str
    dst: str
    mode: str
    dst_rev: int | None = None
    dst_ino: int | None = None
    dst_id: int | None = None

    @property
    def where(self) -> str:
        return self.src


@dataclass(slots=True)
class Delete:
    """Delete `path`; `base_rev` is the revision this device saw (see `Move.dst_rev`)."""

    kind: ClassVar[str] = "delete"
    ino: int
    path: str
    recursive: bool = False
    base_rev: int | None = None

    @property
    def where(self) -> str:
        return self.path


QueuedOp = Commit | Mkdir | Symlink | SetAttr | Move | Delete


def rebase_path(path: str, old: str, new: str) -> str | None:
    """`path` once folder `old` is called `new`; None if `path` is neither `old` nor below."""
    if path == old:
        return new
    if path.startswith(old.rstrip("/") + "/"):
        return new.rstrip("/") + path[len(old.rstrip("/")) :]
    return None


def follow_folder(op: QueuedOp, old: str, new: str) -> bool:
    """Point the paths of `op` at or below folder `old` at `new` (the folder took another
    name); returns whether one changed."""
    changed = False
    fields = ("src", "dst") if isinstance(op, Move) else ("path",)
    for name in fields:
        moved = rebase_path(getattr(op, name), old, new)
        if moved is not None:
            setattr(op, name, moved)
            changed = True
    return changed


def op_to_json(op: QueuedOp) -> dict[str, Any]:
    if isinstance(op, Move):
        return {"op": op.kind, "ino": op.ino, "from": op.src, "to": op.dst, "mode": op.mode,
                "dst_rev": op.dst_rev, "dst_ino": op.dst_ino, "dst_id": op.dst_id}  # fmt: skip
    body: dict[str, Any] = {"op": op.kind}
    for name in op.__slots__:
        body[name] = getattr(op, name)
    return body


def op_from_json(d: dict[str, Any]) -> QueuedOp:
    """Raises ValueError for an object that is no queued operation."""
    kind = d.get("op")
    try:
        if kind == "commit":
            return Commit(int(d["ino"]), str(d["path"]), d.get("commit_id"), d.get("digest"))
        if kind == "mkdir":
            return Mkdir(int(d["ino"]), str(d["path"]), int(d["mode"]))
        if kind == "symlink":
            return Symlink(int(d["ino"]), str(d["path"]), str(d["target"]))
        if kind == "setattr":
            return SetAttr(int(d["ino"]), str(d["path"]), d.get("mode"), d.get("mtime_ns"))
        if kind == "move":
            return Move(int(d["ino"]), str(d["from"]), str(d["to"]), str(d["mode"]),
                        d.get("dst_rev"), d.get("dst_ino"), d.get("dst_id"))  # fmt: skip
        if kind == "delete":
            return Delete(int(d["ino"]), str(d["path"]), bool(d.get("recursive", False)),
                          d.get("base_rev"))  # fmt: skip
    except (KeyError, TypeError) as exc:
        raise ValueError(f"damaged queued operation {d!r}: {exc}") from None
    raise ValueError(f"unknown queued operation {kind!r}")
