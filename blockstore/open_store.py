"""Opening the block store a configuration names: a local directory or `s3://bucket/prefix`.

The one place that turns a location into a backend, so the server's `blocks` and
`archive` settings and the admin commands all open stores the same way, and the one start
check that stops a server with a clear error before it answers anything.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from .s3store import S3BlockStore, S3Settings
from .store import BlockStore, LocalDirStore

__all__ = ["check_block_store", "open_block_store"]

_S3_SCHEME = "s3"


def open_block_store(location: str | Path, s3: S3Settings | None = None) -> BlockStore:
    """A `LocalDirStore` for a directory, an `S3BlockStore` for `s3://bucket[/prefix]`.

    A directory ignores `s3`, so one configuration can share its S3 settings between a
    local and an S3 tier. Opening sends no request: call `check_block_store` at start.

    Raises:
        ValueError: another URL scheme, or an `s3://` URL without a bucket.
    """
    if isinstance(location, Path):
        return LocalDirStore(location)
    parts = urlsplit(location)
    if parts.scheme == _S3_SCHEME:
        if not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"block store {location!r}: expected s3://bucket/prefix")
        return S3BlockStore(parts.netloc, parts.path, s3)
    if "://" in location:
        raise ValueError(f"block store {location!r}: only a directory or s3:// is supported")
    return LocalDirStore(Path(location))


def check_block_store(store: BlockStore) -> None:
    """Verify at start that `store` can be used (for S3: the bucket exists and the
    credentials may write, read and list it; a directory was made when it was opened).

    Raises:
        blockstore.errors.S3StoreError: the subclass says what is wrong.
    """
    if isinstance(store, S3BlockStore):
        store.check()
