"""The server's own TLS transport (server/tls_stream.py) against misbehaving clients.

Each case ends by checking that the server still answers a normal request: a bad
connection must cost that connection only.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading

import httpx
import pytest

from blockstore.codec import encode_wire
from blockstore.wire import encode_block_records
from tests.helpers.server_proc import ServerProcess

pytestmark = pytest.mark.e2e


def _still_serving(srv: ServerProcess) -> None:
    with srv.client() as http:
        assert http.get("/api/v1/info").status_code == 200


def _tls(srv: ServerProcess) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    return srv.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1")


def test_plain_http_and_garbage_on_the_tls_port_are_refused(shared_server: ServerProcess) -> None:
    for junk in (b"GET /api/v1/info HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(4096), b""):
        answer = b""
        with socket.create_connection(("127.0.0.1", shared_server.port), timeout=10) as s:
            try:
                s.sendall(junk)
                s.shutdown(socket.SHUT_WR)
                while chunk := s.recv(65536):
                    answer += chunk
            except OSError:  # reset, broken pipe, "not connected": refused early, fine
                pass
        assert b"HTTP/1.1" not in answer
    _still_serving(shared_server)


def test_clients_that_vanish_mid_request_or_mid_body(shared_server: ServerProcess) -> None:
    with _tls(shared_server) as s:
        s.sendall(b"GET /api/v1/inf")  # half a request line, then gone
    with _tls(shared_server) as s:  # a body promised and never sent
        s.sendall(b"POST /api/v1/blocks/batch HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 10000000\r\n\r\n" + b"x" * 100_000)  # fmt: skip
    raw = socket.create_connection(("127.0.0.1", shared_server.port), timeout=10)
    raw.sendall(b"\x16\x03\x01\x02\x00")  # the start of a ClientHello, then a reset
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    raw.close()
    _still_serving(shared_server)


def test_a_large_upload_and_small_requests_at_the_same_time(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    datas = [os.urandom(4 << 20) for _ in range(8)]  # 32 MiB in one request
    ids = [hashlib.sha256(d).hexdigest() for d in datas]
    body = encode_block_records([(b, encode_wire(d)) for b, d in zip(ids, datas, strict=True)])
    errors: list[BaseException] = []

    def small_requests() -> None:
        try:
            with shared_server.client(new_user[1]) as http:
                for _ in range(50):
                    assert http.get("/api/v1/whoami").status_code == 200
        except (AssertionError, OSError, httpx.HTTPError) as exc:  # the main thread reports it
            errors.append(exc)

    side = threading.Thread(target=small_requests)
    side.start()
    with shared_server.client(new_user[1]) as http:
        r = http.post("/api/v1/blocks/batch", content=body)
        assert r.status_code == 200, r.text
        assert r.json() == {"stored": [True] * 8}
        got = http.post("/api/v1/blocks/fetch", json={"ids": ids[:2]})
        assert got.status_code == 200
        assert len(got.content) > 8 << 20
    side.join()
    assert errors == []
