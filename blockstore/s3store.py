"""Sealed blocks in an S3-compatible object store (`s3://bucket/prefix`), through obstore.

obstore rather than boto3: it moves a 1 MiB block with less than half the client CPU and
more throughput (docs/performance.md "S3 client"), and it releases the GIL while it waits.

Layout: the object of a key is `{prefix}/{encoded segments}` (`blockstore.store_keys`),
one object per key with no fan-out (S3 partitions a bucket by itself), so the blocks of
one account are one listing by prefix (garbage collection, deleting a user). Encoded
segments never contain `.`: the start check's probe object lives under `.check/` and no
key can name it; objects of other programs whose names hold a `.` are not listed.

Atomicity: an S3 PUT is atomic, and `put` is a conditional create (`If-None-Match: *`),
so of concurrent writers of one key exactly one is told True; keys are content addressed,
so an existing object is never overwritten. A retried create whose first attempt did
land reports False: the object is there either way.

Retries: obstore retries connection errors, dropped connections and 5xx answers with
exponential backoff and jitter, within `RetryPolicy`. What still fails is raised as one
of the types in `blockstore.errors`: `S3BucketMissing`, `S3CredentialsRejected`,
`S3Unreachable`, else `S3StoreError`. Only writes can tell a missing bucket from a missing
object (a read of either is a 404), so `check` (run at start) probes with a write.

Big objects: the Protocol moves whole blocks (bounded by the server's block size, 8 MiB
by default, far below S3's 5 GiB single PUT), so there is nothing to stream.

Blocking: every method does network I/O; from trio, call through `blockstore.aio.run_io`.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from .errors import (
    BlockNotFound,
    S3BucketMissing,
    S3CredentialsRejected,
    S3StoreError,
    S3Unreachable,
)
from .store_keys import decode_segment, encode_key, encode_prefix

if TYPE_CHECKING:
    from obstore.store import S3Config

__all__ = ["RetryPolicy", "S3BlockStore", "S3Settings"]

_PROBE = ".check/probe"
_LIST_CHUNK = 1000  # ListObjectsV2 answers at most 1000 keys per request
_DEFAULT_REGION = "us-east-1"
_MESSAGE_CHARS = 300


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard one call tries before it raises (obstore's retry and client options)."""

    retries: int = 10
    """Each backoff is random, from `first_backoff_seconds` up to twice the last one."""
    first_backoff_seconds: float = 0.1
    max_backoff_seconds: float = 5.0
    total_seconds: float = 60.0
    """No retry starts after this long since the first attempt."""
    connect_seconds: float = 5.0
    request_seconds: float = 60.0
    """One attempt, answer body included (an 8 MiB block at 1 Mbit/s takes this long)."""


@dataclass(frozen=True, slots=True)
class S3Settings:
    """Where and how to reach the object store; what is not given comes from the standard
    AWS sources (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, ...).

    `storage_class` (e.g. `GLACIER_IR`) is set on every object written; only classes
    readable without a restore request suit a block store.
    """

    endpoint: str | None = None
    """E.g. `http://127.0.0.1:9000`; None: AWS itself."""
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    storage_class: str | None = None
    retry: RetryPolicy = RetryPolicy()


def _summary(exc: BaseException) -> str:
    """The first line of an obstore message (the rest is a debug dump of its internals)."""
    return str(exc).strip().splitlines()[0][:_MESSAGE_CHARS] if str(exc).strip() else repr(exc)


