"""Block bytes in bulk over a small pool of kept-alive, blocking TLS sockets.

Three requests go this way: `GET /api/v1/blocks/{id}`, `POST /api/v1/blocks/batch` and
`POST /api/v1/blocks/fetch`, on connections that offer TLS ALPN `drive-bulk/1` (the server
serves those in a thread, `server.bulk_conn`).
Why not httpx: a 1 MiB block through httpx/httpcore on trio's `SSLStream` costs the client
about 7 ms of CPU (each 16 KiB TLS record is one trip through trio's async SSL retry loop,
httpcore's 64 KiB reads, h11 events, a join at the end), and an 8 MiB upload batch was
encrypted into a memory BIO and copied out again on the trio thread. A blocking
`ssl.SSLSocket` reading into a preallocated buffer, or writing straight from the body, does
the same in a worker thread, so the trio thread (which also answers FUSE) never sees the
bytes. Both requests are idempotent (blocks are content addressed), so a kept-alive socket
the server closed meanwhile is simply retried on a fresh one. Everything else stays on
`RemoteClient`'s httpx client.

The caller (`RemoteClient`) maps the answer: this module returns `(status, headers, body)`
and raises only `OSError` / `ssl.SSLError` / `BulkTransportError` for transport trouble.
Thread safe: a socket is used by one thread at a time (popped from, then pushed back to,
the idle list).
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Sequence
from urllib.parse import urlsplit

from blockstore.ids import BlockId
from blockstore.wire import BULK_ALPN, MAX_BLOCK_BYTES, Buffer

__all__ = ["BulkTransport", "BulkTransportError"]

_MAX_HEAD_BYTES = 64 << 10
_MAX_BODY_BYTES = MAX_BLOCK_BYTES + (1 << 20)  # a wire frame: header byte + at most 8 MiB
_HEAD_RECV_BYTES = 16 << 10
"""Reads while looking for the end of a response head: one TLS record at most, so little
of the body lands in the head buffer (the body is read straight into its own buffer)."""
_JOIN_FIRST_BYTES = 64 << 10
_PEER_GONE = (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError)
"""How a kept-alive socket the server already closed fails (plain TCP or TLS level)."""


class BulkTransportError(Exception):
    """The server's answer could not be read (malformed or unsupported framing)."""


class _ResetBeforeReply(Exception):
    """A kept-alive socket was closed by the server before any reply byte (retry it)."""


