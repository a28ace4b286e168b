"""The uploader: replays the durable operation log to the server, in order, with delta uploads.

Every local change is appended to the LMDB queue (`StateDB.add_op`) by the mount the moment
it happens; this task sends them oldest first and deletes each only after the server
confirmed it, so nothing is lost across crashes, restarts or network loss (R13, N1). Ordered
replay keeps paths right (a directory before its contents, renames in order): an op names
the paths as they were when it was queued.

Commits are delta uploads (R7, N3): `syncd.rechunk` re-chunks only around the edits,
`syncd.blockpush` asks which of the new chunks the server lacks and sends only those, in
parallel. Consecutive commit ops are taken as one round (up to `ROUND_OPS` files or
`ROUND_BYTES`): their blocks share `missing` and batch requests and their commits go in one
batch request, so 1,000 small files cost a few round trips. A commit names its base
revision and a `commit_id` saved in the op before it is sent: after a lost reply or a
kill -9 the retry re-chunks to the same blocks, sends the same id and the server answers
the version it already made (never a second one). A file written while it is being
uploaded is retried, never committed torn. 409s go to `syncd.conflicts`.

Interface used by the mount: `wake()`, `pending()`, `run()`, `wait_idle()`, `busy_seqs`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from blockstore.aio import run_io
from blockstore.chunker import MIN_CHUNK_BYTES
from blockstore.errors import CacheFullError
from blockstore.ids import BlockId, block_id
from blockstore.wire import FileRecord, blocks_to_json, join_path
from syncd import errors
from syncd.blockpush import BlockPusher
from syncd.blocks import BlockCacheLike
from syncd.conflicts import MAX_COPY_NAME_TRIES, ConflictResolver, conflicted_name
from syncd.content import ContentStore
from syncd.queue_ops import Commit, Delete, Mkdir, Move, QueuedOp, SetAttr, Symlink
from syncd.rechunk import NewChunk, ShortRead, plan, rechunk
from syncd.remote import RemoteClient
from syncd.state import ROOT_INO, Node, StateDB
from syncd.tree import path_of

__all__ = ["Uploader", "conflicted_name"]

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 15.0
HOLD_OPEN_S = 1.0
"""Longest wait for the last writer of a file before its queued commit is sent anyway (a
file kept open, like a log, still reaches the server after each close of a descriptor)."""
RETRY_TORN_S = 0.2
MAX_RESOLVE_STEPS = 4
"""Resolution steps for one refused commit (follow a renamed folder, re-create a deleted
one, make a conflicted copy) before it is parked and retried later."""
LOST_IN_A_CRASH = "its unsynced bytes were lost from this disk in a crash; save it again"
MAX_CRASHES = 5
PARK_RETRY_S = 60.0
"""How often changes the server refused (over quota, say) are tried again."""
ROUND_OPS = 500
ROUND_BYTES = 64 << 20


class _Torn(Exception):
    """The file changed while it was being uploaded: try again."""


@dataclass(slots=True)
class _Item:
    """One file of a commit round: its content at dirty generation `gen`.

    `node` is its record when the upload started; what the file is now (written again,
    removed, renamed) is `Uploader._now(item)`."""

    seq: int
    op: Commit
    node: Node
    gen: int
    blocks: list[tuple[BlockId, int]]
    size: int


class Uploader:
    """Sends the queued operations; run `run()` in a nursery."""

    def __init__(
        self,
        state: StateDB,
        content: ContentStore,
        remote: RemoteClient,
        cache: BlockCacheLike,
        device: str,
        *,
        on_changed: Callable[[int], None] | None = None,
        on_entry: Callable[[int, str, int], None] | None = None,
        cache_files_up_to: int | None = None,
    ) -> None:
        """`cache_files_up_to`: put the new blocks of a file in the block cache only while
        the file is at most this big (None: always). A large file streamed into the drive
        would otherwise evict what the cache holds for reading, and writing it to the cache
        as well as to the dirty file and the server makes the kernel write back
        gigabytes during the upload (docs/performance.md). Its pages stay in the kernel's page
        cache; once those are gone, reading it again fetches it from the server."""
        self.cache_files_up_to = cache_files_up_to
        self.open_for_writing: Callable[[int], bool] = lambda ino: False
        """Set by the mount: whether a file still has handles that may write to it."""
        self.on_idle: Callable[[], None] = lambda: None
        """Set by the mount: called each time the queue has emptied."""
        self.relist_folder: Callable[[int], None] = lambda ino: None
        """Set by the mount: list a folder again (in the background), here one created
        here whose name the server already had as a folder (adopted: it may hold entries
        this device never heard of, since it showed its own empty folder)."""
        self.release_unlinked: Callable[[int], None] = lambda ino: None
        """Set by the mount: drop the record of a removed file that nothing uses any more
        (called once the last queued op naming it is done)."""
        self.keep_written: Callable[[int], bool] = lambda ino: False
        """Set by the mount (`Vfs.keep_written`): a written file out of the tree that no
        program here removed comes back, and its commit goes on."""
        self._held_seq: int | None = None
        self.state = state
        self.content = content
        self.remote = remote
        self.cache = cache
        self.device = device
        self.on_changed = on_changed
        self.on_entry = on_entry
        self.conflicts = ConflictResolver(
            state, content, remote, device, on_changed=on_changed, on_entry=on_entry,
            relist_folder=lambda ino: self.relist_folder(ino),
        )  # fmt: skip
        self.online = True
        self.last_error: str | None = None
        self._wake = trio.Event()
        self._idle = trio.Event()
        self.bytes_uploaded = 0
        """Wire bytes of blocks sent (after dedupe)."""
        self.commits = 0
        self.busy_seqs: set[int] = set()
        """Ops being sent now: the mount must not coalesce a new commit into them."""
        self.progress: dict[str, Any] | None = None
        """`{"path", "done", "total"}` of the file being uploaded (for `drive status`)."""
        self._failures: dict[int, int] = {}
        self._preparing: tuple[int, QueuedOp] | None = None
        """The op of a commit round whose content is being read: a crash there is its own,
        not the round's (the others go on in the next round)."""
        self._refused: dict[int, str] = {}
        """Ops of the current round the server refused for now: seq -> reason."""
        self._requeue_log: Callable[..., None] = log.info
        self._moved_on = False
        """Set by `_move`: the file it moved had been edited elsewhere since we saw it."""

    @property
    def current_seq(self) -> int | None:
        return min(self.busy_seqs) if self.busy_seqs else None

    def wake(self) -> None:
        """New work was queued."""
        self._wake.set()

    def pending(self) -> int:
        return self.state.op_count()

    async def wait_idle(self) -> None:
        """Return once the queue is empty."""
        while self.state.op_count():
            self._idle = trio.Event()
            await self._idle.wait()

    def requeue_unqueued(self) -> int:
        """Queue a commit for every changed file that has none queued or parked (and is not
        open for writing: its close queues one); returns how many.

        A file written and closed just before a crash of the client has its content and
        its dirty state on disk; this makes sure it still reaches the server (N1), whatever
        moment the crash hit. Called at start, and then every `PARK_RETRY_S` as a safety net:
        a changed file with nothing queued would otherwise sit unsynced while `drive status`
        says 0 pending (found there, it is a bug: logged as an error, and healed).
        """
        queued = {op.ino for op in self.state.unsynced_ops() if isinstance(op, Commit)}
        orphans = [n for n in self.state.dirty_nodes()
                   if n.kind == "file" and n.linked and n.ino not in queued
                   and not self.open_for_writing(n.ino)]  # fmt: skip
        if not orphans:
            return 0
        added = 0
        with self.state.write() as w:
            for node in orphans:
                try:
                    path = path_of(self.state, node.ino)
                except KeyError:
                    continue  # not reachable from the root: nothing to commit it under
                w.add_op(Commit(node.ino, path))
                added += 1
        if added:
            self._requeue_log("queued %d changed files that had nothing queued", added)
            self.wake()
        return added

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        backoff = 0.5
        self._unpark()
        self._requeue_log = log.error  # from now on an orphan is a bug (at start: a crash)
        next_unpark = trio.current_time() + PARK_RETRY_S
        while True:
            if trio.current_time() >= next_unpark:
                self._unpark()
                self.requeue_unqueued()
                next_unpark = trio.current_time() + PARK_RETRY_S
            ops = self.state.ops(limit=ROUND_OPS)
            if not ops:
                self.on_idle()
                self._idle.set()
                self._wake = trio.Event()
                with trio.move_on_at(next_unpark):
                    await self._wake.wait()
                continue
            if await self._hold_for_last_writer(ops[0]):
                continue
            batch = self._round(ops)
            seq, op = batch[0]
            self.busy_seqs = {s for s, _ in batch}
            self._refused, self._preparing = {}, None
            try:
                if isinstance(op, Commit):
                    done = await self._commit_round(batch)
                    if not done and not self._refused:
                        raise _Torn
                else:
                    await self._apply(seq, op)
                    done = [seq]
            except _Torn:
                await trio.sleep(RETRY_TORN_S)
                continue
            except errors.Offline as exc:
                if self.online:
                    log.warning("server unreachable, %d changes queued: %s", self.pending(), exc)
                self.online = False
                self.last_error = str(exc)
                with trio.move_on_after(backoff):
                    await self._wake.wait()
                    await trio.sleep(backoff / 4)
                self._wake = trio.Event()
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            except errors.RateLimited as exc:
                await trio.sleep(max(0.1, exc.retry_after))
                continue
            except (errors.Unauthorized, errors.ServerError) as exc:
                log.error("upload of %s %s failed, will retry: %s", op.kind, op.where, exc)
                self.last_error = str(exc)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            except errors.QuotaExceeded as exc:
                done = []
                for s_, _ in batch:
                    self._refused[s_] = f"over quota: {exc}"
            except errors.RemoteError as exc:
                done = []
                self._refused[seq] = f"refused by the server: {exc}"
            except Exception as exc:  # a bug must not take the mount down, nor lose the change
                seq, op = self._preparing or (seq, op)
                failures = self._failures[seq] = self._failures.get(seq, 0) + 1
                log.error("upload of %s %s crashed (attempt %d)", op.kind, op.where,
                          failures, exc_info=exc)  # fmt: skip
                self.last_error = f"{type(exc).__name__}: {exc}"
                if failures < MAX_CRASHES:
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                    continue
                done = []
                self._refused[seq] = f"internal error: {type(exc).__name__}: {exc}"
            finally:
                self.progress = None
            if not self.online:
                log.info("server reachable again")
                self.last_error = None
            self.online = True
            backoff = 0.5
            self._settle(batch, done)
            self.busy_seqs = set()

    def _settle(self, batch: list[tuple[int, QueuedOp]], done: list[int]) -> None:
        """Delete the finished ops of a round and park the refused ones (kept, retried every
        `PARK_RETRY_S`, listed by `drive status` as not synced): never drop a change."""
        ops = dict(batch)
        with self.state.write() as w:
            for s in done:
                w.delete_op(s, ops.get(s))
            for s, reason in self._refused.items():
                if s in ops and s not in done:
                    w.park(s, ops[s], reason)
                    self._failures.pop(s, None)
                    log.error("not synced: %s %s: %s (kept; retried every %.0f s)",
                              ops[s].kind, ops[s].where, reason, PARK_RETRY_S)  # fmt: skip
        if self._refused:
            self.last_error = next(iter(self._refused.values()))
        self._settle_parked_commits({ops[s].ino for s in done if isinstance(ops[s], Commit)})
        for s in done:
            op = ops[s]
            for ino in (op.ino, op.dst_ino if isinstance(op, Move) else None):
                node = self.state.node(ino) if ino is not None else None
                if node is not None and not node.linked:
                    self.release_unlinked(node.ino)

    def _settle_parked_commits(self, inos: set[int]) -> None:
        """A parked commit of a file a later commit left clean is done: "not synced" no
        longer (not only at the next retry, `PARK_RETRY_S` later)."""
        if not inos:
            return
        settled = []
        for s, op, _, _ in self.state.parked():
            node = self.state.node(op.ino) if isinstance(op, Commit) else None
            if node is not None and node.ino in inos and node.dirty is None:
                settled.append(s)
        if settled:
            with self.state.write() as w:
                for s in settled:
                    w.settle_parked(s)

    def _unpark(self) -> None:
        with self.state.write() as w:
            n = w.unpark_all()
        if n:
            log.info("retrying %d changes the server refused before", n)

    def parked(self) -> int:
        return len(self.state.parked())

    async def _hold_for_last_writer(self, head: tuple[int, QueuedOp]) -> bool:
        """Wait (once per op, at most `HOLD_OPEN_S`) while the head commit's file is open.

        A shell's `echo hi > f` closes its file twice (after `dup2`, and at exit), and each
        close queues a commit; sending the first one at once made an empty revision before
        the real one. Returns True if it waited (the caller re-reads the queue, where the
        second close's commit has coalesced into this one).
        """
        seq, op = head
        if not isinstance(op, Commit) or seq == self._held_seq:
            return False
        if not self.open_for_writing(op.ino):
            return False
        self._held_seq = seq
        with trio.move_on_after(HOLD_OPEN_S):
            while self.open_for_writing(op.ino):
                self._wake = trio.Event()
                await self._wake.wait()
        return True

    def _round(self, ops: list[tuple[int, QueuedOp]]) -> list[tuple[int, QueuedOp]]:
        """The ops to send now: one non-commit op, or a run of commits of distinct files."""
        if not isinstance(ops[0][1], Commit):
            return ops[:1]
        out: list[tuple[int, QueuedOp]] = []
        inos: set[int] = set()
        size = 0
        for seq, op in ops:
            if not isinstance(op, Commit) or op.ino in inos:
                break
            node = self.state.node(op.ino)
            nbytes = node.size if node is not None else 0
            if out and size + nbytes > ROUND_BYTES:
                break
            out.append((seq, op))
            inos.add(op.ino)
            size += nbytes
        return out

    # -- non-content operations -----------------------------------------------------------

    async def _apply(self, seq: int, op: QueuedOp) -> None:
        node = self.state.node(op.ino)
        if isinstance(op, Mkdir | Symlink):
            rec = await self._create(op, node)
            self._adopt(op.ino, rec)
        elif isinstance(op, SetAttr):
            try:
                await self.remote.setattr(op.path, op.mode, op.mtime_ns)
            except errors.NotFound:
                log.debug("setattr of vanished %s ignored", op.path)
        elif isinstance(op, Move):
            moved = await self._move(op, node)
            if moved is not None:
                self._adopt_moved(op.ino, moved)
        elif isinstance(op, Delete):
            if node is not None and node.server_id is None:
                log.debug("delete of %s skipped: it never reached the server", op.path)
                return  # the name on the server (if any) is another device's entry
            try:
                seen = self._seen_rev(op.ino, op.base_rev)
                await self.remote.delete(op.path, op.recursive, base_rev=seen,
                                         file_id=node.server_id if node else None)  # fmt: skip
            except errors.NotFound:
                await self._deleted_or_moved_on(op, node)
            except errors.NotEmpty:  # another device put something in it: that stays
                log.warning("%s got new entries elsewhere before this delete; keeping it", op.path)
                with contextlib.suppress(errors.NotFound):
                    self._show_theirs(await self.remote.meta(path=op.path))
            except errors.Conflict as exc:  # edited elsewhere since we saw it: edits win
                log.warning("%s was edited elsewhere before this delete; keeping it", op.path)
                if exc.current is not None:
                    self._show_theirs(FileRecord.from_json(exc.current))

    async def _deleted_or_moved_on(self, op: Delete, node: Node | None) -> None:
        """A delete found nothing at its path: deleted elsewhere too (done), or renamed
        elsewhere before it reached the server. The delete named what this device saw
        there, which another device has since put somewhere else on purpose: it stays, and
        this device shows it where it is now (else it would be on the server only)."""
        if node is None or node.server_id is None:
            log.debug("delete of vanished %s ignored", op.path)
            return
        try:
            rec = await self.remote.meta(file_id=node.server_id)
        except errors.NotFound:
            log.debug("delete of vanished %s ignored", op.path)
            return
        log.warning("%s was moved elsewhere to %s before this delete; keeping it", op.path,
                    rec.path)  # fmt: skip
        self._show_theirs(rec)

    def _kept(self, op: Commit) -> Node | None:
        """The record of a written file out of the tree, back in it if `keep_written` kept
        it (its commit then goes where it is shown now)."""
        if not self.keep_written(op.ino):
            return self.state.node(op.ino)
        with contextlib.suppress(KeyError):
            op.path = path_of(self.state, op.ino)
        return self.state.node(op.ino)

    def _show_theirs(self, rec: FileRecord) -> None:
        """Show the server's entry `rec`, which kept a name ours was refused. A folder is
        listed again: it may be the inode it had here before our operation took it away,
        listed then, and the change feed could not add what arrived in it meanwhile."""
        self.conflicts.show(rec)
        shown = self.state.ino_for_server_id(rec.id)
        if rec.kind == "dir" and shown is not None:
            self.relist_folder(shown)

    async def _show_live(self, file_id: int) -> None:
        """Show the server's entry `file_id` where it is now, if the server still has it."""
        with contextlib.suppress(errors.NotFound):
            rec = await self.remote.meta(file_id=file_id)
            if not rec.deleted:
                self._show_theirs(rec)

    def _seen_rev(self, ino: int | None, queued: int | None) -> int | None:
        """The revision of a file this device deleted or renamed over, as it last saw it:
        when the op was queued, or newer if this device's own commit, queued before the op,
        landed since (else the delete would be refused as stale against ourselves)."""
        node = self.state.node(ino) if ino is not None else None
        if node is None or node.kind != "file" or node.rev is None:
            return queued
        if node.linked:
            return queued  # shown again (edited elsewhere): not what this device saw
        return node.rev if queued is None else max(queued, node.rev)

    async def _create(self, op: Mkdir | Symlink, node: Node | None) -> FileRecord:
        """mkdir or symlink at `op.path`; a missing parent folder is followed or re-created
        (see `_place_for`), an existing entry of that name and kind is adopted, another kind
        there makes ours take a conflicted-copy name."""
        want = "dir" if isinstance(op, Mkdir) else "symlink"
        for step in range(MAX_RESOLVE_STEPS):
            parent_id = self._folder_meant(node, op.path) if node and step == 0 else None
            try:
                if isinstance(op, Mkdir):
                    return await self.remote.mkdir(op.path, op.mode, parent_id=parent_id)
                return await self.remote.symlink(op.path, op.target, parent_id=parent_id)
            except errors.Exists:
                rec = await self.remote.meta(path=op.path)
                if node is not None and self.conflicts.shown_elsewhere(rec.id, node):
                    # that folder is shown here elsewhere (renamed there by another device,
                    # the feed not here yet): adopted, it would be two folders here
                    op.path = self._rename_local(node, op.path)
                    continue
                if rec.kind == want:
                    if node is not None and want == "dir":  # adopted by the caller
                        with self.state.write() as w:
                            w.put_node(replace(self.state.current(node), listed=False))
                        self.relist_folder(node.ino)
                    return rec
                if node is None:
                    raise
                op.path = self._rename_local(node, op.path)
            except errors.NotFound:
                if node is None:
                    raise
                op.path = await self._place_for(node, op.path)
        raise errors.Conflict(f"could not place {op.path} on the server")

    async def _move(self, op: Move, node: Node | None) -> FileRecord | None:
        """A rename, of the entries this device saw (by server id). Destination folder
        missing: followed or re-created. Destination name taken meanwhile by another device
        (no replace asked), or the file we replace is another one or moved on: ours takes a
        conflicted-copy name, here and on the server. Source not at that path any more:
        moved from where the server has it now, or (deleted elsewhere) its content is
        committed at the target."""
        if node is not None and node.server_id is None:
            log.debug("move of %s skipped: it never reached the server", op.src)
            return None  # the name on the server (if any) is another device's entry
        taken: list[tuple[str, int | None]] = []  # names taken elsewhere, by what (if known)
        replaced = self.state.node(op.dst_ino) if op.dst_ino is not None else None
        dst_id = op.dst_id
        if dst_id is None and replaced is not None:
            dst_id = replaced.server_id
        if op.mode == "replace" and dst_id is None and op.dst_ino is not None:
            op.mode = "noreplace"  # what it replaces here never reached the server: the
            # name there, if taken, is another device's entry (then ours gets a copy name)
        src_rev = node.rev if node is not None and node.kind == "file" else None
        by_id = node is not None  # the destination folder is named until it is placed again
        for _ in range(MAX_RESOLVE_STEPS):
            if node is not None:
                node = self.state.current(node)  # as it is after the last request
            try:
                seen = self._seen_rev(op.dst_ino, op.dst_rev)
                rec = await self.remote.move(
                    op.src, op.dst, op.mode, dst_rev=seen, src_rev=src_rev,
                    src_id=node.server_id if node else None,
                    dst_id=dst_id if op.mode != "noreplace" else None,
                    dst_parent_id=self._folder_meant(node, op.dst) if node and by_id else None,
                )  # fmt: skip
            except (errors.Exists, errors.Conflict, errors.NotEmpty) as exc:
                node = self.state.current(node) if node is not None else None
                if isinstance(exc, errors.Conflict) and _names(exc, node):
                    # the file we move was edited elsewhere since we saw it: the rename still
                    # applies (edits travel with renames); the result shows what we had not
                    # seen, and a local edit of ours then conflicts with it (see _adopt_moved)
                    src_rev, self._moved_on = None, True
                    continue
                # the name was taken (by another entry, or one of another kind), the file we
                # replace was edited meanwhile (edits beat deletes), or the folder we replace
                # got entries: ours takes a conflicted-copy name, theirs stays
                if node is None or op.mode == "exchange":
                    raise
                current = exc.current if isinstance(exc, errors.Conflict) else None
                holder = current.get("id") if current is not None else None
                taken.append((op.dst, holder if isinstance(holder, int) else None))
                op.dst, by_id = self._rename_local(node, op.dst), False
                op.mode, op.dst_rev = "noreplace", None
                continue
            except errors.IntoItself:
                await self._undo_move(op, node)
                return None
            except errors.NotFound:
                node = self.state.current(node) if node is not None else None
                if node is None or not node.linked or node.server_id is None:
                    log.debug("move of %s skipped: not on the server (yet)", op.src)
                    return None
                try:
                    src = await self.remote.meta(file_id=node.server_id)
                except errors.NotFound:
                    if op.mode == "replace":
                        landed = await self._landed_over(node, dst_id)
                        if landed is not None:
                            return landed
                    return await self._recreate_at(node, op)
                if src.path != op.src:  # the source moved: sent again from there, to the
                    op.src = src.path  # destination folder still named by id
                    continue
                op.dst, by_id = await self._place_for(node, op.dst), False
                continue
            for path, holder in taken:  # show the other device's entry under the name it
                if holder is not None:  # took (by id: it may have moved on)
                    await self._show_live(holder)
                    continue
                with contextlib.suppress(errors.NotFound):
                    self._show_theirs(await self.remote.meta(path=path))
            if dst_id is not None and rec.id != dst_id:
                # the file we renamed over was not replaced: edited or renamed elsewhere,
                # or given a copy name by one of our own resolutions (seed 1692); the feed
                # skips our own moves, so it is shown where the server has it
                await self._show_live(dst_id)
            return rec
        raise errors.Conflict(f"could not move {op.src} to {op.dst}")

    async def _undo_move(self, op: Move, node: Node | None) -> None:
        """Our folder move would put the folder inside itself on the server: another device
        moved the target folder into it first. That move stays (the server has it, and no
        content is at stake: both folders keep everything in them); this one is undone here,
        the folder shown where the server has it, and the change feed then shows the other
        folder inside it."""
        log.warning("%s cannot move to %s: that folder was moved into it elsewhere; leaving "
                    "it where it is", op.src, op.dst)  # fmt: skip
        node = self.state.current(node) if node is not None else None
        if node is None or node.server_id is None:
            return
        with contextlib.suppress(errors.NotFound):
            rec = await self.remote.meta(file_id=node.server_id)
            self.conflicts.relocate(node, rec, own_moves=1)
            self._show_theirs(rec)

    async def _landed_over(self, node: Node, dst_id: int | None) -> FileRecord | None:
        """Our file is gone from the server after a rename over file `dst_id`: if that file
        holds exactly our content, the rename is what took ours (its answer lost with the
        connection, or to a kill; a rename over a file makes ours the next revision of it and
        removes our entry), and that file is ours now. Else None: deleted elsewhere."""
        node = self.state.current(node)
        if dst_id is None or node.kind != "file" or node.blocks is None:
            return None
        try:
            rec = await self.remote.meta(file_id=dst_id)
        except errors.NotFound:
            return None
        if rec.kind != "file" or rec.blocks is None or tuple(rec.blocks) != node.blocks:
            return None
        log.info("%s: the rename over it was done, its answer lost", rec.path)
        return rec

    async def _recreate_at(self, node: Node, op: Move) -> FileRecord | None:
        """A file moved here was deleted elsewhere meanwhile: keep what this device shows,
        at the destination (over a file: as its next revision, if it is still the one this
        device saw; else under a conflicted-copy name)."""
        node = self.state.current(node)
        if node.kind == "dir":
            return await self._create(Mkdir(node.ino, op.dst, node.mode), node)
        if node.kind != "file" or node.dirty is not None or node.blocks is None:
            return None  # its queued commit brings it back (edit beats delete)
        log.warning("%s was deleted elsewhere while moved to %s; keeping it", op.src, op.dst)
        base = self._seen_rev(op.dst_ino, op.dst_rev) if op.mode == "replace" else None
        for step in range(MAX_RESOLVE_STEPS):
            commit_id = f"{self.device}-{uuid.uuid4().hex}"
            node = self.state.current(node)
            try:
                return await self.remote.commit(
                    op.dst, base, node.blocks or (), node.size, node.mtime_ns, node.mode,
                    commit_id, base_id=op.dst_id,
                )  # fmt: skip
            except (errors.Conflict, errors.Exists):  # another entry has the name now
                op.dst, base = self._rename_local(node, op.dst), None
            except errors.NotFound:
                op.dst = await self._place_for(node, op.dst)
            log.debug("re-creating %s: step %d", op.dst, step + 1)
        raise errors.Conflict(f"could not re-create {op.dst} on the server")

    def _rename_local(self, node: Node, path: str) -> str:
        """Another device took the name `path`: ours moves to a conflicted-copy name (on the
        server by the caller's retry); the other device's entry arrives by the change feed."""
        folder, _, name = path.rpartition("/")
        node = self.state.current(node)
        for n in range(1, MAX_COPY_NAME_TRIES + 1):  # a name free here too: our own copy
            new_name = conflicted_name(name, self.device, n=n)  # made this second may
            if self.state.lookup(node.parent, new_name) in (None, node.ino):  # have it
                break
        new_path = join_path(folder or "/", new_name)
        log.warning("%s was taken by another device meanwhile; ours is now %s", path, new_path)
        with self.state.write() as w:
            if node.linked and self.state.lookup(node.parent, node.name) == node.ino:
                w.unlink(node.parent, node.name)
                w.link(node.parent, new_name, node.ino)
                if self.on_entry is not None:
                    self.on_entry(node.parent, node.name, node.ino)
                node = replace(node, name=new_name, version=node.version + 1)
                w.put_node(node)
        self.conflicts.retarget_ops(node.ino, path, new_path)
        if node.kind == "dir":
            self.conflicts.retarget_below(node.ino, path, new_path)
        if self.on_changed is not None:
            self.on_changed(node.parent)
        return new_path

    def _adopt(self, ino: int | None, rec: FileRecord) -> None:
        node = self.state.node(ino) if ino is not None else None
        if node is None:
            return
        with self.state.write() as w:
            w.put_node(replace(node, rev=rec.rev, server_id=rec.id))
        self._follow_folder(node, rec)

    def _follow_folder(self, node: Node, rec: FileRecord) -> None:
        """The server put our entry `rec` (shown here as `node`) into its folder by path.
        If the folder shown here there is another one on the server (deleted and made
        again elsewhere, or replaced by a folder of that name), it is that folder now, and
        it is listed again: the change feed could not show the entries another device put
        in it (it did not know that folder here), and never will (convergence seed 1571).
        A folder shown elsewhere here under that id keeps it, and our entry is shown in it:
        left in the folder here, which the server no longer has for it, it went from this
        device's view when the feed removed that folder, and the feed skips our own change
        that made it (convergence seed 1638).
        A folder the entry was moved into here since is not the one the server put it in:
        taking that folder's id made it another folder on the server (seed 1706)."""
        node = self.state.current(node)
        parent = self.state.node(node.parent) if node.linked else None
        if (
            parent is None
            or rec.parent_id is None
            or parent.ino == ROOT_INO
            or parent.server_id in (None, rec.parent_id)
        ):
            return
        if self.conflicts.shown_elsewhere(rec.parent_id, parent):
            self.conflicts.relocate(node, rec)
            return
        try:
            here = path_of(self.state, parent.ino)
        except KeyError:
            return
        if here != rec.path.rpartition("/")[0]:
            return  # moved here since: a queued move of ours takes it on from there
        log.info("%s: its folder here is another folder on the server now; listing it",
                 rec.path)  # fmt: skip
        with self.state.write() as w:
            w.put_node(replace(self.state.current(parent), server_id=rec.parent_id, listed=False))
        self.relist_folder(parent.ino)

    def _adopt_moved(self, ino: int, rec: FileRecord) -> None:
        """After a move: this device shows what the server has for the entry now (the
        change feed skips this mount's own changes, and older changes of this entry).

        A clean file takes the answer's content: after a rename over a file, ours is that
        file's latest revision; if it was edited elsewhere since we saw it, those edits
        travel with the rename. A file with local edits keeps them; if it was edited
        elsewhere meanwhile, its base revision is set to 0 so that its next commit is a
        conflict (ours becomes a conflicted copy, the name shows theirs)."""
        node = self.state.node(ino)
        moved_on, self._moved_on = self._moved_on, False
        if node is None:
            return
        node = replace(node, server_id=rec.id)
        if node.kind != "file" or rec.kind != "file":
            node = replace(node, rev=rec.rev)
        elif node.dirty is not None:
            node = replace(node, rev=0 if moved_on else rec.rev)
        elif rec.blocks is not None and tuple(rec.blocks) != (node.blocks or ()):
            node = replace(node, rev=rec.rev, size=rec.size, mtime_ns=rec.mtime_ns,
                           blocks=tuple(rec.blocks), version=node.version + 1)  # fmt: skip
        else:
            node = replace(node, rev=rec.rev)
        with self.state.write() as w:
            w.put_node(node)
        if node.linked:  # where the server put it: in its folder by id (this device may
            self.conflicts.relocate(node, rec, own_moves=1)  # show that folder elsewhere, or
            # another local folder of that name), under the name it got (a copy's)
            self._follow_folder(node, rec)
        if moved_on and self.on_changed is not None:
            self.on_changed(node.ino)

    # -- commits ----------------------------------------------------------------------------

    async def _commit_round(self, batch: list[tuple[int, QueuedOp]]) -> list[int]:
        """Upload and commit a run of commit ops; returns the seqs that are finished."""
        done: list[int] = []
        items: list[_Item] = []
        t0 = trio.current_time()
        async with BlockPusher(self.remote, self.cache,
                               remember=self.content.fetcher.remember) as pusher:  # fmt: skip
            small: list[tuple[int, Commit, Node]] = []
            for seq, op in batch:
                assert isinstance(op, Commit)  # `_round` makes rounds of commits only
                node = self.state.node(op.ino)
                if node is not None and node.dirty is not None and not node.linked:
                    node = self._kept(op)  # written, then out of the tree: not by a program?
                if node is None or node.kind != "file" or node.dirty is None or not node.linked:
                    if node is not None:
                        await self._settle_sent(op, node)
                    done.append(seq)  # committed by an earlier op, deleted, or not a file
                    continue
                if _small_and_new(node):
                    small.append((seq, op, node))
                    continue
                self._preparing = (seq, op)  # until it is read: see `run`
                try:
                    items.append(await self._prepare(seq, op, node, pusher))
                except _Torn:
                    pass
                except ShortRead:
                    if await self._dirty_data_gone(seq, op, node, _gen(node)):
                        done.append(seq)
                    elif seq not in self._refused:
                        raise
                self._preparing = None
            if small:
                read_small, short = await self._prepare_small(small, pusher)
                items.extend(read_small)
                for seq, op, node, gen in short:
                    if await self._dirty_data_gone(seq, op, node, gen):
                        done.append(seq)
        self.bytes_uploaded += pusher.bytes_sent
        t1 = trio.current_time()
        ready: list[_Item] = []
        for it in items:
            node = self._now(it)  # not the record it started from: was it written meanwhile?
            if node.dirty is None or not node.linked:
                await self._settle_sent(it.op, node)
                done.append(it.seq)
            elif self.content.unchanged_since(node, it.gen):
                if it.op.digest != self._digest(it):  # another commit than the one sent
                    await self._settle_sent(it.op, node)
                self._set_commit_id(it)
                ready.append(it)
        if len(ready) == 1:
            it = ready[0]
            node = self._now(it)
            try:
                res: FileRecord | errors.RemoteError = await self.remote.commit(
                    it.op.path, node.rev, it.blocks, it.size, node.mtime_ns, node.mode,
                    it.op.commit_id or "", base_id=node.server_id,
                    parent_id=self._folder_meant(node, it.op.path),
                )  # fmt: skip
            except errors.RemoteError as exc:
                res = exc
            results = [res]
        elif ready:
            results = await self.remote.commit_batch([self._body(it) for it in ready])
        else:
            results = []
        t2 = trio.current_time()
        for it, res in zip(ready, results, strict=True):
            if await self._finish(it, res):
                done.append(it.seq)
        log.debug("round of %d: prepare %.3f s, commit %.3f s, finish %.3f s", len(batch),
                  t1 - t0, t2 - t1, trio.current_time() - t2)  # fmt: skip
        return done

    async def _prepare(self, seq: int, op: Commit, node: Node,
                       pusher: BlockPusher) -> _Item:  # fmt: skip
        dirty = node.dirty
        assert dirty is not None
        gen = dirty.gen
        size = node.size
        p = plan(dirty.base_blocks, dirty.base_size, dirty.ranges, size)
        self.progress = {"path": op.path, "done": p.start, "total": size}

        def check() -> Node:
            """The file's record now, unless it was written, truncated or removed since the
            upload started (read again: `node` is the record as it was then)."""
            now = self.state.current(node)
            if not self.content.unchanged_since(now, gen) or not now.linked:
                raise _Torn
            return now

        async def read(off: int, n: int) -> bytes:
            data = await self.content.read(check(), off, n)
            check()  # a write or truncate during the read: these bytes may be torn or short
            if self.progress is not None:
                self.progress["done"] = off + len(data)
            return data

        keep = self.cache_files_up_to is None or size <= self.cache_files_up_to

        async def sink(chunk: NewChunk) -> None:
            await pusher.add(chunk, put_in_cache=keep)

        blocks = await rechunk(dirty.base_blocks, p, size, read, sink)
        return _Item(seq, op, node, gen, blocks, sum(s for _, s in blocks))

    async def _prepare_small(
        self, small: list[tuple[int, Commit, Node]], pusher: BlockPusher
    ) -> tuple[list[_Item], list[tuple[int, Commit, Node, int]]]:
        """New files below the minimum chunk size are one block each: read, hash and cache
        all of them in one worker-thread call instead of three thread hops per file.
        Returns the files read, and those found shorter than recorded, with the generation
        their read started from."""
        # the records as they are now, after the larger files' uploads
        small = [(seq, op, self.state.current(node)) for seq, op, node in small]
        gens = [_gen(node) for _, _, node in small]
        paths = [(self.content.path(node.ino), node.size) for _, _, node in small]
        got = await run_io(_read_hash_cache, paths, self.cache)
        out: list[_Item] = []
        short: list[tuple[int, Commit, Node, int]] = []
        for (seq, op, node), gen, res in zip(small, gens, got, strict=True):
            if res is None:
                short.append((seq, op, node, gen))
                continue
            bid, data = res
            if data:
                await pusher.add(NewChunk(0, bid, data), put_in_cache=False)  # cached already
            blocks = [(bid, len(data))] if data else []
            out.append(_Item(seq, op, node, gen, blocks, len(data)))
        return out, short

    async def _dirty_data_gone(self, seq: int, op: Commit, node: Node, gen: int) -> bool:
        """`op`'s file read shorter than its record (`node`, at dirty generation `gen`) says.
        Written meanwhile: the next round reads it again (False). Else its dirty data is
        gone from this disk: a kill between the dirty file's removal and the write of the
        clean record, which only a landed commit does (seed 1764), makes the file the
        version that commit made (True); otherwise the bytes were lost in a crash of the
        machine before they were written out, and the op is not synced, with that reason,
        rather than retried for ever (False)."""
        if not self.content.unchanged_since(self.state.current(node), gen):
            return False
        if not await run_io(self.content.dirty_file_short, node):
            return False
        node = self.state.current(node)
        if not self.content.unchanged_since(node, gen):
            return False  # written meanwhile: not what a crash left
        rec: FileRecord | None = None
        if op.commit_id is not None:
            with contextlib.suppress(errors.NotFound):
                rec = await self.remote.made_by_commit(op.commit_id)
            node = self.state.current(node)
            if not self.content.unchanged_since(node, gen):
                return False
        if rec is None or rec.blocks is None:
            self._refused[seq] = LOST_IN_A_CRASH
            return False
        log.warning("%s: its upload landed just before the mount stopped; it is that version",
                    op.path)  # fmt: skip
        node = replace(node, server_id=rec.id, rev=rec.rev, size=rec.size,
                       mtime_ns=rec.mtime_ns, blocks=tuple(rec.blocks))  # fmt: skip
        node = self.content.finish_clean(node)
        with self.state.write() as w:
            w.put_node(node)
        return True

    def _now(self, it: _Item) -> Node:
        return self.state.current(it.node)

    async def _settle_sent(self, op: Commit, node: Node) -> None:
        """`op` was sent before (it has a commit id) and is now done with unsent, or sent as
        another commit: if the server made a version of the first one (its answer lost with
        the connection, or to a kill), this file is that version there, and what follows
        (the next commit, a move, a delete, which name the file by server id and revision)
        must know it. Else a file removed here stayed on the server, shown nowhere here
        (convergence seed 1540), or the next commit conflicted with its own last one."""
        if op.commit_id is None:
            return
        try:
            rec = await self.remote.made_by_commit(op.commit_id)
        except errors.NotFound:
            return  # it never arrived, or was refused
        node = self.state.current(node)
        if node.server_id not in (None, rec.id) or (node.rev or 0) >= rec.rev:
            return  # known already, or this inode shows another file now
        log.info("%s: the server made the version whose answer was lost", op.path)
        with self.state.write() as w:
            w.put_node(replace(node, server_id=rec.id, rev=rec.rev))

    def _digest(self, it: _Item) -> str:
        """What a commit id stands for: content, base and path."""
        node = self._now(it)
        key = repr((it.blocks, node.rev, it.op.path, node.mode)).encode()
        return hashlib.sha256(key).hexdigest()

    def _set_commit_id(self, it: _Item) -> None:
        """Same content, base and path -> same id, even after a crash (idempotent retry)."""
        digest = self._digest(it)
        if it.op.digest != digest or it.op.commit_id is None:
            it.op.digest = digest
            it.op.commit_id = f"{self.device}-{it.op.ino}-{uuid.uuid4().hex}"
            with self.state.write() as w:
                w.replace_op(it.seq, it.op)

    def _body(self, it: _Item) -> dict[str, Any]:
        node = self._now(it)
        body = {
            "path": it.op.path,
            "base_rev": node.rev,
            "blocks": blocks_to_json(tuple(it.blocks)),
            "size": it.size,
            "mtime_ns": node.mtime_ns,
            "mode": node.mode,
            "commit_id": it.op.commit_id,
        }
        if node.rev is not None and node.server_id is not None:
            body["base_id"] = node.server_id
        parent_id = self._folder_meant(node, it.op.path)
        if parent_id is not None:
            body["parent_id"] = parent_id
        return body

    def _folder_meant(self, node: Node, path: str) -> int | None:
        """The server id of the folder this device shows `node` in, if it shows it at `path`
        (else None: by path). Sent until a resolution placed the change again, so that an
        entry whose folder was renamed elsewhere, another folder made at the old path,
        follows its folder (ParentMissing, then `_place_for`) instead of landing in the new
        one; after `_place_for` it goes by path (it has decided where the entry goes)."""
        node = self.state.current(node)
        if not node.linked or node.parent == ROOT_INO:
            return None
        try:
            if path_of(self.state, node.ino) != path:
                return None
        except KeyError:
            return None
        parent = self.state.node(node.parent)
        return parent.server_id if parent is not None else None

    async def _finish(self, it: _Item, res: FileRecord | errors.RemoteError) -> bool:
        """Apply the server's answer to one commit; False if it was refused for now (the
        caller parks the op). Every refusal has a resolution (docs/protocol.md "Rules")."""
        resolved = False
        for step in range(1, MAX_RESOLVE_STEPS + 1):
            if isinstance(res, errors.NotFound):  # its folder is not at that path any more
                it.op.path = await self._place_for(self._now(it), it.op.path)
                res = await self._commit_at(it, f"placed-{step}")
            elif isinstance(res, errors.Conflict):
                rec = await self.conflicts.resolve(
                    self._now(it), it.op.path, it.blocks, it.size, it.op.commit_id or "", res,
                    it.gen,
                )  # fmt: skip
                if rec is None:
                    return True
                res, resolved = rec, True
            else:
                break
        if isinstance(res, errors.BlocksMissing):
            raise errors.ServerError(f"blocks vanished before the commit of {it.op.path}")
        if isinstance(res, errors.RemoteError):
            if isinstance(res, errors.ServerError | errors.RateLimited | errors.Unauthorized):
                raise res
            why = "over quota" if isinstance(res, errors.QuotaExceeded) else "refused"
            self._refused[it.seq] = f"{why}: {res}"
            return False
        self.commits += 1
        # the record as it is now, after the answer: was the file written meanwhile?
        node = replace(self._now(it), server_id=res.id, rev=res.rev)
        self._follow_folder(node, res)
        if node.linked:
            # a folder listing merged while this round's answers were being taken in may
            # show this entry already, as a new inode at the name it was committed under
            # (renamed here since): one server entry is one inode here (seed 1638)
            self.conflicts.unshow_other(res.id, node.ino)
            if resolved:  # committed where the file went elsewhere; its place there may
                self.conflicts.relocate(node, res)  # have been held by an inode that
                # showed it from an older answer, which `unshow_other` just took away
        if self.content.unchanged_since(node, it.gen):
            node = replace(node, blocks=tuple(it.blocks), size=it.size)
            node = self.content.finish_clean(node)
            with self.state.write() as w:
                w.put_node(node)
            return True
        node = self.content.rebase(node, it.blocks, it.size, it.gen)  # written again: commit
        with self.state.write() as w:  # that too
            w.put_node(node)
            if node.dirty is not None and node.linked:
                with contextlib.suppress(KeyError):
                    w.add_op(Commit(node.ino, path_of(self.state, node.ino)))
        self.wake()
        return True

    async def _commit_at(self, it: _Item, tag: str) -> FileRecord | errors.RemoteError:
        """Commit `it` at `it.op.path` again (after a resolution step moved it)."""
        node = self._now(it)
        try:
            return await self.remote.commit(
                it.op.path, node.rev, it.blocks, it.size, node.mtime_ns, node.mode,
                f"{it.op.commit_id}-{tag}", base_id=node.server_id,
            )  # fmt: skip
        except errors.RemoteError as exc:
            return exc

    async def _place_for(self, node: Node, path: str) -> str:
        """Where a change refused for a missing parent folder goes now.

        Where this device shows the file (the follower moved it with its folder); else where
        the server has its folder now (renamed elsewhere: the file follows it); else the same
        path with its folders re-created (deleted elsewhere: the edit wins, as in Dropbox).
        """
        node = self.state.current(node)
        try:
            here = path_of(self.state, node.ino)
        except KeyError:
            here = path
        if here != path:
            return here
        folder, _, name = path.rpartition("/")
        parent = self.state.node(node.parent)
        if parent is not None and parent.server_id is not None and parent.ino != ROOT_INO:
            try:
                rec: FileRecord | None = await self.remote.meta(file_id=parent.server_id)
            except errors.NotFound:
                rec = None
            if rec is not None and rec.kind == "dir" and rec.path != (folder or "/"):
                log.info("%s: its folder is now %s on the server; following it", path, rec.path)
                return join_path(rec.path, name)
        log.warning("%s: its folder was deleted elsewhere; re-creating it", path)
        await self.conflicts.make_parents(path)
        return path


