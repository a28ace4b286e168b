"""The exceptions `syncd` raises on purpose, so callers map them in one place each.

```
* SyncError
  x RemoteError            the server answered, with an error
    + BadRequest           400
      + IntoItself         400 "into_itself": a folder move into its own subtree
      + BlocksMissing      400 "blocks_missing": a commit names blocks the server lacks
    + Unauthorized         401 (token missing, wrong or revoked)
    + NotFound             404
      + ParentMissing      404 "no_parent": the parent directory of the path does not exist
    + Conflict             409 "conflict" (carries the server's `current` record, or None)
    + Exists               409 "exists"
    + NotEmpty             409 "not_empty"
    + TooLarge             413
    + RateLimited          429 (carries `retry_after` seconds)
    + QuotaExceeded        507
    + ServerError          5xx
      + ServerFull         507 "insufficient_storage": the server's own disk is full
  x Offline                no answer: connection refused, timeout, TLS failure
    + CertificateMismatch  the server's certificate is not the pinned one
  x NotLoggedIn            no client config in this home
```
`mountfs` turns these into errno values; `drive` turns them into one-line messages.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadRequest",
    "BlocksMissing",
    "CertificateMismatch",
    "Conflict",
    "Exists",
    "IntoItself",
    "NotEmpty",
    "NotFound",
    "NotLoggedIn",
    "Offline",
    "ParentMissing",
    "QuotaExceeded",
    "RateLimited",
    "RemoteError",
    "ServerError",
    "ServerFull",
    "SyncError",
    "TooLarge",
    "Unauthorized",
]


class SyncError(Exception):
    """Base of every error `syncd` raises on purpose."""


class RemoteError(SyncError):
    """The server answered with an error status; `body` is its JSON error object."""

    status = 0

    def __init__(self, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.body: dict[str, Any] = body or {}


class BadRequest(RemoteError):
    status = 400


class IntoItself(BadRequest):
    """400 "into_itself": a folder move whose target is inside the folder on the server (the
    target folder was moved into it elsewhere meanwhile)."""


class BlocksMissing(BadRequest):
    """400 "blocks_missing": a commit named blocks the server does not hold (collected since
    they were uploaded, or never stored): upload them again and retry."""


class Unauthorized(RemoteError):
    status = 401


class NotFound(RemoteError):
    status = 404


class ParentMissing(NotFound):
    """404 "no_parent": the path's parent directory is gone (deleted or renamed elsewhere),
    as opposed to the entry itself; the caller re-creates or follows the parent."""


class Conflict(RemoteError):
    """409 "conflict": the file moved on; `current` is its record now (a dict) or None."""

    status = 409

    @property
    def current(self) -> dict[str, Any] | None:
        value = self.body.get("current")
        return value if isinstance(value, dict) else None


class Exists(RemoteError):
    status = 409


class NotEmpty(RemoteError):
    status = 409


class TooLarge(RemoteError):
    status = 413


class RateLimited(RemoteError):
    status = 429

    def __init__(
        self, message: str, body: dict[str, Any] | None = None, retry_after: float = 1.0
    ) -> None:
        super().__init__(message, body)
        self.retry_after = retry_after


class QuotaExceeded(RemoteError):
    status = 507


class ServerError(RemoteError):
    status = 500


class ServerFull(ServerError):
    """The server is out of disk space (not this user's quota): retried with backoff, the
    change stays pending."""

    status = 507


class Offline(SyncError):
    """The server could not be reached (refused, timed out, TLS failure)."""


class CertificateMismatch(Offline):
    """The server presented a certificate other than the pinned one."""


class NotLoggedIn(SyncError):
    """This home has no login yet (run `drive login`)."""
