"""The server's error tree: each `ApiError` carries an HTTP status and a wire error code.

Services raise these; `server.app` turns them into the JSON body of docs/protocol.md
(`{"error": CODE, "message": TEXT, ...}`) in one place. Anything else that escapes a route is
a bug: it is logged with a request id and answered 500 `internal` without a traceback.
"""

from __future__ import annotations

from typing import Any


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


class Internal(ApiError):
    status = 500
    code = "internal"


class AccountError(Exception):
    """An administrative failure the operator caused (unknown user, name taken, bad name)."""
