"""The client's one HTTP package: typed calls over the server's API (docs/protocol.md).

Everything that crosses the network from the client goes through `RemoteClient`: one
`httpx.AsyncClient` (HTTP/1.1 keep-alive; trio's sockets set TCP_NODELAY) whose TLS context
trusts exactly one certificate, the one pinned at login (no CA store, no host name check: the
pin is the identity). HTTP failures become `syncd.errors` exceptions here and nowhere else.
The bulk requests, `GET /blocks/{id}`, `POST /blocks/fetch` and `POST /blocks/batch`, take
a faster path in the submodule `bulk` (blocking TLS sockets in worker threads, on
connections the server serves outside its HTTP framework); nothing outside this package
speaks HTTP. A client made with a `client_id` names itself in every httpx request
(`X-Drive-Client`), so the change feed tells which program of this device made a change;
the bulk requests only move blocks, which journal nothing, and go without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import trio

from blockstore.aio import run_cpu
from blockstore.codec import decode_wire
from blockstore.ids import BlockId
from blockstore.wire import (
    Buffer,
    Change,
    FileRecord,
    RevisionInfo,
    block_record_parts,
    blocks_to_json,
    parse_block_records,
)
from syncd import errors
from syncd.config import ClientConfig
from syncd.remote.bulk import BulkTransport, BulkTransportError

__all__ = ["RemoteClient", "fetch_certificate", "login", "pinned_ssl_context"]

T = TypeVar("T")

OCTET_STREAM = "application/octet-stream"
JSON = "application/json"
log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
LONGPOLL_MARGIN_S = 60.0
MAX_CONNECTIONS = 32
CLIENT_HEADER = "X-Drive-Client"
_CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

_ERRORS: Mapping[str, type[errors.RemoteError]] = {
    "bad_request": errors.BadRequest,
    "unauthorized": errors.Unauthorized,
    "not_found": errors.NotFound,
    "no_parent": errors.ParentMissing,
    "into_itself": errors.IntoItself,
    "blocks_missing": errors.BlocksMissing,
    "conflict": errors.Conflict,
    "exists": errors.Exists,
    "not_empty": errors.NotEmpty,
    "too_large": errors.TooLarge,
    "rate_limited": errors.RateLimited,
    "quota_exceeded": errors.QuotaExceeded,
    "insufficient_storage": errors.ServerFull,
    "internal": errors.ServerError,
}
_BY_STATUS: Mapping[int, type[errors.RemoteError]] = {
    400: errors.BadRequest,
    401: errors.Unauthorized,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.TooLarge,
    429: errors.RateLimited,
    507: errors.QuotaExceeded,
}


def _certificate_refused(exc: BaseException) -> bool:
    """True if the TLS handshake refused the server's certificate: an
    `ssl.SSLCertVerificationError` somewhere in the chain httpx, httpcore and trio wrap it in
    (told apart by type, not by the message text)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _reason(exc: BaseException) -> str:
    """The text of a transport error, or its type when it has none."""
    return str(exc) or type(exc).__name__


