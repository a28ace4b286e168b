"""Block identity (SHA-256) and the local fast checksum (xxh3).

The block id crosses trust boundaries (dedupe, integrity), so it is collision resistant:
SHA-256 of the plaintext, lowercase hex. `checksum` is xxh3-64 and only ever guards local
data against accidental damage (the cache's check on every read); never use it as identity.
"""

from __future__ import annotations

import hashlib
import re
from typing import NewType

import xxhash

__all__ = ["BLOCK_ID_CHARS", "BlockId", "block_id", "checksum", "is_block_id", "parse_block_id"]

BlockId = NewType("BlockId", str)
"""Lowercase hex SHA-256 of a block's plaintext (64 characters)."""

BLOCK_ID_CHARS = 64

_BLOCK_ID_RE = re.compile(r"[0-9a-f]{64}")


def block_id(data: bytes | bytearray | memoryview) -> BlockId:
    """Return the id of a block: the lowercase hex SHA-256 of its plaintext.

    hashlib releases the GIL for inputs over 2 KiB, so this parallelises across threads.
    """
    return BlockId(hashlib.sha256(data).hexdigest())


def is_block_id(text: object) -> bool:
    """Return True if `text` is a well-formed block id (64 lowercase hex characters)."""
    return isinstance(text, str) and _BLOCK_ID_RE.fullmatch(text) is not None


def parse_block_id(text: str) -> BlockId:
    """Check that `text` is a well-formed block id and return it typed.

    Raises:
        ValueError: unless `text` is exactly 64 lowercase hex characters. Upper case is
            rejected rather than folded, so one block never has two spellings.
    """
    if not is_block_id(text):
        shown = text[:80] if isinstance(text, str) else type(text).__name__
        raise ValueError(f"not a block id (want 64 lowercase hex chars): {shown!r}")
    return BlockId(text)


def checksum(data: bytes | bytearray | memoryview) -> int:
    """Return the xxh3-64 of `data`: a fast local integrity check, never an identity."""
    return xxhash.xxh3_64_intdigest(data)
