"""Reading HTTP/1.1 answers off a raw TLS socket, for tests that must see the bytes on the
wire (header order, keep-alive, pipelining) rather than what an HTTP client makes of them."""

from __future__ import annotations

import ssl

__all__ = ["closed", "read_answer"]


def read_answer(sock: ssl.SSLSocket) -> tuple[bytes, list[tuple[str, str]], bytes]:
    """The status line, the headers in order (names lower-cased) and the body of one
    answer with a Content-Length; reads no byte of the body's end."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = [
        (k.decode("latin-1").strip().lower(), v.decode("latin-1").strip())
        for k, _, v in (x.partition(b":") for x in lines)
    ]
    length = int(dict(headers)["content-length"])
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk, "connection closed in the body"
        body += chunk
    return status, headers, body


def closed(sock: ssl.SSLSocket) -> bool:
    """Whether the server closed the connection (reads one byte to find out)."""
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, ssl.SSLError):
        return True
