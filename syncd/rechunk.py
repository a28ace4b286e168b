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

import trio

from blockstore.aio import run_cpu
from blockstore.chunker import MAX_CHUNK_BYTES, chunk_bytes
from blockstore.ids import BlockId, block_id

__all__ = ["WINDOW_BYTES", "NewChunk", "Plan", "plan", "rechunk"]

WINDOW_BYTES = 2 * MAX_CHUNK_BYTES
"""Bytes read and chunked per step: at least two max-size chunks, so the one cut chunk at
the end of a window (dropped and re-read next step) never holds up progress."""

Blocks = Sequence[tuple[BlockId, int]]


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
    pos = p.start
    while pos < new_size:
        want = min(WINDOW_BYTES, new_size - pos)
        buf = await read(pos, want)
        if len(buf) != want:
            raise OSError(f"short read of dirty content at {pos}: {len(buf)} of {want}")
        final = pos + want >= new_size
        pieces = await run_cpu(_chunk_window, buf, pos, final)
        for off, bid, data in pieces:
            out.append((bid, len(data)))
            at = old_at.get(off)
            if at is None or at >= len(base_blocks) or base_blocks[at][0] != bid:
                await sink(NewChunk(off, bid, data))
            end = off + len(data)
            if end >= p.resync_after and end < old_total and end in old_at:
                out.extend(base_blocks[old_at[end] :])
                return out
            pos = end
        await trio.lowlevel.checkpoint()
    return out
