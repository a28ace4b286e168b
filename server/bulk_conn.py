"""Block transfers on connections that ask for them (TLS ALPN `drive-bulk/1`), in threads.

Why: through hypercorn, h11 and Starlette an uploaded MiB was received, copied and re-joined
about four times on the trio thread (about 2 ms of server CPU per MiB there, the biggest
single share of a 1 GiB upload), and every byte of a cold read went out through the same
thread. The sync client's bulk sockets (`syncd.remote.bulk`) offer ALPN `drive-bulk/1`; a
connection that negotiated it is handed to a worker thread here, which speaks the same
HTTP/1.1 on the blocking `ssl.SSLSocket`: OpenSSL decrypts straight into one buffer per
request body, the records are parsed as views of it, and answers are sent frame by frame.
TLS, SHA-256, AES-GCM and disk writes all release the GIL, so several bulk connections use
both cores. Every other client (browsers, curl, httpx) never offers the protocol and keeps
going through hypercorn.

Only the three block routes exist here, with the same rules, limits, errors, metrics and
rate limit as their hypercorn twins (`server.routes_batch`, `server.routes_api`):

    GET  /api/v1/blocks/{id}      one wire frame
    POST /api/v1/blocks/batch     block records in, {"stored": [...]} out
    POST /api/v1/blocks/fetch     {"ids": [...]} in, block records out

None of them journals a change, so an `X-Drive-Client` header is only checked (400 if
malformed, as everywhere) and otherwise ignored.

Framing is deliberately strict: `Content-Length` bodies only (no chunked uploads), heads up
to 64 KiB; anything else is answered once and the connection closed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from blockstore.ids import BlockId, parse_block_id
from blockstore.wire import Buffer, block_record_parts
from server.db.accounts import Principal
from server.errors import (
    ApiError,
    BadRequest,
    Internal,
    NotFound,
    RateLimited,
    TooLarge,
    api_error_of,
)
from server.routes_batch import (
    FETCH_BUDGET_BYTES,
    MAX_BATCH_BLOCK_BYTES,
    parse_block_batch,
    parse_fetch_ids,
)
from server.services import Services
from server.tls_stream import TlsSocketStream
from server.web import CLIENT_HEADER, DRAIN_LIMIT_BYTES, client_id, parse_count

__all__ = ["BulkConnections"]

log = logging.getLogger(__name__)

MAX_BULK_CONNECTIONS = 64
"""Bulk connections served at once (a thread each); more wait for a free thread."""
BULK_IDLE_S = 15.0
"""Longest wait for the next request on a bulk connection (a waiting one holds a thread)."""
TRANSFER_TIMEOUT_S = 60.0
"""Longest silence inside a request or while sending an answer."""
_MAX_HEAD_BYTES = 64 << 10
_RECV_BYTES = 64 << 10
_PREFIX = "/api/v1/blocks/"
_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized",
            404: "Not Found", 405: "Method Not Allowed", 411: "Length Required",
            413: "Content Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
            507: "Insufficient Storage"}  # fmt: skip


class _MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"


class _LengthRequired(ApiError):
    status = 411
    code = "length_required"


class _Gone(Exception):
    """The client closed the connection or went silent: stop serving it."""


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    leftover: bytearray
    """Bytes read past the head: the start of the body."""


@dataclass
class _Answer:
    status: int
    body: Sequence[Buffer]
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False


class BulkConnections:
    """Serves connections that negotiated `drive-bulk/1` (one worker thread each)."""

    def __init__(self, services: Services, keep_alive_s: float) -> None:
        self._services = services
        self._keep_alive_s = min(keep_alive_s, BULK_IDLE_S)
        self._limiter = trio.CapacityLimiter(MAX_BULK_CONNECTIONS)
        self._lock = threading.Lock()
        self._waiting: set[ssl.SSLSocket] = set()
        """Connections waiting for their next request (closed at once on `stop`)."""
        self._stopping = False

    def stop(self) -> None:
        """The server is stopping: close the connections that wait for a request; busy
        ones close after their current answer."""
        with self._lock:
            self._stopping = True
            waiting = list(self._waiting)
        for sock in waiting:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def serve(self, stream: TlsSocketStream) -> bool:
        """Serve `stream` (handshake done) until the client leaves or the server stops.

        Returns False at once, without touching the stream, when every bulk thread is busy:
        the caller then serves the connection through hypercorn (the same HTTP/1.1, just
        slower), so kept-alive bulk sockets of many devices can never starve a new one.
        """
        if self._limiter.available_tokens < 1:
            return False
        sock = stream.detach()
        try:
            await trio.to_thread.run_sync(
                self._serve_sync, sock, limiter=self._limiter, abandon_on_cancel=True
            )
        finally:
            if sock.fileno() >= 0:  # cancelled (shutdown): wake the thread up, it closes
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        return True

    # -- the worker thread ----------------------------------------------------------------

    def _serve_sync(self, sock: ssl.SSLSocket) -> None:
        try:
            leftover = bytearray()
            while True:
                sock.settimeout(self._keep_alive_s)
                with self._lock:
                    if self._stopping:
                        return
                    self._waiting.add(sock)
                try:
                    request = _read_head(sock, leftover)
                except _Gone:
                    return
                except BadRequest as exc:
                    self._send(sock, _error(exc, close=True), secrets.token_hex(8))
                    return
                finally:
                    with self._lock:
                        self._waiting.discard(sock)
                sock.settimeout(TRANSFER_TIMEOUT_S)
                answer, leftover = self._handle(sock, request)
                if answer.close or request.headers.get("connection", "").lower() == "close":
                    return
        except (_Gone, OSError):
            return  # a reset, a timeout or a shutdown: nothing left to answer
        finally:
            sock.close()

    def _handle(self, sock: ssl.SSLSocket, request: _Request) -> tuple[_Answer, bytearray]:
        rid = secrets.token_hex(8)
        route = "unmatched"
        length = 0
        unread = True
        leftover = bytearray()
        try:
            length = _content_length(request)
            client_id(request.headers.get(CLIENT_HEADER))  # checked as everywhere; no journal
            route, call = self._route(request)
            limit = MAX_BATCH_BLOCK_BYTES if route.endswith("batch") else self._json_limit()
            if length > limit:
                raise TooLarge(f"request body over {limit} bytes")
            who, rate_headers = trio.from_thread.run(self._admit, request.headers)
            body, leftover = _read_body(sock, request.leftover, length)
            unread = False
            answer = call(who, body)
            answer.headers.update(rate_headers)
        except _Gone:
            raise
        except Exception as exc:
            refused = api_error_of(exc)  # an ApiError, or a full disk (507)
            bug = refused is None
            if refused is None:
                if isinstance(exc, OSError):
                    raise  # the connection failed: nothing left to answer
                log.exception("bulk request %s failed", rid)
                refused = Internal("internal error", request_id=rid)
            elif not isinstance(exc, ApiError):
                log.error("bulk request %s: %s (%s)", rid, refused.message, exc)
            answer = _error(refused, close=bug or isinstance(refused, _LengthRequired), rid=rid)
            if unread and length and not answer.close:
                # Read (and drop) a body we refused, so the client gets our answer instead
                # of a reset; beyond the drain limit close the connection instead.
                answer.close = length > DRAIN_LIMIT_BYTES
                if not answer.close:
                    leftover = _drain(sock, request.leftover, length)
        self._services.metrics.count_request(route, answer.status)
        self._send(sock, answer, rid)
        return answer, leftover

    def _route(self, request: _Request) -> tuple[str, Any]:
        path = request.path.partition("?")[0]
        if not path.startswith(_PREFIX):
            raise NotFound(f"no bulk route {path}")
        name = path[len(_PREFIX) :]
        if name in ("batch", "fetch"):
            if request.method != "POST":
                raise _MethodNotAllowed(f"{name} takes POST")
            return _PREFIX + name, self._batch if name == "batch" else self._fetch
        if request.method != "GET":
            raise _MethodNotAllowed("a block takes GET on a bulk connection")
        try:
            bid = parse_block_id(name)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return _PREFIX + "{block_id}", lambda who, body: self._get(who, bid)

    def _json_limit(self) -> int:
        return self._services.config.max_json_bytes

    async def _admit(self, headers: dict[str, str]) -> tuple[Principal, dict[str, str]]:
        """Authenticate and take a rate-limit token, as `routes_api.principal` does."""
        s = self._services
        who = await s.auth.authenticate(headers.get("authorization"))
        verdict = s.limiter.take(who.token_hash)
        if not verdict.allowed:
            refused = RateLimited(f"too many requests; retry in {verdict.retry_after} s")
            refused.headers.update(verdict.headers())
            raise refused
        return who, verdict.headers()

    def _batch(self, who: Principal, body: bytearray) -> _Answer:
        # One block after the other: the client keeps several batches in flight on their
        # own connections. Storing a batch's blocks in a pool of 16 as the hypercorn route
        # does made no difference (1000 x 4 KiB: 1.75-2.75 s against 1.77-2.33 s).
        blocks = self._services.blocks
        stored = [blocks.put_wire_sync(who, bid, frame) for bid, frame in parse_block_batch(body)]
        return _json(200, {"stored": stored})

    def _fetch(self, who: Principal, body: bytearray) -> _Answer:
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("request body is not valid JSON") from None
        if not isinstance(request, dict):
            raise BadRequest("request body must be a JSON object")
        ids = parse_fetch_ids(request)
        frames = self._services.blocks.serve_wire_many_sync(who, ids, FETCH_BUDGET_BYTES)
        parts = block_record_parts([(bid, (frame,)) for bid, frame in frames])
        return _Answer(200, parts, "application/octet-stream")

    def _get(self, who: Principal, bid: BlockId) -> _Answer:
        [(_, frame)] = self._services.blocks.serve_wire_many_sync(who, [bid], 0)
        return _Answer(200, [frame], "application/octet-stream")

    def _send(self, sock: ssl.SSLSocket, answer: _Answer, rid: str) -> None:
        length = sum(len(piece) for piece in answer.body)
        lines = [
            f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, 'Error')}",
            f"content-type: {answer.content_type}",
            f"content-length: {length}",
            f"x-request-id: {rid}",
            *(f"{k.lower()}: {v}" for k, v in answer.headers.items()),
        ]
        if answer.close:
            lines.append("connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        pieces = list(answer.body)
        if pieces and len(pieces[0]) <= _RECV_BYTES:
            head, pieces = head + pieces[0], pieces[1:]  # small answers: one TLS record
        sock.sendall(head)
        for piece in pieces:
            sock.sendall(piece)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> _Answer:
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return _Answer(status, [text], headers=dict(headers or {}))


def _error(exc: ApiError, *, close: bool, rid: str | None = None) -> _Answer:
    body = exc.body()
    if exc.status >= 500 and rid is not None:
        body.setdefault("request_id", rid)  # as `server.web.error_response`
    answer = _json(exc.status, body, exc.headers)
    answer.close = close
    return answer


def _read_head(sock: ssl.SSLSocket, buffered: bytearray) -> _Request:
    """Read up to the end of a request head; `buffered` is what the last request left."""
    data = buffered
    while (end := data.find(b"\r\n\r\n")) < 0:
        if len(data) > _MAX_HEAD_BYTES:
            raise BadRequest("request head too large")
        try:
            chunk = sock.recv(_RECV_BYTES)
        except (TimeoutError, ssl.SSLError, OSError):
            raise _Gone from None
        if not chunk:
            raise _Gone
        data += chunk
    lines = bytes(data[:end]).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"bad request line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise BadRequest(f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return _Request(parts[0], parts[1], headers, data[end + 4 :])


def _content_length(request: _Request) -> int:
    if "transfer-encoding" in request.headers:
        raise _LengthRequired("bulk requests need a Content-Length body")
    text = request.headers.get("content-length", "0")
    length = parse_count(text)
    if length is None:
        raise BadRequest(f"bad Content-Length {text[:40]!r}")
    return length


def _drain(sock: ssl.SSLSocket, start: bytearray, length: int) -> bytearray:
    """Skip a body of `length` bytes (starting with `start`); returns what came after it."""
    if len(start) >= length:
        return start[length:]
    left = length - len(start)
    scratch = bytearray(min(left, 1 << 20))
    with memoryview(scratch) as view:
        while left:
            n = sock.recv_into(view, min(left, len(scratch)))
            if not n:
                raise _Gone
            left -= n
    return bytearray()


def _read_body(sock: ssl.SSLSocket, start: bytearray, length: int) -> tuple[bytearray, bytearray]:
    """The body of `length` bytes (starting with `start`) and what came after it."""
    if len(start) >= length:
        return start[:length], start[length:]
    body = bytearray(length)
    got = len(start)
    body[:got] = start
    with memoryview(body) as view:
        while got < length:
            n = sock.recv_into(view[got:], length - got)
            if not n:
                raise _Gone
            got += n
    return body, bytearray()
