"""Notices (R10, R17): who is editing what, and what others changed recently.

`Activity` keeps the recent changes of other devices (from the follower) and the files
other devices announced they are editing; the mount writes `snapshot()` into its status file
for `drive status`, and logs one line per notice. `Presence` is the other direction: when a
file in the mount turns dirty it tells the server (`POST /api/v1/editing`, journaled as
`pending`), from its own task, so a write never waits for the network.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from typing import Any

import trio

from blockstore.wire import Change
from syncd import errors
from syncd.remote import RemoteClient
from syncd.state import Node, StateDB
from syncd.tree import path_of

__all__ = ["Activity", "Presence"]

log = logging.getLogger(__name__)

RECENT_KEPT = 50
EDITING_TTL_S = 600.0
ANNOUNCE_AGAIN_S = 30.0


class Activity:
    """Recent remote changes and editing notices (see the module docstring)."""

    def __init__(self, device: str, device_id: int | None = None) -> None:
        self.device = device
        self.device_id = device_id
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_KEPT)
        self.editing: dict[str, dict[str, Any]] = {}

    def note(self, changes: list[Change]) -> None:
        for ch in changes:
            if ch.is_from(self.device, self.device_id):
                continue
            path = ch.file.path
            if ch.op == "pending":
                self.editing[path] = {"path": path, "device": ch.device, "user": ch.user,
                                      "time": ch.time}  # fmt: skip
                log.info("%s on %s is editing %s", ch.user, ch.device, path)
                continue
            self.editing.pop(path, None)
            if ch.old_path:
                self.editing.pop(ch.old_path, None)
            self.recent.append({"op": ch.op, "path": path, "old_path": ch.old_path,
                                "device": ch.device, "user": ch.user, "time": ch.time})  # fmt: skip
            log.info("%s on %s: %s %s", ch.user, ch.device, ch.op, path)

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        editing = [e for e in self.editing.values() if now - float(e["time"]) < EDITING_TTL_S]
        return {"recent": list(self.recent), "editing": editing}


class Presence:
    """Announces local edits to the server off the request path."""

    def __init__(self, state: StateDB, remote: RemoteClient) -> None:
        self.state = state
        self.remote = remote
        self._send, self._recv = trio.open_memory_channel[int](1000)
        self._last: dict[int, float] = {}
        self.announced = 0

    def announce(self, node: Node) -> None:
        """`node` just turned dirty (called from the write path: never blocks)."""
        if node.server_id is None:
            return  # a new file: nobody else can be looking at it yet
        with contextlib.suppress(trio.WouldBlock):
            self._send.send_nowait(node.ino)

    async def run(self) -> None:
        async for ino in self._recv:
            now = trio.current_time()
            if now - self._last.get(ino, -ANNOUNCE_AGAIN_S) < ANNOUNCE_AGAIN_S:
                continue
            self._last[ino] = now
            try:
                path = path_of(self.state, ino)
            except KeyError:
                continue
            try:
                with trio.move_on_after(10):
                    await self.remote.editing(path)
                    self.announced += 1
            except errors.SyncError as exc:
                log.debug("could not announce editing %s: %s", path, exc)
