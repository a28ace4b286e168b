"""Content-defined chunking (FastCDC 2020, through pyfastcdc's compiled extension).

Owns where blocks are cut, nothing else (no hashing beyond `ChunkRef.of`, no I/O beyond
reading the given stream). Boundaries depend only on content, so an insertion near the
start of a file changes about one chunk instead of every fixed-size block after it
(design §3). The boundaries are part of the on-server format in practice (they decide
dedupe), so they are pinned by a golden test: a pyfastcdc upgrade that moves them fails it.

pyfastcdc's `avg_size` is not the average: the real average is about `avg_size + min_size`
(its docstring; paper §3.4 "cut-point skipping"), so we pass `AVG - MIN` = 768 KiB, which
gives a measured mean of ~1.0 MiB on random data.

Memory: `chunk_stream` holds pyfastcdc's 2 x MAX buffer (8 MiB) plus the current chunk,
whatever the input size. pyfastcdc's streamed memoryview is only valid until the next chunk
is produced, so every chunk is copied into `bytes` before it is yielded.

Thread safety: a `FastCDC` object must not be shared between concurrent cuts, so each call
builds its own (construction is cheap).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from pyfastcdc import FastCDC

from .ids import BlockId, block_id

__all__ = [
    "AVG_CHUNK_BYTES",
    "MAX_CHUNK_BYTES",
    "MIN_CHUNK_BYTES",
    "Chunk",
    "ChunkRef",
    "chunk_bytes",
    "chunk_file",
    "chunk_stream",
]

MIN_CHUNK_BYTES = 256 * 1024
AVG_CHUNK_BYTES = 1024 * 1024
MAX_CHUNK_BYTES = 4 * 1024 * 1024

# pyfastcdc's real average is avg_size + min_size (see module docstring).
_FASTCDC_AVG_PARAM = AVG_CHUNK_BYTES - MIN_CHUNK_BYTES
_NORMALIZED_CHUNKING: Literal[0, 1, 2, 3] = 1
_GEAR_SEED = 0  # the reference gear table; changing it moves every boundary


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """A chunk as a file's block list names it: its id and plaintext size."""

    block_id: BlockId
    size: int

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview) -> ChunkRef:
        """Return the reference of `data` (hashes it: run off the trio thread)."""
        return cls(block_id(data), len(data))


@dataclass(frozen=True, slots=True)
class Chunk:
    """One content-defined piece of a file: where it starts and its bytes (owned copy)."""

    offset: int
    data: bytes

    @property
    def end(self) -> int:
        """Offset one past the chunk's last byte."""
        return self.offset + len(self.data)

    def ref(self) -> ChunkRef:
        """Return the chunk's `ChunkRef` (hashes it: run off the trio thread)."""
        return ChunkRef.of(self.data)


def _fastcdc() -> FastCDC:
    return FastCDC(
        _FASTCDC_AVG_PARAM,
        min_size=MIN_CHUNK_BYTES,
        max_size=MAX_CHUNK_BYTES,
        normalized_chunking=_NORMALIZED_CHUNKING,
        seed=_GEAR_SEED,
    )


def chunk_stream(f: BinaryIO, *, base_offset: int = 0) -> Iterator[Chunk]:
    """Cut everything `f` yields from its current position into chunks, in bounded memory.

    Args:
        f: a binary stream with `readinto` (preferred) or `read`.
        base_offset: added to every `Chunk.offset`, for re-chunking a file from the start
            of an existing chunk (the stream must be positioned there).

    An empty stream yields nothing. Blocking: reads `f`; run off the trio thread.
    """
    for piece in _fastcdc().cut_stream(f):
        # The memoryview points into pyfastcdc's reused buffer: copy before yielding.
        yield Chunk(base_offset + piece.offset, bytes(piece.data))


def chunk_bytes(buf: bytes | bytearray | memoryview) -> list[Chunk]:
    """Cut an in-memory buffer into chunks (same boundaries as `chunk_stream`)."""
    return [Chunk(piece.offset, bytes(piece.data)) for piece in _fastcdc().cut_buf(buf)]


def chunk_file(path: Path | str) -> Iterator[Chunk]:
    """Cut the file at `path` into chunks, streaming (the file is open while iterating).

    Reads through a buffered file object rather than pyfastcdc's mmap, so a file that
    shrinks while it is read cannot raise SIGBUS.
    """
    with open(path, "rb") as f:
        yield from chunk_stream(f)
