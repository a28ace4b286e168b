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

The block operations of `server.block_ops` are served here, the same handlers the hypercorn
routes call, after the same admission (`Services.admit`: authentication and rate limit),
under the same body budget and deadlines (`server.body_budget`); the client uses
`GET /api/v1/blocks/{id}`, `POST /api/v1/blocks/batch` and `POST /api/v1/blocks/fetch`.
None of them journals a change, so an `X-Drive-Client` header is only checked (400 if
malformed, as everywhere) and otherwise ignored.

Framing is deliberately strict: `Content-Length` bodies only (no chunked uploads), heads up
to 64 KiB; anything else is answered once and the connection closed. A body is kept as its
bytes arrive (never allocated whole from its declared length) once the budget has room for
it; a head must arrive whole within `request_head_seconds` of its first byte and a body by
its deadline, else the connection is closed (a late body is answered 408 first).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from blockstore.ids import BlockId
from blockstore.wire import Buffer
from server.block_ops import OPERATIONS, PREFIX, Operation, parse_block_id_text
from server.errors import (
    ApiError,
    BadRequest,
    Internal,
    NotFound,
    RequestTimeout,
    TooLarge,
    api_error_of,
)
from server.services import Services
from server.tls_stream import TlsSocketStream
from server.web import CLIENT_HEADER, DRAIN_LIMIT_BYTES, DRAIN_SECONDS, client_id, parse_count

__all__ = ["BulkConnections"]

log = logging.getLogger(__name__)

MAX_BULK_CONNECTIONS = 64
"""Bulk connections served at once (a thread each); more wait for a free thread."""
BULK_IDLE_S = 15.0
"""Longest wait for the next request on a bulk connection (a waiting one holds a thread)."""
SEND_TIMEOUT_S = 60.0
"""Longest time to send an answer."""
_MAX_HEAD_BYTES = 64 << 10
_RECV_BYTES = 64 << 10
_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized",
            404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            411: "Length Required",
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
        rules = self._services.bodies
        try:
            leftover = bytearray()
            while True:
                with self._lock:
                    if self._stopping:
                        return
                    self._waiting.add(sock)
                try:
                    request = _read_head(sock, leftover, self._keep_alive_s, rules.head_seconds)
                except _Gone:
                    return
                except BadRequest as exc:
                    self._send(sock, _error(exc, close=True), secrets.token_hex(8))
                    return
                finally:
                    with self._lock:
                        self._waiting.discard(sock)
                answer, leftover = self._handle(sock, request)
                if answer.close or request.headers.get("connection", "").lower() == "close":
                    return
        except (_Gone, OSError):
            return  # a reset, a timeout or a shutdown: nothing left to answer
        finally:
            sock.close()

    def _handle(self, sock: ssl.SSLSocket, request: _Request) -> tuple[_Answer, bytearray]:
        s = self._services
        rid = secrets.token_hex(8)
        route = "unmatched"
        length = 0
        unread = True
        leftover = bytearray()
        try:
            length = _content_length(request)
            client_id(request.headers.get(CLIENT_HEADER))  # checked as everywhere; no journal
            op, bid = _route(request)
            route = op.path
            limit = op.limit(s.config)
            if length > limit:
                raise TooLarge(f"request body over {limit} bytes")
            who, rate_headers = trio.from_thread.run(s.admit, request.headers.get("authorization"))
            deadline = s.bodies.body_deadline(time.monotonic(), length)
            with s.bodies.budget.hold_sync(length, who.user_id, deadline - time.monotonic()):
                body, leftover = _read_body(sock, request.leftover, length, deadline)
                unread = False
                done = op.handler(s, who, bid, body)
                del body
            answer = _Answer(done.status, done.body, done.content_type, rate_headers)
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
            close = bug or isinstance(refused, _LengthRequired | RequestTimeout)
            answer = _error(refused, close=close, rid=rid)
            if unread and length and not answer.close:
                # Read (and drop) a body we refused, so the client gets our answer instead
                # of a reset; beyond the drain limit close the connection instead.
                answer.close = length > DRAIN_LIMIT_BYTES
                if not answer.close:
                    leftover = _drain(sock, request.leftover, length)
        s.metrics.count_request(route, answer.status)
        self._send(sock, answer, rid)
        return answer, leftover

    def _send(self, sock: ssl.SSLSocket, answer: _Answer, rid: str) -> None:
        sock.settimeout(SEND_TIMEOUT_S)
        length = sum(len(piece) for piece in answer.body)
        lines = [
            f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, 'Error')}",
            f"content-type: {answer.content_type}",
            f"content-length: {length}",
            f"x-request-id: {rid}",
            *(f"{k.lower()}: {v}" for k, v in answer.headers.items()),
        ]
        if answer.close and "connection" not in {k.lower() for k in answer.headers}:
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