def _names(exc: errors.Conflict, node: Node | None) -> bool:
    """Whether a 409 `conflict` is about `node`'s own server entry (its revision moved on)."""
    current = exc.current
    return node is not None and current is not None and current.get("id") == node.server_id


def _gen(node: Node) -> int:
    """`node`'s dirty generation (-1 if clean)."""
    return node.dirty.gen if node.dirty is not None else -1


def _small_and_new(node: Node) -> bool:
    dirty = node.dirty
    if dirty is None or dirty.base_blocks or node.size >= MIN_CHUNK_BYTES:
        return False
    return node.size == 0 or dirty.ranges == ((0, node.size),)


def _read_hash_cache(
    files: list[tuple[Path, int]], cache: BlockCacheLike
) -> list[tuple[BlockId, bytes] | None]:
    """Read each small dirty file whole, hash it and put it in the block cache."""
    out: list[tuple[BlockId, bytes] | None] = []
    for path, size in files:
        try:
            with open(path, "rb") as f:
                data = f.read(size)
        except FileNotFoundError:
            out.append(None)
            continue
        if len(data) != size:
            out.append(None)
            continue
        bid = block_id(data)
        if data:
            with contextlib.suppress(CacheFullError):
                cache.put(bid, data)
        out.append((bid, data))
    return out
