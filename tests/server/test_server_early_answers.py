"""A request answered before the server read its body keeps its connection usable, or says
it will not.

Found by the fuzz test on a loaded machine: `QUERY /api/v1/commit/batch` with a small JSON
body got its 405 while the body was still on the way, hypercorn then closed the keep-alive
connection without `Connection: close` (h11 cannot start the next request before the body
ends), and the client's next request on it failed with `SSLEOFError`. Each case sends the
head, waits until the server has surely read it, then the body and a second request on the
same connection: both must be answered.
"""

from __future__ import annotations

import select
import socket
import ssl
import time

import pytest

from tests.helpers.server_proc import ServerProcess

pytestmark = pytest.mark.e2e

HEAD_ALONE_SECONDS = 0.5
"""How long the head travels alone (the old server answered early within milliseconds)."""
SETTLE_SECONDS = 0.3
"""After an early answer, how long the body waits (the old server closed meanwhile)."""


def _tls(srv: ServerProcess) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    return srv.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1")


class _Answers:
    """HTTP/1.1 answers read off one TLS socket, framed by their Content-Length."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.buffer = b""

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def next(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines)}
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._more()
        self.buffer = self.buffer[length:]
        return int(status_line.split()[1]), headers


def _head(method: str, target: str, token: str, length: int) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {token}",
             "Content-Type: application/json", f"Content-Length: {length}"]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("QUERY", "/api/v1/commit/batch", 405),  # the router's answer: no route reads a body
        ("POST", "/api/v1/no-such-endpoint", 404),
        ("GET", "/api/v1/whoami", 200),  # a route that never reads a body
    ],
)
def test_an_answer_before_the_body_keeps_the_connection(
    shared_server: ServerProcess, new_user: tuple[str, str], method: str, target: str,
    status: int,
) -> None:  # fmt: skip
    token = new_user[1]
    body = b'{"commits": []}'
    with _tls(shared_server) as s:
        answers = _Answers(s)
        s.sendall(_head(method, target, token, len(body)))
        if select.select([s], [], [], HEAD_ALONE_SECONDS)[0]:
            time.sleep(SETTLE_SECONDS)  # answered early: let the server finish with it
        try:
            s.sendall(body + _head("GET", "/api/v1/whoami", token, 0))
            first, headers = answers.next()
            second, _ = answers.next()
        except (OSError, ConnectionError) as exc:  # ssl.SSLEOFError on the old server
            pytest.fail(f"the server dropped the connection after its {status}: {exc!r}")
        assert (first, second) == (status, 200)
        assert "close" not in headers.get("connection", "").lower()


def test_an_answer_before_a_body_too_large_to_skip_says_close(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    """A body the server will not read through (beyond `DRAIN_LIMIT_BYTES`): the answer
    comes at once and announces the close, so no client sends a request into it."""
    with _tls(shared_server) as s:
        s.sendall(_head("QUERY", "/api/v1/commit/batch", new_user[1], 1 << 30))
        status, headers = _Answers(s).next()
        assert status == 405
        assert headers.get("connection", "").lower() == "close"
        assert s.recv(65536) == b""  # and the server closed it