class S3BlockStore:
    """A `BlockStore` in an S3 bucket under a prefix (see the module docstring)."""

    def __init__(self, bucket: str, prefix: str = "", settings: S3Settings | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.settings = settings or S3Settings()
        endpoint = self.endpoint = self.settings.endpoint
        self.region = self.settings.region or _DEFAULT_REGION
        policy = self.settings.retry
        config: S3Config = {"region": self.region}
        if endpoint:
            config["endpoint"] = endpoint
        if self.settings.access_key_id is not None:
            config["access_key_id"] = self.settings.access_key_id
        if self.settings.secret_access_key is not None:
            config["secret_access_key"] = self.settings.secret_access_key
        self._store = S3Store(
            bucket,
            prefix=self.prefix or None,
            config=config,
            client_options={
                "allow_http": bool(endpoint and endpoint.startswith("http://")),
                "connect_timeout": timedelta(seconds=policy.connect_seconds),
                "timeout": timedelta(seconds=policy.request_seconds),
            },
            retry_config={
                "max_retries": policy.retries,
                "retry_timeout": timedelta(seconds=policy.total_seconds),
                "backoff": {
                    "init_backoff": timedelta(seconds=policy.first_backoff_seconds),
                    "max_backoff": timedelta(seconds=policy.max_backoff_seconds),
                    "base": 2,
                },
            },
        )

    @property
    def url(self) -> str:
        """`s3://bucket/prefix`, for messages."""
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def __repr__(self) -> str:
        return f"S3BlockStore({self.url!r}, endpoint={self.endpoint!r})"

    # -- the BlockStore Protocol ----------------------------------------------------------

    def put(self, key: str, data: bytes | bytearray | memoryview) -> bool:
        """Store `data` under `key` unless present; True if this call stored it."""
        path = "/".join(encode_key(key))
        storage_class = self.settings.storage_class
        attributes = {"Storage-Class": storage_class} if storage_class else None
        with self._translated():
            try:
                obstore.put(self._store, path, data, mode="create", attributes=attributes)
            except AlreadyExistsError:
                return False
            except FileNotFoundError:  # a PUT finds no object missing: the bucket is
                raise self._bucket_missing() from None
        return True

    def get(self, key: str) -> bytes:
        """Return the object; raises `BlockNotFound` if absent."""
        path = "/".join(encode_key(key))
        with self._translated():
            try:
                return obstore.get(self._store, path).bytes().to_bytes()
            except FileNotFoundError:
                raise BlockNotFound(key) from None

    def has(self, key: str) -> bool:
        """Return True if an object exists under `key`."""
        try:
            self.size(key)
        except BlockNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        """Return the object's size in bytes; raises `BlockNotFound` if absent."""
        path = "/".join(encode_key(key))
        with self._translated():
            try:
                return int(obstore.head(self._store, path)["size"])
            except FileNotFoundError:
                raise BlockNotFound(key) from None

    def delete(self, key: str) -> None:
        """Remove the object; a missing object is fine (S3 answers a missing key with 204)."""
        path = "/".join(encode_key(key))
        with self._translated():
            try:
                obstore.delete(self._store, path)
            except FileNotFoundError:
                raise self._bucket_missing() from None

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Yield every key starting with `prefix`: one listing of its whole segments,
        filtered by the rest."""
        whole = encode_prefix(prefix)
        if whole is None:
            return  # no valid key has such a prefix
        with self._translated():
            listing = obstore.list(
                self._store, prefix="/".join(whole) or None, chunk_size=_LIST_CHUNK
            )
            for batch in listing:
                for meta in batch:
                    parts = meta["path"].split("/")
                    if any("." in part for part in parts):
                        continue  # not written by a store (the probe, other programs)
                    key = "/".join(decode_segment(part) for part in parts)
                    if key.startswith(prefix):
                        yield key

    # -- the start check and error translation ----------------------------------------------

    def check(self) -> None:
        """Verify that the bucket exists and the credentials may write, read and list it.

        Writes and deletes one probe object (only a write tells a missing bucket from a
        missing object).

        Raises:
            S3BucketMissing, S3CredentialsRejected, S3Unreachable: what is wrong.
            S3StoreError: the endpoint answers but the requests keep failing.
        """
        try:
            obstore.put(self._store, _PROBE, b"", mode="overwrite")
            obstore.head(self._store, _PROBE)
            obstore.delete(self._store, _PROBE)
            next(iter(obstore.list(self._store, chunk_size=1)), None)
        except FileNotFoundError:
            raise self._bucket_missing() from None
        except (PermissionDeniedError, UnauthenticatedError) as exc:
            raise self._credentials_rejected(exc) from None
        except BaseError as exc:
            raise self._unreachable_or_failed(exc) from None

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """Raise obstore's errors (after its retries) as the `blockstore.errors` types."""
        try:
            yield
        except (PermissionDeniedError, UnauthenticatedError) as exc:
            raise self._credentials_rejected(exc) from None
        except BaseError as exc:
            raise self._diagnosis(exc) from None

    def _diagnosis(self, exc: BaseError) -> S3StoreError:
        """What made a request fail in a way obstore does not type (e.g. a listing of a
        missing bucket): an unreachable endpoint, else whatever the start check finds."""
        failure = self._unreachable_or_failed(exc)
        if isinstance(failure, S3Unreachable):
            return failure
        try:
            self.check()
        except S3StoreError as found:
            return found
        return failure

    def _unreachable_or_failed(self, exc: BaseError) -> S3StoreError:
        host, port = self._endpoint_address()
        try:
            socket.create_connection((host, port), timeout=5).close()
        except OSError as conn_exc:
            return S3Unreachable(f"cannot reach the S3 endpoint {host}:{port}: {conn_exc}")
        return S3StoreError(f"{self.url}: {_summary(exc)}")

    def _endpoint_address(self) -> tuple[str, int]:
        if not self.endpoint:
            return f"s3.{self.region}.amazonaws.com", 443
        parts = urlsplit(self.endpoint)
        default_port = 80 if parts.scheme == "http" else 443
        return parts.hostname or "", parts.port or default_port

    def _bucket_missing(self) -> S3BucketMissing:
        where = self.endpoint or f"AWS region {self.region}"
        return S3BucketMissing(f"S3 bucket {self.bucket!r} does not exist at {where}")

    def _credentials_rejected(self, exc: BaseError) -> S3CredentialsRejected:
        return S3CredentialsRejected(
            f"the S3 endpoint refused the credentials for {self.url} (AWS_ACCESS_KEY_ID / "
            f"AWS_SECRET_ACCESS_KEY or the configured keys): {_summary(exc)}"
        )