def fetch_certificate(url: str, timeout: float = CONNECT_TIMEOUT_S) -> tuple[str, str]:
    """Connect to `url` without verifying and return `(certificate PEM, SHA-256 hex)`.

    Blocking (sockets); callers on the trio thread run it in a worker thread. Only used at
    login, to show or check the fingerprint before anything secret is sent.

    Raises:
        Offline: the server cannot be reached or does not speak TLS.
    """
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise errors.BadRequest(f"the server URL must be https://HOST[:PORT], not {url!r}")
    port = parts.port or 443
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((parts.hostname, port), timeout=timeout) as sock,
            ctx.wrap_socket(sock, server_hostname=parts.hostname) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError as exc:
        raise errors.Offline(f"cannot reach {url}: {exc}") from exc
    if der is None:
        raise errors.Offline(f"{url} presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der), hashlib.sha256(der).hexdigest()


def pinned_ssl_context(cert_pem: str) -> ssl.SSLContext:
    """Return a TLS context that accepts exactly the pinned certificate (leaf as anchor)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=cert_pem)
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = body.get("error")
    message = str(body.get("message") or resp.reason_phrase or resp.status_code)
    exc_type = _ERRORS.get(code) if isinstance(code, str) else None
    if exc_type is None:
        exc_type = _BY_STATUS.get(resp.status_code, errors.ServerError)
    text = f"{resp.request.method} {resp.request.url.path}: {resp.status_code} {message}"
    if exc_type is errors.RateLimited:
        try:
            retry = float(resp.headers.get("X-Ratelimit-Retry-After", "1"))
        except ValueError:
            retry = 1.0
        raise errors.RateLimited(text, body, retry_after=retry)
    raise exc_type(text, body)


def _new_http(base_url: str, cert_pem: str, token: str | None) -> httpx.AsyncClient:
    headers = {"User-Agent": "drive-client/0.1"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        verify=pinned_ssl_context(cert_pem),
        headers=headers,
        timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        limits=httpx.Limits(
            max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
        ),
        trust_env=False,
    )


async def login(url: str, cert_pem: str, user: str, password: str, device: str) -> dict[str, Any]:
    """`POST /api/v1/login`; returns `{"token", "user", "device_id", "device"}`.

    Raises:
        Unauthorized: wrong user or password. Offline: unreachable or wrong certificate.
    """
    async with _new_http(url, cert_pem, None) as http:
        rc = RemoteClient(http)
        body = await rc.request_json(
            "POST", "/api/v1/login", json={"user": user, "password": password, "device": device}
        )
    return body


class RemoteClient:
    """Typed calls over one `httpx.AsyncClient` (inject a `MockTransport` one in tests).

    Every method raises `syncd.errors.SyncError` subclasses only (plus cancellation).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        bulk: BulkTransport | None = None,
        client_id: str | None = None,
    ) -> None:
        """`client_id` (1-64 of [A-Za-z0-9_-]) is sent as `X-Drive-Client` with every httpx
        request; the server journals it with the changes those requests make.

        Raises:
            ValueError: `client_id` is not such a token (the server would refuse it).
        """
        _check_client_id(client_id)
        self._http = http
        self._bulk = bulk
        self.client_id = client_id
        self._headers = {CLIENT_HEADER: client_id} if client_id is not None else None

    @classmethod
    def from_config(cls, cfg: ClientConfig, client_id: str | None = None) -> RemoteClient:
        """A client for the logged-in server of `cfg` (call `aclose()` when done).

        Block reads and batch uploads go through a `BulkTransport` (blocking sockets in
        worker threads, far cheaper per MiB than httpx on trio); everything else through
        httpx, naming `client_id` if given.
        """
        _check_client_id(client_id)
        bulk = BulkTransport(
            cfg.server_url.rstrip("/"),
            pinned_ssl_context(cfg.cert_pem),
            cfg.token,
            connect_timeout_s=CONNECT_TIMEOUT_S,
            read_timeout_s=READ_TIMEOUT_S,
            max_idle=MAX_CONNECTIONS,
        )
        return cls(_new_http(cfg.server_url, cfg.cert_pem, cfg.token), bulk, client_id)

    async def aclose(self) -> None:
        if self._bulk is not None:
            self._bulk.close()
        await self._http.aclose()

    # -- plumbing -------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        content: bytes | None = None,
        timeout: httpx.Timeout | None = None,  # noqa: ASYNC109  # httpx's per-request timeout
    ) -> httpx.Response:
        """Send one request; map transport failures to Offline and statuses to errors."""
        extra: dict[str, Any] = {}
        if timeout is not None:
            extra["timeout"] = timeout
        try:
            resp = await self._http.request(
                method,
                path,
                params=params,
                json=json,
                content=content,
                headers=self._headers,
                **extra,
            )
        except httpx.ConnectError as exc:
            if _certificate_refused(exc):
                raise errors.CertificateMismatch(
                    "the server's certificate is not the pinned one (it changed since login)"
                ) from exc
            raise errors.Offline(f"cannot reach the server: {_reason(exc)}") from exc
        except httpx.TransportError as exc:
            raise errors.Offline(f"server unreachable: {_reason(exc)}") from exc
        _raise_for(resp)
        return resp

    async def request_json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        resp = await self.request(method, path, **kw)
        try:
            body = resp.json()
        except (ValueError, json.JSONDecodeError) as exc:
            raise errors.ServerError(f"{method} {path}: answer is not JSON") from exc
        if not isinstance(body, dict):
            raise errors.ServerError(f"{method} {path}: answer is not a JSON object")
        return body

    async def _record(self, method: str, path: str, **kw: Any) -> FileRecord:
        body = await self.request_json(method, path, **kw)
        try:
            return FileRecord.from_json(body)
        except ValueError as exc:
            raise errors.ServerError(f"{method} {path}: bad FileRecord: {exc}") from exc

    # -- account --------------------------------------------------------------------------

    async def whoami(self) -> dict[str, Any]:
        return await self.request_json("GET", "/api/v1/whoami")

    async def logout(self) -> None:
        await self.request("POST", "/api/v1/logout")

    # -- tree -----------------------------------------------------------------------------

    async def meta(self, path: str | None = None, file_id: int | None = None) -> FileRecord:
        params: dict[str, str | int] = {"path": path} if path is not None else {"id": file_id or 1}
        return await self._record("GET", "/api/v1/meta", params=params)

    async def made_by_commit(self, commit_id: str) -> FileRecord:
        """The version commit `commit_id` made (NotFound: it made none), for a commit whose
        answer never came."""
        return await self._record("GET", "/api/v1/meta", params={"commit_id": commit_id})

    async def list_dir(
        self, path: str, limit: int = 5000, *, file_id: int | None = None
    ) -> list[FileRecord]:
        """All children of `path`, or of the folder with server id `file_id` wherever the
        server has it now (`path` then only names it in errors), following `next` pages."""
        out: list[FileRecord] = []
        after: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": limit}
            params.update({"id": file_id} if file_id is not None else {"path": path})
            if after is not None:
                params["after"] = after
            body = await self.request_json("GET", "/api/v1/list", params=params)
            try:
                out.extend(FileRecord.from_json(e) for e in body.get("entries", []))
            except ValueError as exc:
                raise errors.ServerError(f"list {path}: bad entry: {exc}") from exc
            nxt = body.get("next")
            if not isinstance(nxt, str):
                return out
            after = nxt

    async def mkdir(self, path: str, mode: int, *, parent_id: int | None = None) -> FileRecord:
        """`POST /api/v1/mkdir`. `parent_id`: the folder meant (ParentMissing if the folder
        at that path is another one now); the same for `symlink` and `commit`."""
        body = _given({"path": path, "mode": mode}, parent_id=parent_id)
        return await self._record("POST", "/api/v1/mkdir", json=body)

    async def symlink(self, path: str, target: str, *, parent_id: int | None = None) -> FileRecord:
        body = _given({"path": path, "target": target}, parent_id=parent_id)
        return await self._record("POST", "/api/v1/symlink", json=body)

    async def setattr(
        self, path: str, mode: int | None = None, mtime_ns: int | None = None
    ) -> FileRecord:
        body = _given({"path": path}, mode=mode, mtime_ns=mtime_ns)
        return await self._record("POST", "/api/v1/setattr", json=body)

    async def move(
        self,
        src: str,
        dst: str,
        mode: str,
        *,
        src_rev: int | None = None,
        dst_rev: int | None = None,
        src_id: int | None = None,
        dst_id: int | None = None,
        dst_parent_id: int | None = None,
    ) -> FileRecord:
        """`POST /api/v1/move`. `src_rev`/`dst_rev`: the revisions this device saw of the
        source and target files; the server refuses (Conflict) if either moved on.
        `src_id`/`dst_id`: the entries this device means (NotFound if the source, Conflict
        if the target, is another entry now); `dst_parent_id` the destination folder
        (ParentMissing if another folder has its path now). A file renamed over a file
        answers the target's record (its id, a new revision)."""
        body = _given({"from": src, "to": dst, "mode": mode}, src_rev=src_rev,
                      dst_rev=dst_rev, src_id=src_id, dst_id=dst_id,
                      dst_parent_id=dst_parent_id)  # fmt: skip
        return await self._record("POST", "/api/v1/move", json=body)

    async def delete(
        self, path: str, recursive: bool, base_rev: int | None = None, file_id: int | None = None
    ) -> None:
        """`POST /api/v1/delete`. `base_rev`: the revision this device saw; a file edited
        since is not deleted (Conflict carrying its current record). `file_id`: the entry
        this device means (NotFound, nothing deleted, if another entry has the name now)."""
        body = _given({"path": path, "recursive": recursive}, base_rev=base_rev, id=file_id)
        await self.request("POST", "/api/v1/delete", json=body)

    # -- blocks and commits ---------------------------------------------------------------

    async def missing_blocks(self, ids: list[BlockId]) -> list[BlockId]:
        body = await self.request_json("POST", "/api/v1/blocks/missing", json={"ids": ids})
        return [BlockId(i) for i in body.get("missing", [])]

    async def put_block(self, bid: BlockId, frame: bytes) -> None:
        await self.request("PUT", f"/api/v1/blocks/{bid}", content=frame)

    async def get_block(self, bid: BlockId) -> bytes:
        """The wire frame of block `bid` (not yet verified: see `get_block_plain`)."""
        if self._bulk is None:
            resp = await self.request("GET", f"/api/v1/blocks/{bid}")
            return resp.content
        return bytes(await self._in_thread(self._get_frame_sync, bid))

    async def get_block_plain(self, bid: BlockId) -> bytes:
        """The plaintext of block `bid`, checked: `sha256(plaintext) == bid`.

        Fetch, decode and verify happen in one worker-thread hop.

        Raises:
            CorruptBlockError: the server sent bytes that are not this block.
        """
        if self._bulk is None:
            frame = await self.get_block(bid)
            return await run_cpu(_decode_verified, frame, bid)
        return await self._in_thread(self._get_plain_sync, bid)

    async def get_blocks_plain(self, bids: list[BlockId]) -> list[tuple[BlockId, bytes]]:
        """Plaintexts of several blocks in one request, each checked like `get_block_plain`.

        The server may answer with only the first few (a size budget per answer); the result
        is then that prefix, in order, never empty. Without the bulk path (tests) this is
        one `get_block_plain` per block.

        Raises:
            NotFound: one of the blocks is not held (ask for them one by one to learn which).
            CorruptBlockError: the server sent bytes that are not the block asked for.
        """
        if not bids:
            raise ValueError("no block ids")
        if self._bulk is None:
            return [(bid, await self.get_block_plain(bid)) for bid in bids]
        bulk = self._bulk
        path = "/api/v1/blocks/fetch"
        body = json.dumps({"ids": bids}).encode()

        def fetch() -> list[tuple[BlockId, bytes]]:
            answer = self._bulk_sync("POST", path, lambda: bulk.post(path, body, JSON))
            try:
                records = parse_block_records(answer)
            except ValueError as exc:
                raise errors.ServerError(f"POST {path}: {exc}") from exc
            if not records or len(records) > len(bids):
                raise errors.ServerError(f"POST {path}: {len(records)} blocks for {len(bids)}")
            out: list[tuple[BlockId, bytes]] = []
            for want, (got, frame) in zip(bids, records, strict=False):
                if got != want:
                    raise errors.ServerError(f"POST {path}: block {got} where {want} belongs")
                out.append((want, _decode_verified(frame, want)))
            return out

        return await trio.to_thread.run_sync(fetch, abandon_on_cancel=True)

    async def _in_thread(self, fn: Callable[[BlockId], T], bid: BlockId) -> T:
        # Abandoned on cancellation (a read deadline must not wait for a slow socket); the
        # thread then finishes on its own, bounded by the socket timeouts.
        return await trio.to_thread.run_sync(fn, bid, abandon_on_cancel=True)

    def _get_plain_sync(self, bid: BlockId) -> bytes:
        return _decode_verified(self._get_frame_sync(bid), bid)

    def _get_frame_sync(self, bid: BlockId) -> bytearray:
        assert self._bulk is not None
        bulk = self._bulk
        return self._bulk_sync("GET", f"/api/v1/blocks/{bid}", lambda: bulk.get(bid))

    def _bulk_sync(
        self, method: str, path: str, call: Callable[[], tuple[int, dict[str, str], bytearray]]
    ) -> bytearray:
        """Run one `BulkTransport` call and map its outcome like `request` does."""
        try:
            status, headers, body = call()
        except ssl.SSLCertVerificationError as exc:
            raise errors.CertificateMismatch(
                f"the server's certificate is not the pinned one ({exc})"
            ) from exc
        except (OSError, BulkTransportError) as exc:  # ssl.SSLError, timeouts are OSErrors
            raise errors.Offline(f"server unreachable: {exc or type(exc).__name__}") from exc
        if not 200 <= status < 300:
            request = httpx.Request(method, self._http.base_url.join(path))
            answer = httpx.Response(status, headers=headers, content=bytes(body), request=request)
            _raise_for(answer)
            raise errors.ServerError(f"{method} {path}: unexpected status {status}")
        return body

    async def commit(
        self,
        path: str,
        base_rev: int | None,
        blocks: Sequence[tuple[BlockId, int]],
        size: int,
        mtime_ns: int,
        mode: int,
        commit_id: str,
        *,
        base_id: int | None = None,
        parent_id: int | None = None,
    ) -> FileRecord:
        """`POST /api/v1/commit`. `base_id`: the server id of the file `base_rev` is a
        revision of (another file now at `path` is then a conflict, whatever its revision);
        `parent_id`: the folder meant (ParentMissing if another folder has its path now)."""
        body: dict[str, Any] = {
            "path": path,
            "base_rev": base_rev,
            "blocks": blocks_to_json(tuple(blocks)),
            "size": size,
            "mtime_ns": mtime_ns,
            "mode": mode,
            "commit_id": commit_id,
        }
        body = _given(body, base_id=base_id if base_rev is not None else None,
                      parent_id=parent_id)  # fmt: skip
        return await self._record("POST", "/api/v1/commit", json=body)

    async def put_blocks_batch(self, items: Sequence[tuple[BlockId, Sequence[Buffer]]]) -> None:
        """`POST /api/v1/blocks/batch`: several wire frames in one request.

        Each frame is given as its pieces (`codec.encode_wire_parts`, or one whole frame).
        Sent piece by piece in a worker thread (the bulk path) when there is one: the trio
        thread never copies or encrypts the megabytes, and nobody joins them into one body.
        """
        path = "/api/v1/blocks/batch"
        parts = block_record_parts(items)
        if self._bulk is None:
            await self.request("POST", path, content=b"".join(parts))
            return
        bulk = self._bulk

        def send() -> bytearray:
            return self._bulk_sync("POST", path, lambda: bulk.post(path, parts, OCTET_STREAM))

        # Not abandoned on cancellation: the socket timeouts bound it, and a caller that
        # gives up must not leave a thread still sending its batch behind its back.
        await trio.to_thread.run_sync(send)

    async def commit_batch(
        self, commits: list[dict[str, Any]]
    ) -> list[FileRecord | errors.RemoteError]:
        """`POST /api/v1/commit/batch`: one result per commit body, in order (a record, or
        the error that item would have raised on its own)."""
        body = await self.request_json("POST", "/api/v1/commit/batch", json={"commits": commits})
        out: list[FileRecord | errors.RemoteError] = []
        for item in body.get("results", []):
            if isinstance(item, dict) and "record" in item:
                try:
                    out.append(FileRecord.from_json(item["record"]))
                except ValueError as exc:
                    raise errors.ServerError(f"commit batch: bad FileRecord: {exc}") from exc
                continue
            err = item if isinstance(item, dict) else {}
            code = err.get("error")
            exc_type = _ERRORS.get(code, errors.ServerError) if isinstance(code, str) else None
            out.append((exc_type or errors.ServerError)(str(err.get("message", code)), err))
        if len(out) != len(commits):
            raise errors.ServerError("commit batch: wrong number of results")
        return out

    async def editing(self, path: str) -> None:
        await self.request("POST", "/api/v1/editing", json={"path": path})

    # -- history --------------------------------------------------------------------------

    async def revisions(self, path: str, limit: int) -> list[RevisionInfo]:
        body = await self.request_json(
            "GET", "/api/v1/revisions", params={"path": path, "limit": limit}
        )
        return [RevisionInfo.from_json(r) for r in body.get("revisions", [])]

    async def restore(self, path: str, revision: int) -> FileRecord:
        return await self._record(
            "POST", "/api/v1/restore", json={"path": path, "revision": revision}
        )

    async def trash(self) -> list[dict[str, Any]]:
        body = await self.request_json("GET", "/api/v1/trash")
        entries = body.get("entries", [])
        return [e for e in entries if isinstance(e, dict)]

    async def undelete(self, path: str | None, item_id: int | None = None) -> FileRecord:
        """Bring back the trash item `item_id`, else the newest one deleted from `path`."""
        body: dict[str, Any] = {"path": path} if item_id is None else {"id": item_id}
        return await self._record("POST", "/api/v1/undelete", json=body)

    async def set_kept(self, path: str, revision: int, kept: bool) -> RevisionInfo:
        """`POST /api/v1/keep` (or `unkeep`): thinning never removes a kept revision."""
        route = "/api/v1/keep" if kept else "/api/v1/unkeep"
        body = await self.request_json("POST", route, json={"path": path, "revision": revision})
        return RevisionInfo.from_json(body)

    # -- change feed ----------------------------------------------------------------------

    async def cursor(self) -> str:
        body = await self.request_json("GET", "/api/v1/cursor")
        return str(body["cursor"])

    async def delta(self, cursor: str, limit: int = 1000) -> tuple[list[Change], str, bool, bool]:
        """Returns `(changes, new cursor, has_more, reset)`."""
        body = await self.request_json(
            "GET", "/api/v1/delta", params={"cursor": cursor, "limit": limit}
        )
        try:
            changes = [Change.from_json(c) for c in body.get("entries", [])]
        except ValueError as exc:
            raise errors.ServerError(f"delta: bad change: {exc}") from exc
        return (
            changes,
            str(body.get("cursor", cursor)),
            bool(body.get("has_more")),
            bool(body.get("reset")),
        )

    async def longpoll(self, cursor: str, timeout_s: int) -> tuple[bool, int | None]:
        """Returns `(changes, backoff seconds or None)`."""
        body = await self.request_json(
            "GET",
            "/api/v1/longpoll",
            params={"cursor": cursor, "timeout": timeout_s},
            timeout=httpx.Timeout(timeout_s * 1.1 + LONGPOLL_MARGIN_S, connect=CONNECT_TIMEOUT_S),
        )
        backoff = body.get("backoff")
        return bool(body.get("changes")), backoff if isinstance(backoff, int) else None


def _check_client_id(client_id: str | None) -> None:
    if client_id is not None and not _CLIENT_ID_RE.fullmatch(client_id):
        raise ValueError(f"client id must be 1-64 of A-Z, a-z, 0-9, '_', '-': {client_id!r}")


def _decode_verified(frame: bytes | bytearray | memoryview, bid: BlockId) -> bytes:
    return decode_wire(frame, expected_id=bid)


def _given(body: dict[str, Any], **optional: object) -> dict[str, Any]:
    """`body` with the optional fields that have a value (absent means "no check" to the
    server, so None is never sent)."""
    return body | {key: value for key, value in optional.items() if value is not None}
