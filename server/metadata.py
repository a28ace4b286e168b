"""The metadata service: file-tree operations for one principal, journaled and announced.

Each method runs one database operation (one transaction) in a worker thread and, if it
changed anything, wakes the namespace's long-poll waiters afterwards. Routes call these and
never touch SQL.
"""

from __future__ import annotations

import time

from blockstore.wire import FileRecord, RevisionInfo
from server.config import ServerConfig
from server.db import Database, files, journal, lifecycle, moves, versions
from server.db.accounts import Principal
from server.db.conn import Conn
from server.db.journal import Actor, Delta
from server.db.moves import TrashItem
from server.db.versions import CommitRequest, Limits
from server.errors import ApiError
from server.feed import ChangeFeed
from server.metrics import Metrics


def actor_of(who: Principal) -> Actor:
    """The journal's view of a principal (their root namespace, device and client)."""
    return Actor(who.ns_id, who.user_id, who.user, who.device, who.device_id, who.client)


class Metadata:
    """File tree, versions and the journal, for authenticated callers."""

    def __init__(
        self, db: Database, feed: ChangeFeed, metrics: Metrics, config: ServerConfig
    ) -> None:
        self.db = db
        self.feed = feed
        self.metrics = metrics
        self.limits = Limits(config.max_file_bytes, config.revisions_kept)

    async def meta(self, who: Principal, path: str | None, file_id: int | None) -> FileRecord:
        """A record by path or by id."""
        if path is not None:
            return await self.db.run(files.meta_by_path, who.ns_id, path)
        assert file_id is not None
        return await self.db.run(files.meta_by_id, who.ns_id, file_id)

    async def meta_by_commit(self, who: Principal, commit_id: str) -> FileRecord:
        """The version a commit made (for a client that never got the answer)."""
        return await self.db.run(versions.meta_by_commit, who.ns_id, commit_id)

    async def list_dir(
        self,
        who: Principal,
        path: str | None,
        limit: int,
        after: str | None,
        file_id: int | None = None,
    ) -> tuple[list[FileRecord], str | None]:
        """One page of a directory listing, by path or by id."""
        return await self.db.run(files.list_dir, who.ns_id, path, limit, after, file_id)

    async def commit(self, who: Principal, req: CommitRequest) -> tuple[FileRecord, bool]:
        """A new version; returns (record, created)."""
        start = time.perf_counter()
        rec, created = await self.db.run(versions.commit, actor_of(who), req, self.limits)
        self.metrics.observe_commit(time.perf_counter() - start)
        await self.feed.notify(who.ns_id)
        return rec, created

    async def commit_batch(
        self, who: Principal, reqs: list[CommitRequest | ApiError]
    ) -> list[FileRecord | ApiError]:
        """Several commits in one worker-thread call (each its own transaction, so one
        failing item never undoes another); waiters are woken once at the end."""
        actor = actor_of(who)

        def run_all(conn: Conn) -> list[FileRecord | ApiError]:
            out: list[FileRecord | ApiError] = []
            for req in reqs:
                if isinstance(req, ApiError):
                    out.append(req)
                    continue
                try:
                    out.append(versions.commit(conn, actor, req, self.limits)[0])
                except ApiError as exc:
                    out.append(exc)
            return out

        start = time.perf_counter()
        results = await self.db.run(run_all)
        self.metrics.observe_commit(time.perf_counter() - start)
        await self.feed.notify(who.ns_id)
        return results

    async def mkdir(
        self, who: Principal, path: str, mode: int, parent_id: int | None = None
    ) -> FileRecord:
        """Create a directory (in the folder `parent_id`, if given)."""
        rec = await self.db.run(files.mkdir, actor_of(who), path, mode, parent_id)
        await self.feed.notify(who.ns_id)
        return rec

    async def make_parents(self, who: Principal, path: str) -> None:
        """Create the missing folders above `path`, journaled like `mkdir` (uploads to a new
        folder create it, as Dropbox, S3 and rclone do)."""
        if await self.db.run(files.make_parents, actor_of(who), path):
            await self.feed.notify(who.ns_id)

    async def symlink(
        self, who: Principal, path: str, target: str, parent_id: int | None = None
    ) -> FileRecord:
        """Create a symlink (in the folder `parent_id`, if given)."""
        rec = await self.db.run(files.symlink, actor_of(who), path, target, parent_id)
        await self.feed.notify(who.ns_id)
        return rec

    async def setattr(
        self, who: Principal, path: str, mode: int | None, mtime_ns: int | None
    ) -> FileRecord:
        """chmod / utimens."""
        rec = await self.db.run(files.setattr_, actor_of(who), path, mode, mtime_ns)
        await self.feed.notify(who.ns_id)
        return rec

    async def move(
        self,
        who: Principal,
        src: str,
        dst: str,
        mode: str,
        src_rev: int | None = None,
        dst_rev: int | None = None,
        src_id: int | None = None,
        dst_id: int | None = None,
        dst_parent_id: int | None = None,
    ) -> FileRecord:
        """Move or rename atomically (a file renamed over a file becomes its next revision)."""
        rec = await self.db.run(
            moves.move, actor_of(who), src, dst, mode, keep=self.limits.revisions_kept,
            src_rev=src_rev, dst_rev=dst_rev, src_id=src_id, dst_id=dst_id,
            dst_parent_id=dst_parent_id,
        )  # fmt: skip
        await self.feed.notify(who.ns_id)
        return rec

    async def delete(
        self,
        who: Principal,
        path: str,
        recursive: bool,
        base_rev: int | None = None,
        file_id: int | None = None,
    ) -> FileRecord:
        """Move to the trash (refused if the file is no longer at `base_rev`, or another
        entry than `file_id` has its name)."""
        rec = await self.db.run(moves.delete, actor_of(who), path, recursive, base_rev, file_id)
        await self.feed.notify(who.ns_id)
        return rec

    async def undelete(self, who: Principal, path: str | None, item_id: int | None) -> FileRecord:
        """Bring back from the trash (an item by id, else the newest deleted from `path`)."""
        rec = await self.db.run(moves.undelete, actor_of(who), path, item_id)
        await self.feed.notify(who.ns_id)
        return rec

    async def trash(self, who: Principal) -> list[TrashItem]:
        """The trash, newest first."""
        return await self.db.run(moves.trash, who.ns_id)

    async def revisions(self, who: Principal, path: str, limit: int) -> list[RevisionInfo]:
        """Kept versions, newest first."""
        return await self.db.run(versions.revisions, who.ns_id, path, limit)

    async def set_kept(self, who: Principal, path: str, revision: int, kept: bool) -> RevisionInfo:
        """Mark a version "keep" (thinning never removes it), or unmark it."""
        return await self.db.run(lifecycle.set_kept, who.ns_id, path, revision, kept)

    async def usage_detail(self, who: Principal) -> lifecycle.UsageDetail:
        """What the caller's retained versions hold beside the quota's figure."""
        return await self.db.run(lifecycle.usage_detail, who.user_id)

    async def version_of(self, who: Principal, path: str, revision: int | None) -> FileRecord:
        """A file as of a revision (None: current), with blocks."""
        return await self.db.run(versions.version_of, who.ns_id, path, revision)

    async def restore(self, who: Principal, path: str, revision: int) -> FileRecord:
        """A new revision with an old revision's content."""
        rec = await self.db.run(versions.restore, actor_of(who), path, revision, self.limits)
        await self.feed.notify(who.ns_id)
        return rec

    async def mark_pending(
        self, who: Principal, path: str, reserve: bool, size: int = 0
    ) -> int | None:
        """Journal "someone is changing this file" (R10)."""
        reserved = await self.db.run(versions.mark_pending, actor_of(who), path, reserve, size)
        await self.feed.notify(who.ns_id)
        return reserved

    async def cursor(self, who: Principal) -> int:
        """The journal head."""
        return await self.feed.head(who.ns_id)

    async def delta(self, who: Principal, cursor: int, limit: int) -> Delta:
        """Changes after a cursor."""
        return await self.db.run(journal.delta, who.ns_id, cursor, limit)
