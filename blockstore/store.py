"""Where sealed blocks live at rest: the `BlockStore` seam and the local-directory backend.

Owns durable, atomic storage of opaque byte strings under string keys; knows nothing of
sealing, accounts or refcounts (the server does that). `blockstore.s3store` is the other
backend behind the same Protocol; `blockstore.open_store` picks one from a location.

`LocalDirStore` layout. Keys are validated and their segments encoded by
`blockstore.store_keys` (the encoding never contains `.`), and objects are fanned out by
the first two and next two characters of their name::

    root/<seg>/.../<name[0:2]>/<name[2:4]>/<name>.blk     a complete object
    root/<seg>/.../<name[0:2]>/<name[2:4]>/.tmp-<...>     a write in progress (or stale)

Directory names never contain `.`, object files always end in `.blk` and temporary files
start with `.`, so no key's object can collide with another key's directory or with a
temporary file, and `keys()` can invert the mapping exactly.

Atomicity: `put` writes a private temporary file (with O_DIRECT where the filesystem allows,
`blockstore.direct_write`), fsyncs it, then hard-links it to the
final name (which fails if the object already exists) and fsyncs the directory. A reader
sees either no object or the complete one, even if the writer is killed at any point.
Concurrent writers of one key are safe: exactly one link wins (returns True); the others
find the object present (return False) and delete their temporary file. A killed writer
may leave a temporary file behind: `keys()` ignores it and `remove_stale_temp_files`
deletes it. Fan-out directories are never removed, so a concurrent `put` cannot lose its
directory under it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from .direct_write import write_new_file
from .errors import BlockNotFound
from .fsutil import fsync_dir
from .store_keys import decode_segment, encode_key, encode_prefix, encode_segment

__all__ = ["STALE_TEMP_SECONDS", "BlockStore", "LocalDirStore"]

log = logging.getLogger(__name__)

STALE_TEMP_SECONDS = 3600
"""A temporary file older than this belongs to a dead writer (writes take seconds at most)."""

_SUFFIX = ".blk"
_TMP_PREFIX = ".tmp-"
_FILE_MODE = 0o600
_DIR_MODE = 0o700


@runtime_checkable
class BlockStore(Protocol):
    """Durable key -> bytes storage with atomic, idempotent puts.

    Keys are `/`-separated, non-empty segments without NUL, `.` or `..`; the last segment
    (the object name) has at least 4 characters (a block id in practice). Implementations
    are thread safe and never expose a partially written object.
    """

    def put(self, key: str, data: bytes | bytearray | memoryview) -> bool:
        """Store `data` under `key` unless present; True if this call stored it."""
        ...

    def get(self, key: str) -> bytes:
        """Return the object; raises `BlockNotFound` if absent."""
        ...

    def has(self, key: str) -> bool:
        """Return True if a complete object exists under `key`."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing object is fine."""
        ...

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Yield every key starting with `prefix` (string prefix), in no particular order."""
        ...

    def size(self, key: str) -> int:
        """Return the object's size in bytes; raises `BlockNotFound` if absent."""
        ...


class LocalDirStore:
    """A `BlockStore` in a local directory (see the module docstring for the layout).

    All methods block on disk I/O: call them through `blockstore.aio.run_io` from trio.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalDirStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        parts = encode_key(key)
        name = key.rpartition("/")[2]
        fan_out = [encode_segment(name[0:2], key), encode_segment(name[2:4], key)]
        return self.root.joinpath(*parts[:-1], *fan_out, parts[-1] + _SUFFIX)

    def _make_dirs(self, directory: Path) -> None:
        """Create `directory` and missing parents, fsyncing each new entry's parent."""
        missing: list[Path] = []
        current = directory
        while not current.is_dir():
            missing.append(current)
            current = current.parent
        for new_dir in reversed(missing):
            try:
                new_dir.mkdir(mode=_DIR_MODE)
            except FileExistsError:
                continue  # a concurrent writer made it; it fsyncs the parent itself
            fsync_dir(new_dir.parent)

    def put(self, key: str, data: bytes | bytearray | memoryview) -> bool:
        """Store `data` under `key` atomically and durably, unless the object exists.

        Returns:
            True if this call stored the object, False if it was already there (keys are
            content addressed: the existing object is kept, never overwritten).
        """
        path = self._path(key)
        if path.exists():
            return False
        self._make_dirs(path.parent)
        tmp = path.with_name(f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        try:
            try:
                write_new_file(fd, data)  # O_DIRECT: no page-cache copy for a fsync'd file
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                # No hard links here: rename is atomic too, it just cannot tell us whether
                # a concurrent writer of the same (content-addressed) key got there first.
                os.rename(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        fsync_dir(path.parent)
        return True

    def get(self, key: str) -> bytes:
        """Return the object stored under `key`.

        Raises:
            BlockNotFound: no object under `key`.
        """
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise BlockNotFound(key) from None

    def has(self, key: str) -> bool:
        """Return True if a complete object is stored under `key`."""
        return self._path(key).exists()

    def size(self, key: str) -> int:
        """Return the size in bytes of the object under `key`.

        Raises:
            BlockNotFound: no object under `key`.
        """
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise BlockNotFound(key) from None

    def delete(self, key: str) -> None:
        """Remove the object under `key` (missing is fine). Directories are kept."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Yield every stored key that starts with `prefix`; temporary files are skipped.

        Whole leading segments of `prefix` narrow the directory walk; the rest filters.
        """
        whole = encode_prefix(prefix)
        if whole is None:
            return  # no valid key has such a prefix
        start = self.root.joinpath(*whole)
        base = [decode_segment(p) for p in whole]
        for dirpath, _dirnames, filenames in os.walk(start):
            rel = Path(dirpath).relative_to(start).parts
            if len(rel) < 2:
                continue
            segments = base + [decode_segment(p) for p in rel[:-2]]
            for filename in filenames:
                if not filename.endswith(_SUFFIX) or filename.startswith("."):
                    continue
                key = "/".join([*segments, decode_segment(filename[: -len(_SUFFIX)])])
                if key.startswith(prefix):
                    yield key

    def remove_stale_temp_files(self, older_than_seconds: float = STALE_TEMP_SECONDS) -> int:
        """Delete temporary files left by writers that died; return how many.

        Only files older than `older_than_seconds` are touched, so writes in progress in
        this or another process are safe. Walks the whole tree: run it at start-up in a
        worker thread, not on the trio thread.
        """
        cutoff = time.time() - older_than_seconds
        removed = 0
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for filename in filenames:
                if not filename.startswith(_TMP_PREFIX):
                    continue
                path = os.path.join(dirpath, filename)
                try:
                    if os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
                except FileNotFoundError:
                    continue
        if removed:
            log.info("removed %d stale temporary files under %s", removed, self.root)
        return removed
