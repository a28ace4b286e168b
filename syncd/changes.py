"""The one reconciler: what the server says (the change feed, R11, and folder listings) is
merged into the local tree here, by one set of rules.

Changes are applied one at a time, in journal order, each in its own write transaction; a
listing of one folder in one transaction (`merge_listing`). Rules:
- Changes this mount's uploader made (the change names its client id) are skipped: the
  uploader already put their result here (unless a change from elsewhere, older but applied
  later, undid it); so are changes of the same entry that come before such a change in the
  batch (its result already includes them), and an older change must not take a name that
  such a later change of ours gave an entry. Every other change applies, this device's own
  made elsewhere included (`drive restore`, the API, the web app, with the same token).
- Local work wins where it must: a file with unsynced edits keeps them (its commit then
  resolves the conflict, `syncd.conflicts`), and a node with queued operations is not moved
  or removed under them (the queue has not told the server yet). A remotely deleted file
  with local edits stays (modify beats delete).
- A record older than what we have (a listing may be newer than the feed) changes nothing.
Every visible change is reported through `on_entry(parent, name, ino)` (a name appeared,
went or moved) and `on_inode(ino)` (attributes or content changed), so the mount can
invalidate the kernel's caches; both only enqueue, they never call into the kernel here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from blockstore.wire import Change, FileRecord
from syncd.conflicts import conflicted_name
from syncd.queue_ops import Commit, Move
from syncd.state import ROOT_INO, Node, StateDB, Writer
from syncd.tree import node_from_record

__all__ = ["ChangeApplier"]

log = logging.getLogger(__name__)

MAX_REVIVE_NAMES = 20
"""Conflicted-copy names tried for a file that comes back while its name is taken."""

OnEntry = Callable[[int, str, int], None]
OnInode = Callable[[int], None]


class ChangeApplier:
    """Merges what the server says into the local state (see the module docstring)."""

    def __init__(
        self,
        state: StateDB,
        client_id: str,
        *,
        on_entry: OnEntry | None = None,
        on_inode: OnInode | None = None,
        on_folder: OnInode | None = None,
    ) -> None:
        self.state = state
        self.client_id = client_id
        """This mount's `X-Drive-Client`: changes it made are already reflected here."""
        self.on_entry = on_entry
        self.on_inode = on_inode
        self.on_folder = on_folder
        """Called with a folder that appeared here: its entries may not be in the feed."""
        self.open_for_writing: Callable[[int], bool] = lambda ino: False
        """Set by the mount: a file deleted elsewhere stays while a handle may write to it
        (its writes and close() are acknowledged; the next commit brings it back)."""
        self._pending: set[int] = set()
        self.blocked: set[int] = set()
        """Folders where a server entry was not shown because a local entry held its name
        (its upload resolves that); listed again once the queue is empty (`take_blocked`),
        in case the local entry has left the name since."""
        self._held: set[int] = set()
        """Files deleted elsewhere that stayed only for a handle that may write to them."""
        self._stale: set[int] = set()
        """Files open for writing here whose newer server version was held back."""
        self._removed: set[int] = set()
        """Files this reconciler removed this session (a stale kernel name may still open
        them: see `revive`)."""
        self._entries: list[tuple[int, str, int]] = []
        self._inodes: list[int] = []
        self._replaced: set[int] = set()
        """Files a queued rename replaced here (and nothing else queued for them)."""
        self._own: dict[int, int] = {}
        """Server id -> journal seq of this mount's latest own change of it in the batch."""
        self._seq = 0
        """The journal seq of the change being applied (0 for a listing: it is current)."""

    def queue_sets(self) -> tuple[set[int], set[int]]:
        """`(busy, pending)`: inodes with queued or parked namespace operations (the file a
        queued rename replaced included: the move will tell the server, and until then it
        must not come back over the renamed file), and inodes with any queued or parked
        operation (commits included)."""
        queued = self.state.unsynced_ops()
        busy = {op.ino for op in queued if not isinstance(op, Commit)}
        replaced = {op.dst_ino: op.mode for op in queued
                    if isinstance(op, Move) and op.dst_ino is not None}  # fmt: skip
        self._replaced = {ino for ino, mode in replaced.items() if mode == "replace"} - busy
        return busy | set(replaced), {op.ino for op in queued}

    def apply_all(self, changes: list[Change]) -> int:
        """Apply `changes` in journal order.

        Local work wins where it must: a node with queued namespace operations is not moved
        or removed under them (a queued commit alone does not count: a rename elsewhere still
        applies, and the commit follows the file, see `syncd.conflicts`); a folder deleted
        elsewhere stays while something below it is not synced yet (its upload re-creates the
        folder: edit beats delete), with only those parts left in it. One write transaction
        per change: LMDB reads do not see a pending write transaction, and the next change
        may need what this one made (a file inside a directory created just before).

        Returns:
            How many changes were not this mount's own.
        """
        busy, pending = self.queue_sets()
        self._pending = busy | pending
        own = {ch.file.id: ch.seq for ch in changes  # a presence notice changes nothing
               if ch.client == self.client_id and ch.op != "pending"}  # fmt: skip
        self._own = own
        n = 0
        try:
            for ch in changes:
                if own.get(ch.file.id, -1) > ch.seq:
                    continue  # older than this mount's own later change of that entry, whose
                    # result is here already (it would move the entry back where it was)
                if ch.client == self.client_id and self._reflected(ch, busy):
                    continue  # made by this mount's uploader, which applied its result
                n += ch.client != self.client_id
                self._seq = ch.seq
                try:
                    with self.state.write() as w:
                        self._apply(w, ch, busy)
                except (KeyError, ValueError) as exc:  # a damaged entry must not stop the feed
                    log.warning("change %d (%s %s) not applied: %s", ch.seq, ch.op,
                                ch.file.path, exc)  # fmt: skip
        finally:
            self._own, self._seq = {}, 0
        return n

    def _reflected(self, ch: Change, busy: set[int]) -> bool:
        """Whether this mount's own change `ch` shows here, as the uploader left it. Not
        when an older change from elsewhere, applied after the uploader's answer (it was
        fetched before), took its entry's name, or the entry came back after our delete:
        then it is applied like any other."""
        if ch.op == "pending":
            return True
        ino = self.state.ino_for_server_id(ch.file.id)
        node = self.state.node(ino) if ino is not None else None
        if node is None or node.server_id != ch.file.id or node.ino in busy:
            return True
        if node.dirty is not None:
            return True
        gone = ch.op == "delete" or ch.file.deleted
        return node.linked != gone

    def _ours_later(self, other: Node) -> bool:
        """`other` holds a name through this mount's own change later in this batch: an
        older change from elsewhere must not take that name from it (the entry that had
        the name then has left it since, and a later change says where it went)."""
        sid = other.server_id
        return sid is not None and self._own.get(sid, -1) > self._seq > 0

    def merge_listing(
        self, folder: Node, records: list[FileRecord], known: dict[int, int | None],
        since: int | None = None,
    ) -> None:  # fmt: skip
        """Merge the server's listing of `folder` by the same rules as the change feed.

        `known`: the folder's children (ino -> server id) when the listing was asked for.
        Only those are removed when the listing lacks them: an entry this device uploaded
        while the request was under way is newer than the listing. `folder` may be a record
        read before the request: its inode's record now is the one marked listed.
        `since`: the state's `finished_mark()` when the listing was asked for. An entry one
        of our own ops changed after that may be shown as it was before (a rename undone,
        a second inode at its old name), and the feed skips our own changes: it is left as
        this device has it, which is what the server answered that op.
        """
        busy, pending = self.queue_sets()
        self._pending = busy | pending
        seen: set[int] = set()

        def ours_since(ino: int | None) -> bool:
            return ino is not None and since is not None and self.state.finished_since(ino, since)

        with self.state.write() as w:  # one folder: the names in a listing are distinct
            for rec in records:
                seen.add(rec.id)
                if not ours_since(self.state.ino_for_server_id(rec.id)):
                    self._merge_record(w, folder, rec, busy)
            for _, ino in self.state.children(folder.ino):
                child = self.state.node(ino)
                if child is None or child.server_id is None or child.server_id in seen:
                    continue
                if known.get(ino) == child.server_id and not ours_since(ino):
                    self._remove(w, child, busy)
            w.put_node(replace(self.state.current(folder), listed=True))
        self.announce()

    def announce(self) -> None:
        """Send the collected invalidations (call after the transaction committed)."""
        entries, self._entries = self._entries, []
        inodes, self._inodes = self._inodes, []
        if self.on_entry is not None:
            for parent, name, ino in entries:
                self.on_entry(parent, name, ino)
        if self.on_inode is not None:
            for ino in dict.fromkeys(inodes):
                self.on_inode(ino)

    # -- one change -----------------------------------------------------------------------

    def _apply(self, w: Writer, ch: Change, busy: set[int]) -> None:
        rec = ch.file
        if ch.op == "pending":
            return  # presence only (R10): shown by `drive status`, the tree is unchanged
        ino = self.state.ino_for_server_id(rec.id)
        node = self.state.node(ino) if ino is not None else None
        if node is not None and node.server_id != rec.id:
            node = None  # a stale id: the file was re-created here (modify beats delete)
        if ch.op == "delete" or rec.deleted:
            if node is not None:
                self._remove(w, node, busy)
            return
        parent_ino = self.state.ino_for_server_id(rec.parent_id) if rec.parent_id else None
        parent = self.state.node(parent_ino) if parent_ino is not None else None
        if parent is None or parent.kind != "dir" or not parent.linked:
            if node is not None and node.ino not in busy:
                self._remove(w, node, busy)  # moved somewhere we do not show (yet)
            return
        self._merge_record(w, parent, rec, busy)

    def _merge_record(self, w: Writer, parent: Node, rec: FileRecord, busy: set[int]) -> None:
        """The server has `rec` in folder `parent`: show it there, unless local work wins."""
        ino = self.state.ino_for_server_id(rec.id)
        node = self.state.node(ino) if ino is not None else None
        if node is not None and node.server_id != rec.id:
            node = None  # a stale id: the file was re-created here (modify beats delete)
        if node is None:
            self._insert(w, parent, rec)
        else:
            self._update(w, node, parent, rec, busy)

    def gone(self, ino: int) -> None:
        """The server no longer has file `ino` (a read found it gone, or its delete was
        held back for a handle that has now closed without writing): remove it here by
        the usual rules (kept if it has local changes: their upload brings it back)."""
        self._held.discard(ino)
        node = self.state.node(ino)
        if node is None or not node.linked:
            return
        busy, pending = self.queue_sets()
        self._pending = busy | pending
        with self.state.write() as w:
            self._remove(w, node, busy)
        self.announce()

    def take_blocked(self) -> list[int]:
        """The folders to list again now that the upload queue is empty (see `blocked`)."""
        out, self.blocked = sorted(self.blocked), set()
        return out

    def writers_done(self, ino: int) -> None:
        """The last handle that could write to `ino` closed (called by the mount)."""
        if ino in self._held:
            self.gone(ino)
        if ino in self._stale:
            self._stale.discard(ino)
            node = self.state.node(ino)
            if node is not None and node.linked and node.dirty is None and self.on_folder:
                self.on_folder(node.parent)  # take the update held back for the writer

    def _remove(self, w: Writer, node: Node, busy: set[int]) -> None:
        if node.ino == ROOT_INO or not node.linked:
            return
        if node.dirty is None and node.ino not in busy and self.open_for_writing(node.ino):
            self._held.add(node.ino)  # removed when the handle closes unwritten
        if node.dirty is not None or node.ino in busy or self.open_for_writing(node.ino):
            log.info("%s was deleted elsewhere but has local changes; keeping it", node.name)
            return
        if self._holds_pending(node):
            log.info("%s was deleted elsewhere but holds local changes; keeping those",
                     node.name)  # fmt: skip
            self._prune(w, node)
            return
        if self.state.lookup(node.parent, node.name) == node.ino:
            w.unlink(node.parent, node.name)
        w.put_node(replace(node, linked=False))
        self._removed.add(node.ino)
        self._entries.append((node.parent, node.name, node.ino))
        self._inodes.append(node.parent)

    def revive(self, ino: int, *, device: str | None = None) -> bool:
        """A program opens for writing a file this reconciler removed (deleted elsewhere)
        through a name the kernel still had cached: edits beat deletes, so it comes back
        where it was (if that name is free), and its commit brings it back on the server.

        With `device` (a write to the unlinked file is being committed, and nothing else
        would keep it), it comes back whatever removed it: under a conflicted-copy name if
        its name is taken, at the top of the drive if its folder is gone.
        Returns whether it is shown again."""
        node = self.state.node(ino)
        if node is None or node.linked or (device is None and ino not in self._removed):
            return False
        parent = self.state.node(node.parent)
        folder = node.parent
        if parent is None or parent.kind != "dir" or not (parent.linked or folder == ROOT_INO):
            if device is None:
                return False
            folder = ROOT_INO
        name = node.name
        for n in range(1, MAX_REVIVE_NAMES + 1):
            if self.state.lookup(folder, name) is None:
                break
            if device is None or n == MAX_REVIVE_NAMES:
                return False
            name = conflicted_name(node.name, device, n=n)
        if (folder, name) == (node.parent, node.name):
            log.info("%s was deleted elsewhere and is written here again; keeping it", name)
        else:
            log.warning("%s was taken out of this device's tree while written here; keeping "
                        "it as %s", node.name, name)  # fmt: skip
        self._removed.discard(ino)
        with self.state.write() as w:
            w.link(folder, name, node.ino)
            w.put_node(replace(node, parent=folder, name=name, linked=True))
        self._entries.append((folder, name, node.ino))
        self._inodes.append(folder)
        self.announce()
        return True

    def _prune(self, w: Writer, folder: Node) -> None:
        """Remove what is clean below `folder` (deleted elsewhere), keep what is pending.
        The folder is marked unlisted: if it comes back into view (it had been moved where
        this device shows nothing), it is listed again, or the entries removed here would
        be on the server and every other device, never here (convergence seed 1728)."""
        w.put_node(replace(self.state.current(folder), listed=False))
        for name, ino in self.state.children(folder.ino):
            child = self.state.node(ino)
            if child is None or not child.linked:
                continue
            if child.dirty is not None or ino in self._pending:
                continue
            if self._holds_pending(child):
                self._prune(w, child)
                continue
            w.unlink(folder.ino, name)
            w.put_node(replace(child, linked=False))
            self._entries.append((folder.ino, name, ino))
        self._inodes.append(folder.ino)

    def _holds_name(self, node: Node) -> bool:
        """Whether local work keeps `node` under its name against an entry from the server:
        not uploaded yet, unsynced content, queued operations, or (a folder) any of these
        below it (pushed out of the tree, that work would have no path to go to)."""
        return (node.server_id is None or node.dirty is not None or node.ino in self._pending
                or self._holds_pending(node))  # fmt: skip

    def _holds_pending(self, node: Node) -> bool:
        """Whether anything below folder `node` has unsynced content or queued operations
        (walks the local subtree: only done when a folder is deleted elsewhere)."""
        if node.kind != "dir":
            return False
        for _, ino in self.state.children(node.ino):
            child = self.state.node(ino)
            if child is None or not child.linked:
                continue
            if child.dirty is not None or ino in self._pending or self._holds_pending(child):
                return True
        return False

    def _insert(self, w: Writer, parent: Node, rec: FileRecord) -> None:
        existing = self.state.lookup(parent.ino, rec.name)
        if existing is not None:
            other = self.state.node(existing)
            if other is not None and self._holds_name(other):
                self.blocked.add(parent.ino)
                return  # a local entry of that name waits for upload: its upload resolves it
            if other is not None and self._ours_later(other):
                return
            if other is not None:
                w.put_node(replace(other, linked=False))
                self._inodes.append(other.ino)
        if rec.kind == "file" and rec.state == "pending" and rec.rev == 0:
            return  # a provisional record of an upload in progress: the commit will follow
        node = node_from_record(w.ino_for_new(rec.id), parent.ino, rec)
        w.put_node(node)
        w.link(parent.ino, rec.name, node.ino)
        if node.kind == "dir" and self.on_folder is not None:
            self.on_folder(node.ino)
        self._entries.append((parent.ino, rec.name, node.ino))
        self._inodes.append(parent.ino)

    def _update(self, w: Writer, node: Node, parent: Node, rec: FileRecord, busy: set[int]) -> None:
        changed = False
        where = (node.parent, node.name)
        movable = node.ino not in busy or node.ino in self._replaced  # a replaced file
        # moved elsewhere is shown there; the check below keeps it off the renamed file
        if movable and (where != (parent.ino, rec.name) or not node.linked):
            if node.kind == "dir" and self.state.is_within(parent.ino, node.ino):
                self.blocked.add(parent.ino)  # that folder is inside this one here (a move
                return  # of ours waits to be refused): listed again once the queue is empty
            target = self.state.lookup(parent.ino, rec.name)
            other = self.state.node(target) if target is not None and target != node.ino else None
            if other is not None and self._holds_name(other):
                self.blocked.add(parent.ino)
                return  # a local entry holds that name; its upload sorts it out
            if other is not None and self._ours_later(other):
                return
            if other is not None:
                w.put_node(replace(other, linked=False))
                self._inodes.append(other.ino)
            if node.linked and self.state.lookup(*where) == node.ino:
                w.unlink(*where)
                self._entries.append((where[0], where[1], node.ino))
                self._inodes.append(where[0])
            if node.kind == "dir" and not (node.linked and node.listed) and self.on_folder:
                self.on_folder(node.ino)  # back after a local delete, or pruned while out
                # of view: its entries went
            node = replace(node, parent=parent.ino, name=rec.name, linked=True)
            w.link(parent.ino, rec.name, node.ino)
            self._entries.append((parent.ino, rec.name, node.ino))
            self._inodes.append(parent.ino)
            changed = True
        newer = node.rev is None or rec.rev >= node.rev
        if node.dirty is None and newer and node.linked:  # (deleted here: a queued delete
            # names the revision this device saw; taking a newer one would make it win)
            held = self.open_for_writing(node.ino)
            if held and rec.kind == "file" and rec.state == "done" and rec.rev != node.rev:
                self._stale.add(node.ino)  # a writer here works on what it opened: its
                # commit (on the old base) will conflict; unwritten, it is updated at close
            elif rec.kind == "file" and rec.state == "done" and rec.rev != node.rev:
                blocks = None if rec.blocks is None else tuple(rec.blocks)
                node = replace(node, kind=rec.kind, size=rec.size, rev=rec.rev, blocks=blocks,
                               version=node.version + 1)  # fmt: skip
                changed = True
            if rec.kind == "symlink" and rec.target != node.target:
                node = replace(node, target=rec.target, size=len((rec.target or "").encode()))
                changed = True
            if (node.mode, node.mtime_ns) != (rec.mode, rec.mtime_ns):
                node = replace(node, mode=rec.mode, mtime_ns=rec.mtime_ns,
                               ctime_ns=max(node.ctime_ns, rec.mtime_ns))  # fmt: skip
                changed = True
        if changed:
            w.put_node(node)
            self._inodes.append(node.ino)
