"""The one place where exceptions become errno values for the kernel.

Only `pyfuse3.FUSEError` may leave a request handler (anything else takes down
`pyfuse3.main`), so every handler of `mountfs.ops` is wrapped in `map_errors`.

- `VfsError` / `OSError`: their errno (ENOENT, ENOSPC, ...).
- `syncd.errors.Offline` (block not cached, server unreachable after the bounded wait) and
  every other `SyncError`: EIO; the log line was written where the wait ended.
- `CorruptBlockError`, `trio.TooSlowError`: EIO.
- `InvalidPath`: EINVAL.
- anything else is a bug: logged with its traceback, EIO (re-raised when `STRICT` is set,
  which the VFS tests do).
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from blockstore.errors import BlockstoreError, InvalidPath
from syncd.errors import Offline, SyncError

__all__ = ["errno_of", "map_errors"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


def errno_of(exc: BaseException) -> int:
    """The errno a failure shows to the program that made the syscall."""
    if isinstance(exc, InvalidPath):
        return errno.EINVAL
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, Offline):
        log.warning("EIO: the server is unreachable and the data is not cached: %s", exc)
        return errno.EIO
    if isinstance(exc, SyncError | BlockstoreError | trio.TooSlowError):
        log.warning("I/O error: %s", exc)
        return errno.EIO
    log.error("unexpected error in a filesystem request", exc_info=exc)
    return errno.EIO


def map_errors(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Wrap a handler so that only `pyfuse3.FUSEError` leaves it."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:  # the errno boundary: everything maps
            raise pyfuse3.FUSEError(errno_of(exc)) from exc

    return wrapper
