"""Telling the kernel to forget cached entries and pages, from outside request handlers.

`invalidate_inode` may block (pyfuse3 docs), and an invalidation issued while handling a
related request can deadlock; so requests only enqueue here and one task does the calls,
`invalidate_inode` in a worker thread, entries with `invalidate_entry_async`.
"""

from __future__ import annotations

import logging

import pyfuse3
import trio

__all__ = ["Invalidator"]

log = logging.getLogger(__name__)


class Invalidator:
    def __init__(self) -> None:
        self._send, self._recv = trio.open_memory_channel[tuple[int, str, int] | int](10_000)

    def entry(self, parent: int, name: str, ino: int) -> None:
        try:
            self._send.send_nowait((parent, name, ino))
        except trio.WouldBlock:
            log.debug("invalidation queue full; entry %s left to its timeout", name)

    def inode(self, ino: int) -> None:
        try:
            self._send.send_nowait(ino)
        except trio.WouldBlock:
            log.debug("invalidation queue full; inode %d left to its timeout", ino)

    async def attributes_now(self, ino: int) -> None:
        """Make the kernel drop `ino`'s cached attributes, and wait until it has. For a
        request handler (open): attributes only, which waits for no page or inode lock."""
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, pyfuse3.InodeT(ino), True)
        except OSError as exc:
            log.debug("invalidate attributes of %d: %s", ino, exc)

    async def run(self) -> None:
        async for item in self._recv:
            try:
                if isinstance(item, int):
                    await trio.to_thread.run_sync(pyfuse3.invalidate_inode, pyfuse3.InodeT(item))
                else:
                    parent, name, _ = item
                    pyfuse3.invalidate_entry_async(
                        pyfuse3.InodeT(parent), pyfuse3.FileNameT(name.encode()),
                        ignore_enoent=True,
                    )  # fmt: skip
            except OSError as exc:
                log.debug("invalidate %r: %s", item, exc)
