"""Chunker properties: lossless, deterministic, bounded sizes, local effect of edits."""

from __future__ import annotations

import hashlib
import io
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockstore.chunker import (
    MAX_CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    Chunk,
    ChunkRef,
    chunk_bytes,
    chunk_file,
    chunk_stream,
)
from blockstore.ids import block_id

MIB = 1024 * 1024


class ShortReads(io.RawIOBase):
    """A stream that returns at most `step` bytes per read, like a pipe or socket."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self._step, len(self._data) - self._pos)
        buf[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def _sample(seed: int, size: int, repetitive: bool) -> bytes:
    rng = random.Random(seed)
    if not repetitive:
        return rng.randbytes(size)
    # Text-like: a small vocabulary of lines, so zstd and CDC see repeated content.
    words = [rng.randbytes(rng.randint(2, 9)).hex().encode() for _ in range(500)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=12)) + b"\n"
    return bytes(out[:size])


def _check_chunks(chunks: list[Chunk], data: bytes) -> None:
    assert b"".join(c.data for c in chunks) == data
    offset = 0
    for i, chunk in enumerate(chunks):
        assert chunk.offset == offset
        offset = chunk.end
        assert 0 < len(chunk.data) <= MAX_CHUNK_BYTES
        if i < len(chunks) - 1:
            assert len(chunk.data) >= MIN_CHUNK_BYTES
    assert offset == len(data)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    size=st.one_of(st.integers(0, 64 * 1024), st.integers(0, 12 * MIB)),
    repetitive=st.booleans(),
    step=st.sampled_from([1 << 12, 100_003, 1 << 20, 1 << 24]),
)
def test_chunks_concatenate_deterministic_bounded(seed, size, repetitive, step):
    data = _sample(seed, size, repetitive)
    chunks = chunk_bytes(data)
    _check_chunks(chunks, data)
    assert chunk_bytes(data) == chunks
    streamed = list(chunk_stream(ShortReads(data, step)))
    assert streamed == chunks


def test_empty_input_has_no_chunks():
    assert chunk_bytes(b"") == []
    assert list(chunk_stream(io.BytesIO(b""))) == []


def test_small_input_is_one_chunk():
    assert chunk_bytes(b"abc") == [Chunk(0, b"abc")]


def test_base_offset_shifts_offsets_only():
    data = _sample(7, 3 * MIB, repetitive=False)
    plain = list(chunk_stream(io.BytesIO(data)))
    shifted = list(chunk_stream(io.BytesIO(data), base_offset=10 * MIB))
    assert [c.data for c in shifted] == [c.data for c in plain]
    assert [c.offset for c in shifted] == [c.offset + 10 * MIB for c in plain]


def test_chunk_file_matches_chunk_bytes(tmp_path):
    data = _sample(8, 5 * MIB + 17, repetitive=True)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert list(chunk_file(path)) == chunk_bytes(data)


def test_chunk_ref():
    chunk = Chunk(0, b"hello")
    assert chunk.ref() == ChunkRef(block_id(b"hello"), 5) == ChunkRef.of(b"hello")


def test_average_is_about_one_mib():
    data = random.Random(3).randbytes(64 * MIB)
    sizes = [len(c.data) for c in chunk_bytes(data)]
    assert 0.75 * MIB < sum(sizes) / len(sizes) < 1.35 * MIB


@pytest.fixture(scope="module")
def big_random() -> bytes:
    return random.Random(20261122).randbytes(64 * MIB)


def _changed_chunks(old: bytes, new: bytes) -> int:
    """How many chunks of `new` are not chunks of `old` (what an upload would send)."""
    before = {block_id(c.data) for c in chunk_bytes(old)}
    return sum(1 for c in chunk_bytes(new) if block_id(c.data) not in before)


@pytest.mark.parametrize("where", [0, 1, 32 * 1024 * 1024 + 12345, -1])
def test_one_byte_change_touches_at_most_two_chunks(big_random, where):
    edited = bytearray(big_random)
    edited[where] ^= 0xFF
    assert _changed_chunks(big_random, bytes(edited)) <= 2


def test_insertion_at_start_touches_at_most_two_chunks(big_random):
    inserted = random.Random(5).randbytes(100) + big_random
    assert _changed_chunks(big_random, inserted) <= 2


def test_insertion_in_middle_touches_at_most_two_chunks(big_random):
    mid = 40 * MIB + 999
    inserted = big_random[:mid] + b"x" * 100 + big_random[mid:]
    assert _changed_chunks(big_random, inserted) <= 2


# Boundaries decide dedupe across every stored file: if a pyfastcdc upgrade or a parameter
# change moves them, this test fails and the change must be made deliberately.
GOLDEN_LENGTHS = [
    908015, 2059202, 454195, 266197, 874946, 2385099, 873781, 1112336, 1337147, 1619229,
    1862440, 925391, 2474117, 2157275, 816736,
]  # fmt: skip
GOLDEN_DIGEST = "b1bf2495e1a433262c059721e1eb68b6c9a8e7e665230b8d3deff56e7f9f9e3c"


def test_golden_boundaries():
    noise = hashlib.shake_128(b"drive golden chunking v1").digest(16 * MIB)
    text = b"".join(
        b"line %d: the quick brown fox jumps over the lazy dog\n" % i for i in range(60000)
    )
    data = noise[: 12 * MIB] + text + noise[12 * MIB :]
    chunks = chunk_bytes(data)
    assert [len(c.data) for c in chunks] == GOLDEN_LENGTHS
    digest = hashlib.sha256(b"".join(hashlib.sha256(c.data).digest() for c in chunks))
    assert digest.hexdigest() == GOLDEN_DIGEST
    assert list(chunk_stream(io.BytesIO(data))) == chunks
