"""Changes a program on this device makes to the tree, written to the local state.

Each method writes, in one transaction, everything one system call changes here: the
records, the directory entries, the folders' times and the operation the uploader will
replay. The VFS (`mountfs.vfs`) decides what POSIX allows and which errno a refusal gets,
then calls exactly one of these; it never writes the local state itself (a test keeps it
so), so there is one place where a local change becomes durable, beside the reconciler
(`syncd.changes`) for changes from elsewhere and the uploader for the server's answers.
"""

from __future__ import annotations

import time
from dataclasses import replace

from syncd.queue_ops import Commit, Delete, Mkdir, Move, SetAttr, Symlink
from syncd.state import ROOT_INO, Node, StateDB, Writer

__all__ = ["LocalEdits"]


class LocalEdits:
    """The local changes of one mount, over its `StateDB`."""

    def __init__(self, state: StateDB) -> None:
        self.state = state

    def ensure_root(self) -> None:
        """The root folder's record, in a new home."""
        if self.state.node(ROOT_INO) is not None:
            return
        now = time.time_ns()
        root = Node(
            ino=ROOT_INO, parent=ROOT_INO, name="", kind="dir", mode=0o755,
            mtime_ns=now, ctime_ns=now, server_id=1, rev=1,
        )  # fmt: skip
        with self.state.write() as w:
            w.put_node(root)

    def new_node(self, parent: int, name: str, kind: str, mode: int) -> Node:
        """A record for a new entry (not written yet: `add` writes it)."""
        now = time.time_ns()
        with self.state.write() as w:
            ino = w.next_ino()
        return Node(
            ino=ino, parent=parent, name=name, kind=kind, mode=mode & 0o7777,
            mtime_ns=now, ctime_ns=now, listed=kind == "dir",
        )  # fmt: skip

    def add(self, node: Node, path: str) -> None:
        """Put the new entry `node` in its folder. A folder or symlink is queued for the
        server now; a file when it is closed (`queue_commit`)."""
        with self.state.write() as w:
            w.put_node(node)
            self._touch(w, node.parent, node.ctime_ns)
            w.link(node.parent, node.name, node.ino)
            if node.kind == "dir":
                w.add_op(Mkdir(node.ino, path, node.mode))
            elif node.kind == "symlink":
                w.add_op(Symlink(node.ino, path, node.target or ""))

    def remove(self, node: Node, path: str) -> Node:
        """Take `node` out of its folder (unlink, rmdir) and queue its delete, naming the
        revision this device saw (edits elsewhere beat it). Returns the unlinked record."""
        now = time.time_ns()
        node = replace(self.state.current(node), linked=False, ctime_ns=now)
        with self.state.write() as w:
            w.unlink(node.parent, node.name)
            w.put_node(node)
            self._touch(w, node.parent, now)
            w.add_op(Delete(node.ino, path, base_rev=node.rev if node.kind == "file" else None))
        return node

    def rename(self, src: Node, dst: Node | None, where: tuple[int, str, int, str],
               paths: tuple[str, str], mode: str) -> Node | None:  # fmt: skip
        """Move `src` from (old folder, old name) to (new folder, new name) `where`, over
        `dst` (replaced, or swapped with it when `mode` is "exchange"), and queue the move
        with what this device saw of `dst`. Returns `dst`'s record as written."""
        p_old, old, p_new, new = where
        now = time.time_ns()
        # each record is read as it is now, inside the transaction: after the caller's
        # awaits, and after the puts before it (a folder may be one of the nodes moved)
        with self.state.write() as w:
            w.unlink(p_old, old)
            if mode == "exchange" and dst is not None:
                w.unlink(p_new, new)
                dst = replace(self.state.current(dst), parent=p_old, name=old, ctime_ns=now)
                w.link(p_old, old, dst.ino)
                w.put_node(dst)
            elif dst is not None:
                w.unlink(p_new, new)
                dst = replace(self.state.current(dst), linked=False)
                w.put_node(dst)
            src = replace(self.state.current(src), parent=p_new, name=new, ctime_ns=now)
            w.link(p_new, new, src.ino)
            w.put_node(src)
            for folder in dict.fromkeys((p_old, p_new)):
                self._touch(w, folder, now)
            seen = dst.rev if dst is not None and dst.kind == "file" else None
            w.add_op(Move(src.ino, paths[0], paths[1], mode, seen, dst.ino if dst else None,
                          dst.server_id if dst else None))  # fmt: skip
        return dst

    def set_attrs(self, node: Node, path: str, mode: int | None, mtime_ns: int | None) -> None:
        """Write `node` (its attributes changed) and queue the change of `mode` and `mtime_ns`
        for the server: for a file with unsynced content its commit carries them."""
        with self.state.write() as w:
            w.put_node(node)
            changed = mode is not None or mtime_ns is not None
            if changed and node.linked and (node.kind != "file" or node.dirty is None):
                w.add_op(SetAttr(node.ino, path, mode, mtime_ns))

    def queue_commit(self, node: Node, path: str, busy: set[int]) -> None:
        """Write `node` and queue its content for upload, coalesced with the commit of the
        same file and path at the end of the queue unless the uploader is sending that one
        (sequence numbers in `busy`)."""
        with self.state.write() as w:
            w.put_node(node)
            last = w.last_op()
            same = (
                last is not None
                and last[0] not in busy
                and isinstance(last[1], Commit)
                and last[1].ino == node.ino
                and last[1].path == path
            )
            if not same:
                w.add_op(Commit(node.ino, path))

    def release(self, ino: int, *, keep_record: bool) -> None:
        """An unlinked inode is done with here: its record goes, or (`keep_record`: a queued
        or parked op names it) stays, written clean so that no restart brings it back without
        its bytes."""
        with self.state.write() as w:
            node = self.state.node(ino)
            if keep_record and node is not None:
                w.put_node(node)
            elif not keep_record:
                w.delete_node(ino)

    def _touch(self, w: Writer, folder: int, now: int) -> None:
        """A folder's entries changed: its modification and change times are `now`."""
        node = self.state.node(folder)
        if node is not None:
            w.put_node(replace(node, mtime_ns=now, ctime_ns=now))
