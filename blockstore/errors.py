"""The exceptions every `blockstore` caller may catch.

One small module so that `server`, `syncd` and `mountfs` can map these to HTTP statuses or
errnos in one place each, without importing the modules that raise them.
"""

from __future__ import annotations

__all__ = [
    "BlockNotFound",
    "BlockTooLarge",
    "BlockstoreError",
    "CacheFullError",
    "CorruptBlockError",
    "InvalidPath",
    "KeyUnwrapError",
    "S3BucketMissing",
    "S3CredentialsRejected",
    "S3StoreError",
    "S3Unreachable",
    "WireFormatError",
]


class BlockstoreError(Exception):
    """Base class of every error raised on purpose by `blockstore`."""


class CorruptBlockError(BlockstoreError):
    """A frame failed to decode, decrypt or verify.

    Raised instead of ever returning bytes that might be wrong: tampered, truncated or
    swapped frames, wrong keys, unknown format versions, plaintext whose SHA-256 is not the
    block id it was stored under.
    """


class BlockTooLarge(CorruptBlockError):
    """A frame whose plaintext is (or declares itself) over the size limit: refused before
    it is decompressed, and told apart from damage (a server answers 413, not 400)."""


class KeyUnwrapError(CorruptBlockError):
    """A wrapped data key could not be unwrapped (wrong master key, wrong account, damage)."""


class BlockNotFound(BlockstoreError, LookupError):
    """The store holds no object under the requested key."""


class S3StoreError(BlockstoreError):
    """The S3 block store failed in a way not told apart below (after its retries)."""


class S3BucketMissing(S3StoreError):
    """The bucket of an S3 block store does not exist."""


class S3CredentialsRejected(S3StoreError):
    """The S3 endpoint refused the credentials (unknown key, wrong secret, no permission)."""


class S3Unreachable(S3StoreError):
    """The S3 endpoint cannot be reached (no connection, even after retries)."""


class CacheFullError(BlockstoreError):
    """The block cache cannot make room: everything left is pinned (or the block is too big)."""


class InvalidPath(BlockstoreError, ValueError):
    """A drive path breaks the rules of docs/protocol.md ("Paths"). The message says which."""


class WireFormatError(BlockstoreError, ValueError):
    """A JSON body does not have the shape of the wire record it claims to be."""
