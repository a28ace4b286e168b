"""The server's error tree: each `ApiError` carries an HTTP status and a wire error code.

Services raise these; `server.app` turns them into the JSON body of docs/protocol.md
(`{"error": CODE, "message": TEXT, ...}`) in one place. Anything else that escapes a route is
a bug: it is logged with a request id and answered 500 `internal` without a traceback.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

from blockstore.errors import InvalidPath


class ApiError(Exception):
    """An error answered to the client as JSON with `status` and `code`."""

    status = 500
    code = "internal"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        return {"error": self.code, "message": self.message, **self.extra}


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class IntoItself(BadRequest):
    """400 for moving a folder into its own subtree. Not a malformed request: another device
    may have moved the target folder into this one meanwhile, and the client resolves that
    (the other move wins), so it must tell this apart by code."""

    code = "into_itself"


class BlocksMissing(BadRequest):
    """400 for a commit naming blocks the account does not hold (with `missing`). Not a
    malformed request: the blocks were uploaded and then collected, or never arrived, and the
    client uploads them again, so it must tell this apart by code."""

    code = "blocks_missing"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class ParentMissing(NotFound):
    """404 whose cause is a missing parent directory: a client recreates the parent (edit
    beats delete) instead of dropping the write, so it must tell this apart by code."""

    code = "no_parent"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class Exists(ApiError):
    status = 409
    code = "exists"


class NotEmpty(ApiError):
    status = 409
    code = "not_empty"


class RequestTimeout(ApiError):
    """A request's head or body did not arrive within its deadline: the answer is sent (if
    anyone still listens) and the connection closed, freeing what it held."""

    status = 408
    code = "request_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers["Connection"] = "close"


class BodyIncomplete(ApiError):
    """The connection ended before the body reached its Content-Length: nothing of it is
    committed (a truncated upload must never become a file)."""

    status = 400
    code = "bad_request"


class TooLarge(ApiError):
    status = 413
    code = "too_large"


class RateLimited(ApiError):
    status = 429
    code = "rate_limited"


class TooManyUploads(ApiError):
    """A user has as many unfinished resumable upload sessions as the server allows."""

    status = 429
    code = "too_many_uploads"


class QuotaExceeded(ApiError):
    status = 507
    code = "quota_exceeded"


class InsufficientStorage(ApiError):
    """The server's own disk is full: not the caller's quota, and not their fault."""

    status = 507
    code = "insufficient_storage"


class Internal(ApiError):
    status = 500
    code = "internal"


class Unavailable(ApiError):
    """This server cannot serve now (its database does not answer): a load balancer or a
    monitor asking `/healthz` takes it out of rotation until it answers again."""

    status = 503
    code = "unavailable"


OUT_OF_SPACE = "the server is out of storage space; try again once its administrator freed some"
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_out_of_space(exc: BaseException) -> bool:
    """True for a write refused because the disk (or the server's disk quota) is full: an
    `OSError` with ENOSPC/EDQUOT, or the database's disk-full error (told apart by code or
    type, not text)."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    from server.db import is_disk_full

    return is_disk_full(exc)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside nested exception groups, in order (`exc` itself if none)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it was raised from or during (a failed ROLLBACK hides the write)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def api_error_of(exc: BaseException) -> ApiError | None:
    """The answer a failure means for the client, chosen by exception type: the first
    `ApiError` (also inside exception groups), 507 `insufficient_storage` for a full disk,
    400 for an invalid path; None for anything else (a bug: 500)."""
    for leaf in _leaves(exc):
        if isinstance(leaf, ApiError):
            return leaf
        for cause in _causes(leaf):
            if is_out_of_space(cause):
                return InsufficientStorage(OUT_OF_SPACE)
        if isinstance(leaf, InvalidPath):
            return BadRequest(f"invalid path: {leaf}")
    return None


class AccountError(Exception):
    """An administrative failure the operator caused (unknown user, name taken, bad name)."""
