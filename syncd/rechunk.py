"""Delta re-chunking (design §3): only the part of a file around its edits is chunked again.

A dirty file is its base revision's block list plus dirty byte ranges (positional: bytes
outside the ranges are the base's bytes at the same offset). Chunking starts at the start of
the base chunk holding the first dirty byte and stops as soon as a new boundary falls on an
old boundary past the last dirty byte: content-defined chunking is deterministic from a
boundary, so from there on the old chunk list is reused as is. A 1-byte change in a 256 MiB
file reads and hashes about two chunks, not the file.

`plan()` is pure; `rechunk()` reads the content through a callback (dirty data and base
blocks; see `ContentStore.read`) and hands every new chunk to a sink as it is found, so
memory stays bounded by one window whatever the file size.
"""

from __future__ import annotations

import bisect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import outcome
import trio

from blockstore.aio import run_cpu
from blockstore.chunker import MAX_CHUNK_BYTES, chunk_bytes
from blockstore.ids import BlockId, block_id

__all__ = ["WINDOW_BYTES", "NewChunk", "Plan", "plan", "rechunk"]

WINDOW_BYTES = 2 * MAX_CHUNK_BYTES
"""Bytes read per step. A step chunks them after the one chunk the step before cut at its
end (dropped there, kept in memory): at least two max-size chunks, so that cut chunk never
holds up progress."""

Blocks = Sequence[tuple[BlockId, int]]


class ShortRead(OSError):
    """The content ended before its recorded size: written meanwhile, or its dirty data
    was lost (the uploader tells which)."""


@dataclass(frozen=True, slots=True)
class NewChunk:
    """A chunk that is not in the base block list at its position (maybe on the server)."""

    offset: int
    block_id: BlockId
    data: bytes


@dataclass(frozen=True, slots=True)
class Plan:
    """Where re-chunking starts and from where old boundaries may be reused."""

    start_index: int
    """Base blocks `[:start_index]` are kept; chunking starts at their end."""
    start: int
    resync_after: int
    """A new boundary at or past this offset that is also an old boundary ends chunking."""


def plan(
    base_blocks: Blocks, base_size: int, ranges: Sequence[tuple[int, int]], new_size: int
) -> Plan:
    """Decide the re-chunk window for a dirty file.

    Args:
        base_blocks: the block list the edit started from.
        base_size: bytes of the base still valid (lower after a truncate).
        ranges: the dirty ranges (sorted, merged).
        new_size: the file's size now.
    """
    total = sum(s for _, s in base_blocks)
    if not base_blocks:
        return Plan(0, 0, new_size + 1)
    first = ranges[0][0] if ranges else new_size
    last = ranges[-1][1] if ranges else 0
    if base_size < total or new_size != total:
        first = min(first, max(0, min(base_size, new_size, total) - 1))
        last = new_size + 1  # the tail changed: nothing after it can be reused
    starts: list[int] = []
    pos = 0
    for _, size in base_blocks:
        starts.append(pos)
        pos += size
    i = max(0, bisect.bisect_right(starts, first) - 1)
    return Plan(i, starts[i], last)


def _chunk_window(buf: bytes, base: int, final: bool) -> list[tuple[int, BlockId, bytes]]:
    chunks = chunk_bytes(buf)
    if not final and len(chunks) > 1:
        chunks = chunks[:-1]  # cut by the window's end, not by content: chunk it again
    return [(base + c.offset, block_id(c.data), c.data) for c in chunks]


async def rechunk(
    base_blocks: Blocks,
    p: Plan,
    new_size: int,
    read: Callable[[int, int], Awaitable[bytes]],
    sink: Callable[[NewChunk], Awaitable[None]],
) -> list[tuple[BlockId, int]]:
    """Return the new block list; every chunk not reused from the base goes to `sink`.

    Each window is read while the one before it is chunked and hashed, when the next one is
    certainly needed (no old boundary can end chunking first): the dirty file is read with
    O_DIRECT, so a read waits for the disk (`ContentStore.read`).

    Args:
        read: `read(offset, size)` returns the file's current bytes there.
        sink: receives new chunks in file order (it may upload them).
    """
    out: list[tuple[BlockId, int]] = list(base_blocks[: p.start_index])
    old_at: dict[int, int] = {}
    pos = 0
    for idx, (_, size) in enumerate(base_blocks):
        old_at[pos] = idx
        pos += size
    old_total = pos
    error: Exception | None = None
    async with trio.open_nursery() as nursery:
        try:
            return await _steps(base_blocks, p, new_size, old_at, old_total,
                                _ReadAhead(nursery, read), sink, out)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - raised as itself, not in a nursery's group
            error = exc
        finally:
            nursery.cancel_scope.cancel()  # a read ahead that is no longer wanted
    assert error is not None
    raise error


async def _steps(
    base_blocks: Blocks,
    p: Plan,
    new_size: int,
    old_at: dict[int, int],
    old_total: int,
    ahead: _ReadAhead,
    sink: Callable[[NewChunk], Awaitable[None]],
    out: list[tuple[BlockId, int]],
) -> list[tuple[BlockId, int]]:
    pos = p.start
    read_end = pos  # the bytes [pos, read_end) are in `carry`, read but not yet cut
    carry: bytes | memoryview = b""
    while pos < new_size:
        want = min(WINDOW_BYTES, new_size - read_end)
        if not ahead.started:
            ahead.start(read_end, want)
        data = await ahead.take()
        if len(data) != want:
            raise ShortRead(f"short read of dirty content at {read_end}: {len(data)} of {want}")
        buf = b"".join((carry, data)) if carry else data  # one copy of the carried chunk
        read_end += want
        final = read_end >= new_size
        if not final and (read_end < p.resync_after or pos >= old_total):
            # No chunk of this window can end re-chunking: the next window is needed.
            ahead.start(read_end, min(WINDOW_BYTES, new_size - read_end))
        pieces = await run_cpu(_chunk_window, buf, pos, final)
        start = pos
        for off, bid, chunk in pieces:
            out.append((bid, len(chunk)))
            at = old_at.get(off)
            if at is None or at >= len(base_blocks) or base_blocks[at][0] != bid:
                await sink(NewChunk(off, bid, chunk))
            end = off + len(chunk)
            if end >= p.resync_after and end < old_total and end in old_at:
                out.extend(base_blocks[old_at[end] :])
                return out
            pos = end
        carry = memoryview(buf)[pos - start :]
        await trio.lowlevel.checkpoint()
    return out


class _ReadAhead:
    """One `read` running in the background; its error is raised by `take`, as itself."""

    def __init__(self, nursery: trio.Nursery, read: Callable[[int, int], Awaitable[bytes]]) -> None:
        self._nursery = nursery
        self._read = read
        self._done: trio.Event | None = None
        self._result: outcome.Outcome[bytes] | None = None

    @property
    def started(self) -> bool:
        return self._done is not None

    def start(self, off: int, size: int) -> None:
        done = self._done = trio.Event()

        async def run() -> None:
            try:
                self._result = outcome.Value(await self._read(off, size))
            except Exception as exc:  # noqa: BLE001 - `take` raises it; cancellation propagates
                self._result = outcome.Error(exc)
            done.set()

        self._nursery.start_soon(run)

    async def take(self) -> bytes:
        assert self._done is not None, "start() first"
        await self._done.wait()
        result, self._result, self._done = self._result, None, None
        assert result is not None
        return result.unwrap()
