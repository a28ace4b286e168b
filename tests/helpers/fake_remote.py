"""An in-memory server with the block-level API the uploader uses (unit tests only).

It keeps the rules that matter to the client's resolution code: revisions and `base_rev`
conflicts (with `current`), `no_parent` 404s, `exists` 409s, revision-checked deletes and
rename-overs, history following the path on a rename over a file, and idempotent
`commit_id`s. Every call first awaits `hook(name)`, which a test uses to run local file
operations *while* the uploader waits for the server (the interleavings that lose data).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import trio
import trio.lowlevel

from blockstore.codec import decode_wire
from blockstore.ids import BlockId
from blockstore.wire import FileRecord, blocks_from_json
from syncd import errors


@dataclass
class Entry:
    id: int
    parent: int
    name: str
    kind: str
    mode: int = 0o644
    rev: int = 1
    blocks: tuple[tuple[BlockId, int], ...] = ()
    size: int = 0
    mtime_ns: int = 0
    target: str | None = None
    history: list[tuple[tuple[BlockId, int], ...]] = field(default_factory=list)


class FakeRemote:
    def __init__(self) -> None:
        self.entries: dict[int, Entry] = {1: Entry(1, 1, "", "dir")}
        self.blocks: dict[BlockId, bytes] = {}
        self.commit_ids: dict[str, tuple[int, int]] = {}
        """Commit id -> (file id, revision) of the version it made."""
        self._next = 100
        self.hook: Callable[[str], Awaitable[None]] | None = None
        """Awaited with the method's name at the start of every call."""
        self.calls = 0

    # -- helpers --------------------------------------------------------------------------

    async def _enter(self, name: str) -> None:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        if self.hook is not None:
            await self.hook(name)

    def _children(self, parent: int) -> dict[str, Entry]:
        return {e.name: e for e in self.entries.values() if e.parent == parent and e.id != 1}

    def _path(self, e: Entry) -> str:
        parts: list[str] = []
        while e.id != 1:
            parts.append(e.name)
            e = self.entries[e.parent]
        return "/" + "/".join(reversed(parts))

    def _find(self, path: str) -> Entry | None:
        e = self.entries[1]
        for part in [p for p in path.split("/") if p]:
            nxt = self._children(e.id).get(part)
            if nxt is None:
                return None
            e = nxt
        return e

    def _parent(self, path: str, parent_id: int | None = None) -> tuple[Entry, str]:
        head, _, name = path.rpartition("/")
        parent = self._find(head or "/")
        if parent is None or parent.kind != "dir":
            raise errors.ParentMissing(f"parent directory does not exist: {path}")
        if parent_id is not None and parent.id != parent_id:
            raise errors.ParentMissing(f"{head} is another folder now: {path}")
        return parent, name

    def _record(self, e: Entry) -> FileRecord:
        return FileRecord(
            id=e.id,
            parent_id=e.parent,
            name=e.name,
            path=self._path(e),
            kind=e.kind,  # type: ignore[arg-type]
            mode=e.mode,
            size=e.size,
            mtime_ns=e.mtime_ns,
            rev=e.rev,
            blocks=e.blocks if e.kind == "file" else None,
            target=e.target,
        )

    def _new(self, parent: Entry, name: str, kind: str, **kw: Any) -> Entry:
        self._next += 1
        e = Entry(self._next, parent.id, name, kind, **kw)
        self.entries[e.id] = e
        return e

    def _live(self, e: Entry) -> bool:
        while e.id != 1:
            parent = self.entries.get(e.parent)
            if parent is None:
                return False
            e = parent
        return True

    def tree(self) -> dict[str, bytes | None]:
        """path -> content (None for folders) of everything live."""
        out: dict[str, bytes | None] = {}
        for e in self.entries.values():
            if e.id == 1 or not self._live(e):
                continue
            out[self._path(e)] = (
                b"".join(self.blocks[b] for b, _ in e.blocks) if e.kind == "file" else None
            )
        return out

    def every_content(self) -> set[bytes]:
        """Every file content the server has kept, current or in history."""
        out: set[bytes] = set()
        for e in self.entries.values():
            for blocks in [*e.history, e.blocks]:
                out.add(b"".join(self.blocks[b] for b, _ in blocks))
        return out

    # -- blocks -----------------------------------------------------------------------------

    async def missing_blocks(self, ids: list[BlockId]) -> list[BlockId]:
        await self._enter("missing_blocks")
        return [b for b in ids if b not in self.blocks]

    async def put_block(self, bid: BlockId, frame: bytes) -> None:
        await self._enter("put_block")
        self.blocks[bid] = decode_wire(frame, expected_id=bid)

    async def put_blocks_batch(self, items: Sequence[tuple[BlockId, Sequence[Any]]]) -> None:
        await self._enter("put_blocks_batch")
        for bid, parts in items:
            frame = b"".join(bytes(p) for p in parts) if not isinstance(parts, bytes) else parts
            self.blocks[bid] = decode_wire(frame, expected_id=bid)

    async def get_block(self, bid: BlockId) -> bytes:
        from blockstore.codec import encode_wire

        await trio.lowlevel.checkpoint()
        return encode_wire(self.blocks[bid])

    # -- files ------------------------------------------------------------------------------

    async def commit(
        self,
        path: str,
        base_rev: int | None,
        blocks: Sequence[tuple[BlockId, int]],
        size: int,
        mtime_ns: int,
        mode: int,
        commit_id: str,
        *,
        base_id: int | None = None,
        parent_id: int | None = None,
    ) -> FileRecord:
        await self._enter("commit")
        return self._commit(
            path, base_rev, blocks, size, mtime_ns, mode, commit_id, base_id, parent_id
        )

    def _commit(
        self,
        path: str,
        base_rev: int | None,
        blocks: Sequence[tuple[BlockId, int]],
        size: int,
        mtime_ns: int,
        mode: int,
        commit_id: str,
        base_id: int | None = None,
        parent_id: int | None = None,
    ) -> FileRecord:
        if commit_id in self.commit_ids and self.commit_ids[commit_id][0] in self.entries:
            return self._record(self.entries[self.commit_ids[commit_id][0]])
        for bid, n in blocks:
            if bid not in self.blocks or len(self.blocks[bid]) != n:
                raise errors.BlocksMissing("missing blocks", {"missing": [bid]})
        parent, name = self._parent(path, parent_id)
        e = self._children(parent.id).get(name)
        if e is not None and e.kind != "file":
            raise errors.Conflict(f"not a file: {path}", {"current": self._record(e).to_json()})
        if e is None and base_rev is not None:
            raise errors.Conflict(f"gone: {path}", {"current": None})
        stale = base_rev != e.rev if e is not None else False
        if e is not None and base_rev is not None and base_id is not None and base_id != e.id:
            stale = True  # another file at the path now (as the server: base_id)
        if e is not None and stale:
            raise errors.Conflict(f"moved on: {path}", {"current": self._record(e).to_json()})
        if e is None:
            e = self._new(parent, name, "file", rev=0)
        else:
            e.history.append(e.blocks)
        e.rev += 1
        e.blocks, e.size, e.mtime_ns, e.mode = tuple(blocks), size, mtime_ns, mode
        self.commit_ids[commit_id] = (e.id, e.rev)
        return self._record(e)

    async def commit_batch(
        self, commits: list[dict[str, Any]]
    ) -> list[FileRecord | errors.RemoteError]:
        await self._enter("commit_batch")
        out: list[FileRecord | errors.RemoteError] = []
        for c in commits:
            try:
                out.append(
                    self._commit(
                        c["path"],
                        c["base_rev"],
                        blocks_from_json(c["blocks"]),
                        c["size"],
                        c["mtime_ns"],
                        c["mode"],
                        c["commit_id"],
                        c.get("base_id"),
                        c.get("parent_id"),
                    )
                )
            except errors.RemoteError as exc:
                out.append(exc)
        return out

    async def mkdir(self, path: str, mode: int, *, parent_id: int | None = None) -> FileRecord:
        await self._enter("mkdir")
        parent, name = self._parent(path, parent_id)
        if name in self._children(parent.id):
            raise errors.Exists(f"exists: {path}")
        return self._record(self._new(parent, name, "dir", mode=mode))

    async def symlink(self, path: str, target: str, *, parent_id: int | None = None) -> FileRecord:
        await self._enter("symlink")
        parent, name = self._parent(path, parent_id)
        if name in self._children(parent.id):
            raise errors.Exists(f"exists: {path}")
        return self._record(self._new(parent, name, "symlink", mode=0o777, target=target))

    async def setattr(
        self, path: str, mode: int | None = None, mtime_ns: int | None = None
    ) -> FileRecord:
        await self._enter("setattr")
        e = self._find(path)
        if e is None:
            raise errors.NotFound(path)
        e.mode = e.mode if mode is None else mode
        e.mtime_ns = e.mtime_ns if mtime_ns is None else mtime_ns
        return self._record(e)

    async def meta(self, path: str | None = None, file_id: int | None = None) -> FileRecord:
        await self._enter("meta")
        e = self._find(path) if path is not None else self.entries.get(file_id or 1)
        if e is None or not self._live(e):
            raise errors.NotFound(f"no such entry: {path or file_id}")
        return self._record(e)

    async def list_dir(
        self, path: str, limit: int = 5000, *, file_id: int | None = None
    ) -> list[FileRecord]:
        await self._enter("list_dir")
        e = self.entries.get(file_id) if file_id is not None else self._find(path)
        if e is None or not self._live(e) or e.kind != "dir":
            raise errors.NotFound(f"no such folder: {path}")
        kids = sorted(self._children(e.id).items(), key=lambda kv: kv[0].encode())
        return [replace(self._record(c), blocks=None) for _, c in kids]

    async def made_by_commit(self, commit_id: str) -> FileRecord:
        await self._enter("made_by_commit")
        if commit_id not in self.commit_ids or self.commit_ids[commit_id][0] not in self.entries:
            raise errors.NotFound(f"no version was made by commit {commit_id}")
        file_id, rev = self.commit_ids[commit_id]
        return replace(self._record(self.entries[file_id]), rev=rev)

    async def move(
        self,
        src: str,
        dst: str,
        mode: str,
        *,
        src_rev: int | None = None,
        dst_rev: int | None = None,
        src_id: int | None = None,
        dst_id: int | None = None,
        dst_parent_id: int | None = None,
    ) -> FileRecord:
        await self._enter("move")
        e = self._find(src)
        if e is None or (src_id is not None and e.id != src_id):
            raise errors.NotFound(f"no such entry: {src}")
        if src_rev is not None and e.kind == "file" and e.rev != src_rev:
            raise errors.Conflict("source moved on", {"current": self._record(e).to_json()})
        parent, name = self._parent(dst, dst_parent_id)
        target = self._children(parent.id).get(name)
        if target is e:
            return self._record(e)
        if target is not None:
            if mode == "noreplace":
                raise errors.Exists(f"exists: {dst}")
            stale = dst_rev is not None and target.kind == "file" and target.rev != dst_rev
            if stale or (dst_id is not None and target.id != dst_id):
                raise errors.Conflict(
                    "target moved on", {"current": self._record(target).to_json()}
                )
            if target.kind == "dir" and self._children(target.id):
                raise errors.NotEmpty(f"not empty: {dst}")
            if target.kind == "file" and e.kind == "file" and mode == "replace":
                target.history.append(target.blocks)
                target.rev += 1
                target.blocks, target.size, target.mode = e.blocks, e.size, e.mode
                e.history.append(e.blocks)
                self.entries[target.id] = target
                self._graveyard(e)
                return self._record(target)
            self._graveyard(target)
        e.parent, e.name = parent.id, name
        return self._record(e)

    def _graveyard(self, e: Entry) -> None:
        """Out of the tree; its contents stay findable by `every_content` (the trash)."""
        self.entries[e.id] = replace(e, parent=-1)
        for child in list(self._children(e.id).values()):
            self._graveyard(child)

    async def delete(
        self, path: str, recursive: bool, base_rev: int | None = None, file_id: int | None = None
    ) -> None:
        await self._enter("delete")
        e = self._find(path)
        if e is None or (file_id is not None and e.id != file_id):
            raise errors.NotFound(f"no such entry: {path}")
        if base_rev is not None and e.kind == "file" and e.rev != base_rev:
            raise errors.Conflict("moved on", {"current": self._record(e).to_json()})
        if e.kind == "dir" and self._children(e.id) and not recursive:
            raise errors.NotEmpty(f"not empty: {path}")
        self._graveyard(e)
