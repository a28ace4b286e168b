"""What a commit does when the server says 409 (R14): nothing anyone wrote is ever lost.

- The file moved on (someone else committed first, or created the same name): the server's
  version keeps the name, ours is committed next to it as
  `name (conflicted copy from DEVICE YYYY-MM-DD HHMMSS).ext` (Dropbox's convention), and
  the local tree shows both.
- The file is no longer at that path but is still at the revision we edited (someone
  renamed it): commit to where it is now, so the rename and the edit both apply.
- The file was deleted elsewhere: modify beats delete, our content comes back at its path
  (re-creating missing parent directories).

Concurrency: trio thread; LMDB writes in short `with state.write()` blocks, no await inside.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from blockstore.ids import BlockId
from blockstore.wire import FileRecord, path_parts
from syncd import errors
from syncd.content import ContentStore
from syncd.queue_ops import Commit, Move, follow_folder
from syncd.remote import RemoteClient
from syncd.state import ROOT_INO, Node, StateDB
from syncd.tree import ino_at, node_from_record, path_of

__all__ = ["ConflictResolver", "conflicted_name"]

log = logging.getLogger(__name__)

MAX_CONFLICTS_KEPT = 100


MAX_DEPTH = 2048
"""Parents walked at most to tell whether an inode is inside a folder (paths are at most
4,096 bytes, so no real tree is deeper)."""

MAX_COPY_NAME_TRIES = 20
"""Names tried for one conflicted copy (` (2)`, ` (3)`, ... when the first is taken)."""


def conflicted_name(name: str, device: str, when: float | None = None, n: int = 1) -> str:
    """Dropbox's convention: `a (conflicted copy from DEV 2026-11-22 163000).txt`; the
    `n`th try when that name is taken adds ` (n)`: `a (conflicted copy ... 163000) (2).txt`."""
    stamp = time.strftime("%Y-%m-%d %H%M%S", time.localtime(when))
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    suffix = f" (conflicted copy from {device} {stamp})" + (f" ({n})" if n > 1 else "")
    return f"{stem}{suffix}.{ext}" if ext else f"{stem}{suffix}"


def path_of_parent_name(parent: int, name: str, state: StateDB) -> str | None:
    """The path of entry `name` in folder `parent` (None if `parent` is not reachable)."""
    try:
        folder = path_of(state, parent)
    except KeyError:
        return None
    return f"/{name}" if folder == "/" else f"{folder}/{name}"


def _parent(path: str) -> str:
    head, _, _ = path.rpartition("/")
    return head or "/"


class ConflictResolver:
    """Resolves one 409 of one commit (see the module docstring)."""

    def __init__(
        self,
        state: StateDB,
        content: ContentStore,
        remote: RemoteClient,
        device: str,
        *,
        on_changed: Callable[[int], None] | None = None,
        on_entry: Callable[[int, str, int], None] | None = None,
        relist_folder: Callable[[int], None] | None = None,
    ) -> None:
        self.state = state
        self.content = content
        self.remote = remote
        self.device = device
        self.on_changed = on_changed
        self.on_entry = on_entry
        self.relist_folder = relist_folder or (lambda ino: None)

    async def resolve(
        self,
        node: Node,
        path: str,
        blocks: list[tuple[BlockId, int]],
        size: int,
        commit_id: str,
        exc: errors.Conflict,
        gen: int,
    ) -> FileRecord | None:
        """Handle a 409 for our commit of `node` at `path` (`blocks` are its content at
        dirty generation `gen`).

        Returns:
            The record of our content if it landed as this file (moved or revived: the
            caller finishes the commit as usual), or None if it became a conflicted copy
            (the node now shows the server's version; done here).
        """
        node = self.state.current(node)
        current = exc.current
        cur: FileRecord | None = None
        if current is not None:
            try:
                cur = FileRecord.from_json(current)
            except ValueError:
                cur = None
        mine = node.server_id
        if mine is not None and node.rev is not None and (cur is None or cur.id != mine):
            # the path has no file, or another one: ours was renamed (and maybe edited)
            # elsewhere, and another device may have made a file at its old name; the
            # conflict is with ours, where it is now (else that one would be shown nowhere
            # here once this inode shows the file at the path: convergence seed 1590)
            with contextlib.suppress(errors.NotFound):
                cur = await self.remote.meta(file_id=mine)
            node = self.state.current(node)  # as it is after the request
            if cur is not None and cur.id == mine and cur.rev == node.rev and cur.kind == "file":
                log.info("%s was renamed to %s meanwhile; committing there", path, cur.path)
                try:
                    rec = await self._commit(cur.path, node.rev, node, blocks, size,
                                             commit_id + "-moved")  # fmt: skip
                except errors.Conflict as again:
                    return await self.resolve(node, cur.path, blocks, size, commit_id, again,
                                              gen)  # fmt: skip
                self.relocate(node, rec)
                return rec
        if cur is None:
            return await self._revive(node, path, blocks, size, commit_id, gen)
        await self._save_copy(node, path, cur, blocks, size, commit_id, gen)
        return None

    async def _commit(self, path: str, base_rev: int | None, node: Node,
                      blocks: list[tuple[BlockId, int]], size: int,
                      commit_id: str) -> FileRecord:  # fmt: skip
        node = self.state.current(node)  # its times and mode as they are when sent
        return await self.remote.commit(
            path, base_rev, blocks, size, node.mtime_ns, node.mode, commit_id,
            base_id=node.server_id,
        )  # fmt: skip

    async def _revive(self, node: Node, path: str, blocks: list[tuple[BlockId, int]],
                      size: int, commit_id: str, gen: int) -> FileRecord | None:  # fmt: skip
        """Modify beats delete: bring the file back at `path`."""
        log.warning("%s was deleted elsewhere while edited here; keeping the edited file", path)
        try:
            return await self._commit(path, None, node, blocks, size, commit_id + "-revive")
        except errors.NotFound:
            await self.make_parents(path)
        except errors.Conflict as exc:
            cur = FileRecord.from_json(exc.current) if exc.current else None
            if cur is None:
                raise
            await self._save_copy(node, path, cur, blocks, size, commit_id, gen)
            return None
        return await self._commit(path, None, node, blocks, size, commit_id + "-revive")

    async def make_parents(self, path: str) -> None:
        """Create the missing directories above `path`; a local folder on that path takes
        the id of the server's folder there, unless this device shows that folder elsewhere
        (moved there by another device, the feed not here yet): one server folder is never
        two folders here, or entries of one land in the other and vanish with it."""
        parts = path_parts(_parent(path))
        ino: int | None = ROOT_INO
        sofar = ""
        for part in parts:
            sofar += "/" + part
            try:
                rec = await self.remote.mkdir(sofar, 0o755)
            except errors.Exists:
                rec = await self.remote.meta(path=sofar)
            child = self.state.lookup(ino, part) if ino is not None else None
            node = self.state.node(child) if child is not None else None
            ino = child  # below a folder not shown here, none is shown either
            if node is None or node.server_id == rec.id or self.shown_elsewhere(rec.id, node):
                continue
            with self.state.write() as w:
                w.put_node(replace(self.state.current(node), server_id=rec.id, listed=False))
            # another device made that folder (and maybe put entries in it) while this one
            # showed its own: the change feed could not show them here, not knowing the
            # folder by that id yet (convergence seed 1571)
            self.relist_folder(node.ino)

    def shown_elsewhere(self, server_id: int, node: Node) -> bool:
        """Whether a linked inode other than `node` shows the server's entry `server_id`."""
        ino = self.state.ino_for_server_id(server_id)
        other = self.state.node(ino) if ino is not None and ino != node.ino else None
        return other is not None and other.linked and other.server_id == server_id

    async def _save_copy(self, node: Node, path: str, cur: FileRecord,
                         blocks: list[tuple[BlockId, int]], size: int,
                         commit_id: str, gen: int) -> None:  # fmt: skip
        """Ours becomes a conflicted copy; the name shows the server's version."""
        where = _parent(cur.path) if cur.path != path and cur.kind == "file" else _parent(path)
        _, _, name = path.rpartition("/")
        when = time.time()
        for n in range(1, MAX_COPY_NAME_TRIES + 1):
            cname = conflicted_name(name, self.device, when, n)
            cpath = f"{where.rstrip('/')}/{cname}"
            suffix = "-conflict" if n == 1 else f"-conflict-{n}"
            try:
                rec = await self._commit(cpath, None, node, blocks, size, commit_id + suffix)
                break
            except (errors.Conflict, errors.Exists):
                if n == MAX_COPY_NAME_TRIES:
                    raise  # the uploader retries the whole commit later
                continue  # that copy name is taken (two conflicts in one second): next
        log.warning("conflict: %s changed elsewhere; the local version is saved as %s",
                    path, rec.path)  # fmt: skip
        conflicts = list(self.state.get_meta("conflicts", []))
        conflicts.append({"path": path, "saved_as": rec.path, "time": time.time()})
        with self.state.write() as w:
            w.set_meta("conflicts", conflicts[-MAX_CONFLICTS_KEPT:])
        node = self.state.current(node)  # written again during the requests?
        parent_ino = self._folder_of(rec, self._dir_ino(where, node.parent))
        if node.dirty is not None and not self.content.unchanged_since(node, gen) and node.linked:
            self._become_copy(node, rec, cur, blocks, size, gen, parent_ino)
            return
        with self.state.write() as w:
            if self.state.ino_for_server_id(rec.id) is None:
                copy = node_from_record(w.ino_for_new(rec.id), parent_ino, rec)
                w.put_node(replace(copy, blocks=tuple(blocks)))
                w.link(parent_ino, rec.name, copy.ino)
        node = self.content.finish_clean(node)
        if cur.kind == "file":
            cur = self._newest_known(cur)
            self.unshow_other(cur.id, node.ino)
            blocks_now = None if cur.blocks is None else tuple(cur.blocks)
            node = replace(node, server_id=cur.id, rev=cur.rev, size=cur.size,
                           mtime_ns=cur.mtime_ns, blocks=blocks_now)  # fmt: skip
        else:  # a directory or symlink took the name: the local file goes away
            node = replace(node, linked=False)
        node = replace(node, version=node.version + 1)
        with self.state.write() as w:
            w.put_node(node)  # unlinked: its entry goes, if it still names this inode (a
            # program here may have renamed another file over it while we asked the server)
        if node.linked and cur.kind == "file":
            self.relocate(node, cur)  # show the server's version where the server has it:
            # renamed there, or this inode was moved by the change feed (it kept its edit
            # against a delete) while the name it was committed to got another file
        if self.on_entry is not None:
            self.on_entry(parent_ino, rec.name, rec.id)
        if self.on_changed is not None:
            self.on_changed(node.ino)
            self.on_changed(parent_ino)

    def _newest_known(self, cur: FileRecord) -> FileRecord:
        """`cur` came with a 409 that may have been answered before another commit of ours
        made a newer revision of that file (both in one round: seed 1713); shown as it
        came, the older one would stay here for good (the feed skips our own changes)."""
        ino = self.state.ino_for_server_id(cur.id)
        mine = self.state.node(ino) if ino is not None else None
        if (
            mine is None
            or mine.server_id != cur.id
            or mine.dirty is not None
            or mine.blocks is None
            or mine.rev is None
            or mine.rev <= cur.rev
        ):
            return cur
        return replace(cur, rev=mine.rev, size=mine.size, mtime_ns=mine.mtime_ns,
                       blocks=mine.blocks)  # fmt: skip

    def _become_copy(self, node: Node, rec: FileRecord, cur: FileRecord,
                     blocks: list[tuple[BlockId, int]], size: int, gen: int,
                     parent_ino: int) -> None:  # fmt: skip
        """The file was written again while its conflict was being resolved: the local file
        (with the newer write, and its open handles) becomes the conflicted copy, whose
        next revision that write is; the server's version takes the name as a new inode."""
        old_parent, old_name = node.parent, node.name
        node = self.content.rebase(node, blocks, size, gen)
        node = replace(node, server_id=rec.id, rev=rec.rev)
        holder = self.state.lookup(old_parent, old_name)
        if cur.kind == "file":
            self.unshow_other(cur.id, node.ino)  # "theirs" below shows it
        with self.state.write() as w:
            if holder == node.ino:
                w.unlink(old_parent, old_name)
            node = replace(node, parent=parent_ino, name=rec.name, version=node.version + 1)
            w.put_node(node)
            w.link(parent_ino, rec.name, node.ino)
            theirs_at = self._folder_of(cur, self._dir_ino(_parent(cur.path), -1)), cur.name
            free = self.state.lookup(*theirs_at) in (None, node.ino) and theirs_at[0] >= 0
            if cur.kind == "file" and free:  # where the server has it (renamed there, maybe)
                theirs = node_from_record(w.next_ino(), theirs_at[0], cur)
                w.put_node(theirs)
                w.link(*theirs_at, theirs.ino)
        old_path = path_of_parent_name(old_parent, old_name, self.state)
        self.retarget_ops(node.ino, old_path, rec.path)
        with self.state.write() as w:  # the op being resolved ends with this call
            w.add_op(Commit(node.ino, rec.path))
        log.warning("%s was written again during its conflict; that write goes to %s",
                    old_name, rec.path)  # fmt: skip
        if self.on_entry is not None:
            self.on_entry(old_parent, old_name, node.ino)
            self.on_entry(parent_ino, rec.name, node.ino)
        if self.on_changed is not None:
            self.on_changed(old_parent)
            self.on_changed(parent_ino)

    def retarget_ops(self, ino: int, old_path: str | None, new_path: str) -> bool:
        """Queued commits of `ino` still name `old_path`, where a resolution just moved it
        away from: point them at `new_path`. Returns whether one was found."""
        found = False
        for seq, op in self.state.ops():
            if isinstance(op, Commit) and op.ino == ino and op.path == old_path:
                op.path = new_path
                with self.state.write() as w:
                    w.replace_op(seq, op)
                found = True
        return found

    def retarget_below(self, folder: int, old_path: str, new_path: str) -> None:
        """Folder `folder` took the name `new_path` on the server: queued operations of it
        and of everything below it still name `old_path`, which is another entry there now
        (another device's folder): point them at the new name."""
        for seq, op in self.state.ops():
            if (op.ino == folder or self._below(op.ino, folder)) and follow_folder(
                op, old_path, new_path
            ):
                with self.state.write() as w:
                    w.replace_op(seq, op)

    def _below(self, ino: int, folder: int) -> bool:
        """Whether inode `ino` is inside `folder` here (its record's parents, linked or not)."""
        seen = 0
        node = self.state.node(ino)
        while node is not None and node.ino != ROOT_INO and seen < MAX_DEPTH:
            if node.parent == folder:
                return True
            node = self.state.node(node.parent)
            seen += 1
        return False

    def show(self, rec: FileRecord) -> None:
        """Show the server's entry `rec` here, where its name is free and it is not shown yet
        (the change feed skipped it while a local entry held the name)."""
        parent = self._folder_of(rec, self._dir_ino(_parent(rec.path), -1))
        ino = self.state.ino_for_server_id(rec.id)
        known = self.state.node(ino) if ino is not None else None
        if parent < 0 or (known is not None and known.linked and known.server_id == rec.id):
            return
        if known is not None and known.kind == "dir" and self.state.is_within(parent, known.ino):
            return
        if self.state.lookup(parent, rec.name) is not None:
            return
        with self.state.write() as w:
            if known is not None and not known.linked and known.dirty is None:
                # the inode it had here (a second one would map the same server id)
                node = replace(node_from_record(known.ino, parent, rec), version=known.version + 1)
            else:
                node = node_from_record(w.next_ino(), parent, rec)
            w.put_node(node)
            w.link(parent, rec.name, node.ino)
        if self.on_entry is not None:
            self.on_entry(parent, rec.name, node.ino)
        if self.on_changed is not None:
            self.on_changed(parent)

    def unshow_other(self, server_id: int, keep: int) -> None:
        """Inode `keep` shows the server's file `server_id` now: another inode that still
        shows it elsewhere (a place the change feed could not update while a local entry
        held the name it moved to) goes, so one server file is never two files here."""
        ino = self.state.ino_for_server_id(server_id)
        other = self.state.node(ino) if ino is not None and ino != keep else None
        if other is None or not other.linked or other.server_id != server_id:
            return
        if other.dirty is not None or any(
            op.ino == other.ino and not isinstance(op, Commit) for _, op in self.state.ops()
        ):
            return  # it has local work: its upload resolves it (a commit of a clean file is
            # done: maybe in the round being answered, whose ops are cleared at its end)
        with self.state.write() as w:
            if self.state.lookup(other.parent, other.name) == other.ino:
                w.unlink(other.parent, other.name)
            w.put_node(replace(other, linked=False))
        if self.on_entry is not None:
            self.on_entry(other.parent, other.name, other.ino)
        if self.on_changed is not None:
            self.on_changed(other.parent)

    def relocate(self, node: Node, rec: FileRecord, *, own_moves: int = 0) -> None:
        """Show `node` where the server has it (renamed elsewhere, or by our own move, of
        which `own_moves` are still queued: a later local rename waiting in the queue
        must not be undone)."""
        node = self.state.current(node)
        queued = sum(isinstance(op, Move) and op.ino == node.ino for _, op in self.state.ops())
        if queued > own_moves:
            return
        parent = self._folder_of(rec, self._dir_ino(_parent(rec.path), -1))
        if parent < 0 or (node.parent, node.name) == (parent, rec.name):
            return
        if self.state.lookup(parent, rec.name) not in (None, node.ino):
            return
        if node.kind == "dir" and self.state.is_within(parent, node.ino):
            return  # that folder is inside this one here, for now: the change feed (or a
            # refused move of ours) puts it back first, and this folder's listing then
        old = (node.parent, node.name)
        with self.state.write() as w:
            if self.state.lookup(*old) == node.ino:
                w.unlink(*old)
            w.link(parent, rec.name, node.ino)
            w.put_node(replace(node, parent=parent, name=rec.name))
        if self.on_entry is not None:
            self.on_entry(old[0], old[1], node.ino)
            self.on_entry(parent, rec.name, node.ino)
        if self.on_changed is not None:
            self.on_changed(old[0])
            self.on_changed(parent)

    def _folder_of(self, rec: FileRecord, fallback: int) -> int:
        """The local folder that is `rec`'s folder on the server (by id: this device may
        show it elsewhere, the change feed not having moved it yet; placed by path, the
        entry would stay behind when it does), else `fallback`."""
        ino = self.state.ino_for_server_id(rec.parent_id) if rec.parent_id else None
        folder = self.state.node(ino) if ino is not None else None
        if folder is None or folder.kind != "dir" or folder.server_id != rec.parent_id:
            return fallback
        if not folder.linked and folder.ino != ROOT_INO:
            return fallback
        return folder.ino

    def _dir_ino(self, path: str, fallback: int) -> int:
        ino = ino_at(self.state, path)
        return fallback if ino is None else ino