def _route(request: _Request) -> tuple[Operation, BlockId | None]:
    """The operation a request names (404 off the block routes, 405 for another method)."""
    path = request.path.partition("?")[0]
    if not path.startswith(PREFIX):
        raise NotFound(f"no bulk route {path}")
    name = path[len(PREFIX) :]
    fixed = [op for op in OPERATIONS if op.path == path]
    if fixed:
        for op in fixed:
            if op.method == request.method:
                return op, None
        raise _MethodNotAllowed(f"{name} takes {fixed[0].method}")
    for op in OPERATIONS:
        if op.path.endswith("{block_id}") and op.method == request.method:
            return op, parse_block_id_text(name)
    raise _MethodNotAllowed(f"a block takes {', '.join(_BLOCK_METHODS)}")


_BLOCK_METHODS = [op.method for op in OPERATIONS if op.path.endswith("{block_id}")]


def _recv_by(sock: ssl.SSLSocket, view: memoryview, deadline: float) -> int:
    """`recv_into` that waits at most until `deadline` (monotonic); TimeoutError after."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    sock.settimeout(left)
    return sock.recv_into(view)


def _read_head(sock: ssl.SSLSocket, buffered: bytearray, idle_s: float, head_s: float) -> _Request:
    """Read up to the end of a request head; `buffered` is what the last request left.

    The first byte may take `idle_s` (a kept-alive connection between requests), the whole
    head `head_s` from then: a client that trickles a head cannot hold a thread for long."""
    data = buffered
    deadline = time.monotonic() + (head_s if data else idle_s)
    scratch = bytearray(_RECV_BYTES)
    with memoryview(scratch) as view:
        while (end := data.find(b"\r\n\r\n")) < 0:
            if len(data) > _MAX_HEAD_BYTES:
                raise BadRequest("request head too large")
            try:
                n = _recv_by(sock, view, deadline)
            except (TimeoutError, ssl.SSLError, OSError):
                raise _Gone from None
            if not n:
                raise _Gone
            if not data:
                deadline = time.monotonic() + head_s
            data += view[:n]
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
    """Skip a body of `length` bytes (starting with `start`) within `DRAIN_SECONDS`;
    returns what came after it."""
    if len(start) >= length:
        return start[length:]
    left = length - len(start)
    deadline = time.monotonic() + DRAIN_SECONDS
    scratch = bytearray(min(left, _RECV_BYTES))
    with memoryview(scratch) as view:
        while left:
            try:
                n = _recv_by(sock, view[: min(left, len(scratch))], deadline)
            except TimeoutError:
                raise _Gone from None
            if not n:
                raise _Gone
            left -= n
    return bytearray()


def _read_body(
    sock: ssl.SSLSocket, start: bytearray, length: int, deadline: float
) -> tuple[bytearray, bytearray]:
    """The body of `length` bytes (starting with `start`) and what came after it, kept as
    it arrives; 408 at `deadline` (monotonic)."""
    if len(start) >= length:
        return start[:length], start[length:]
    body = start
    scratch = bytearray(min(length - len(body), _RECV_BYTES))
    with memoryview(scratch) as view:
        while len(body) < length:
            try:
                n = _recv_by(sock, view[: min(length - len(body), len(scratch))], deadline)
            except TimeoutError:
                raise RequestTimeout("the request body did not arrive in time") from None
            if not n:
                raise _Gone
            body += view[:n]
    return body, bytearray()
