"""Offline-first metadata: every folder of the tree is listed once, in the background.

After the first mount a device knows only the root; a folder it never opened could not be
listed or written into offline. This task walks the tree breadth first and lists each folder
never listed before (`TreeSync.ensure_listed` merges the answer into the local state), so once
it finishes every folder lists and accepts new files with the server gone. The follower keeps
listed folders current; a folder it learns of later (created, moved in or undeleted
elsewhere) is queued here by `note_folder` and listed in turn, since its contents may not be
in the change feed. Progress is shown by `drive status`.

Concurrency: one task (`run`) on the trio thread; listing goes through `TreeSync`.
"""

from __future__ import annotations

import logging
from collections import deque

import trio

from syncd import errors
from syncd.state import ROOT_INO, StateDB
from syncd.tree import TreeSync

__all__ = ["Mirror"]

log = logging.getLogger(__name__)

DONE_KEY = "mirrored"
RETRY_OFFLINE_S = 5.0


class Mirror:
    """Lists every folder once (see the module docstring); run `run()` in a nursery."""

    def __init__(self, state: StateDB, tree: TreeSync) -> None:
        self.state = state
        self.tree = tree
        self.listed = 0
        """Folders listed by this task in this session."""
        self.complete = bool(state.get_meta(DONE_KEY, False))
        self._todo: deque[int] = deque()
        self._wake = trio.Event()

    def note_folder(self, ino: int) -> None:
        """A folder appeared (or came back) that may hold entries the change feed never
        mentioned: list it again, even if it was listed (or created here) this session."""
        self.tree.fresh.discard(ino)
        self._todo.append(ino)
        self._wake.set()

    def snapshot(self) -> dict[str, object]:
        return {"complete": self.complete and not self._todo, "folders_listed": self.listed}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if not self.complete:
            self._todo.append(ROOT_INO)
        while True:
            while self._todo:
                await self._walk(self._todo.popleft())
            if not self.complete:
                self.complete = True
                with self.state.write() as w:
                    w.set_meta(DONE_KEY, True)
                log.info("every folder is available offline (%d listed)", self.listed)
            self._wake = trio.Event()
            await self._wake.wait()

    async def _walk(self, start: int) -> None:
        """List `start` and every folder below it not listed yet, breadth first."""
        queue = deque([start])
        while queue:
            ino = queue.popleft()
            node = self.state.node(ino)
            if node is None or node.kind != "dir" or (not node.linked and ino != ROOT_INO):
                continue
            if not node.listed or ino == start:
                await self._list(ino)
            for _, child in self.state.children(ino):
                sub = self.state.node(child)
                if sub is not None and sub.kind == "dir":
                    queue.append(child)

    async def _list(self, ino: int) -> None:
        while True:
            try:
                await self.tree.ensure_listed(ino)
            except errors.Offline:
                await trio.sleep(RETRY_OFFLINE_S)  # the server is away: try again later
                continue
            except errors.RemoteError as exc:
                log.warning("could not list folder %d for offline use: %s", ino, exc)
                return
            except Exception as exc:  # a bug must not take the mount down with this task
                log.error("listing folder %d for offline use crashed", ino, exc_info=exc)
                return
            self.listed += 1
            return