class BulkTransport:
    """Block GETs and batch POSTs with blocking I/O (call from worker threads only)."""

    def __init__(
        self,
        base_url: str,
        context: ssl.SSLContext,
        token: str | None,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_idle: int,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"not an https URL: {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or 443
        self._prefix = parts.path.rstrip("/")
        self._context = context
        # The server serves connections that ask for this in a thread of their own, away
        # from its HTTP framework (server.bulk_conn). http/1.1 is offered too, so that a
        # TLS proxy in front of the server that does not know BULK_ALPN (nginx refuses a
        # handshake with no protocol in common) picks http/1.1, and the same requests go
        # through as plain HTTP/1.1. `context` is this transport's own.
        context.set_alpn_protocols([BULK_ALPN, "http/1.1"])
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_idle = max_idle
        host = f"[{self._host}]" if ":" in self._host else self._host
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self._headers = (
            f"Host: {host}:{self._port}\r\nUser-Agent: drive-client/0.1\r\n{auth}"
            "Accept-Encoding: identity\r\n"
        ).encode("ascii")
        self._idle: list[ssl.SSLSocket] = []
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Close the idle sockets; sockets in use are closed when their request ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()

    def get(self, bid: BlockId) -> tuple[int, dict[str, str], bytearray]:
        """`GET /api/v1/blocks/{bid}` -> (status, lower-cased headers, body)."""
        return self._round_trip("GET", f"/api/v1/blocks/{bid}", [])

    def post(
        self, path: str, body: Buffer | Sequence[Buffer], content_type: str
    ) -> tuple[int, dict[str, str], bytearray]:
        """`POST path` with `body` (an idempotent request only) -> (status, headers, body).

        `body` may be a list of buffers, sent one after the other (never joined).
        """
        pieces = [body] if isinstance(body, bytes | bytearray | memoryview) else list(body)
        return self._round_trip("POST", path, pieces, content_type)

    def _round_trip(
        self, method: str, path: str, body: list[Buffer], content_type: str = ""
    ) -> tuple[int, dict[str, str], bytearray]:
        head = f"{method} {self._prefix}{path} HTTP/1.1\r\n".encode() + self._headers
        if method != "GET":
            length = sum(len(piece) for piece in body)
            head += f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n".encode()
        head += b"\r\n"
        while True:
            sock, reused = self._checkout()
            try:
                status, headers, answer, keep = _exchange(sock, head, body, reused)
            except _ResetBeforeReply:
                sock.close()
                continue  # a stale kept-alive socket: the request is idempotent, retry
            except BaseException:
                sock.close()
                raise
            if keep:
                self._checkin(sock)
            else:
                sock.close()
            return status, headers, answer

    def _checkout(self) -> tuple[ssl.SSLSocket, bool]:
        with self._lock:
            if self._closed:
                raise BulkTransportError("client closed")
            if self._idle:
                return self._idle.pop(), True
        raw = socket.create_connection((self._host, self._port), timeout=self._connect_timeout_s)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = self._context.wrap_socket(raw)  # the pin is the identity: no SNI needed
        except BaseException:
            raw.close()
            raise
        sock.settimeout(self._read_timeout_s)
        return sock, False

    def _checkin(self, sock: ssl.SSLSocket) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(sock)
                return
        sock.close()


def _exchange(
    sock: ssl.SSLSocket, request_head: bytes, body: list[Buffer], reused: bool
) -> tuple[int, dict[str, str], bytearray, bool]:
    """Send one request and read its reply: (status, headers, body, keep-alive)."""
    try:
        if body and len(body[0]) <= _JOIN_FIRST_BYTES:
            request_head, body = request_head + body[0], body[1:]  # one TLS record, not two
        sock.sendall(request_head)
        for piece in body:
            sock.sendall(piece)
    except _PEER_GONE as exc:
        if reused:
            raise _ResetBeforeReply from None
        # The server may have answered early (e.g. 413) and closed: read that answer.
        try:
            return _read_reply(sock, reused)
        except (OSError, BulkTransportError):
            raise exc from None
    return _read_reply(sock, reused)


def _read_reply(sock: ssl.SSLSocket, reused: bool) -> tuple[int, dict[str, str], bytearray, bool]:
    head = bytearray()
    try:
        while (end := head.find(b"\r\n\r\n")) < 0:
            if len(head) > _MAX_HEAD_BYTES:
                raise BulkTransportError("response head too large")
            chunk = sock.recv(_HEAD_RECV_BYTES)
            if not chunk:
                if reused and not head:
                    raise _ResetBeforeReply
                raise BulkTransportError("connection closed before the response head")
            head += chunk
    except _PEER_GONE:
        if reused and not head:
            raise _ResetBeforeReply from None
        raise
    status, headers = _parse_head(bytes(head[:end]))
    if "transfer-encoding" in headers or "content-length" not in headers:
        raise BulkTransportError("response without a content length")
    try:
        length = int(headers["content-length"])
    except ValueError:
        raise BulkTransportError("bad content length") from None
    if not 0 <= length <= _MAX_BODY_BYTES:
        raise BulkTransportError(f"response body of {length} bytes is too large")
    reply = bytearray(length)
    view = memoryview(reply)
    got = len(head) - end - 4
    if got > length:
        raise BulkTransportError("more bytes than the content length")
    view[:got] = head[end + 4 :]
    while got < length:
        n = sock.recv_into(view[got:], length - got)
        if not n:
            raise BulkTransportError("connection closed mid-body")
        got += n
    view.release()
    keep = headers.get("connection", "").lower() != "close"
    return status, headers, reply, keep


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/1."):
        raise BulkTransportError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
    try:
        status = int(rest[:3])
    except ValueError:
        raise BulkTransportError(f"bad status line: {lines[0][:80]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise BulkTransportError(f"bad header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return status, headers
