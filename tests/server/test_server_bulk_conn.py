"""Bulk connections (TLS ALPN drive-bulk/1, server.bulk_conn) against the real server.

Raw TLS sockets speak to the server the way the sync client's bulk transport does, plus
the malformed and refused requests a client must get a clear answer to.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from blockstore.codec import decode_wire, encode_wire
from blockstore.ids import block_id
from blockstore.wire import BULK_ALPN, encode_block_records, parse_block_records
from server.bulk_conn import MAX_BULK_CONNECTIONS
from tests.helpers.raw_http import closed, read_answer
from tests.helpers.server_proc import ServerProcess

pytestmark = pytest.mark.e2e


@contextmanager
def bulk_socket(srv: ServerProcess, alpn: list[str] | None = None) -> Iterator[ssl.SSLSocket]:
    ctx = srv.ssl_context()
    ctx.set_alpn_protocols(alpn or [BULK_ALPN, "http/1.1"])  # what the sync client offers
    host, port = srv.url.removeprefix("https://").rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=30)
    with ctx.wrap_socket(raw, server_hostname=host) as sock:
        yield sock


def send(sock: ssl.SSLSocket, method: str, path: str, token: str | None,
         body: bytes = b"", extra: str = "") -> None:  # fmt: skip
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    length = f"Content-Length: {len(body)}\r\n" if method != "GET" else ""
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}{length}{extra}\r\n".encode()
                 + body)  # fmt: skip


def reply(sock: ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    status, headers, body = read_answer(sock)
    return int(status.split(b" ")[1]), dict(headers), body


def test_bulk_connection_uploads_fetches_and_keeps_alive(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    _, token = new_user
    datas = [os.urandom(700_000), b"text " * 40_000, os.urandom(10)]
    ids = [block_id(d) for d in datas]
    body = encode_block_records([(b, encode_wire(d)) for b, d in zip(ids, datas, strict=True)])
    batches_before = batch_200s(shared_server, token)
    with bulk_socket(shared_server) as sock:
        assert sock.selected_alpn_protocol() == BULK_ALPN
        send(sock, "POST", "/api/v1/blocks/batch", token, body)
        status, headers, answer = reply(sock)
        assert (status, json.loads(answer)) == (200, {"stored": [True, True, True]})
        assert headers["x-request-id"]
        assert "x-ratelimit-limit" in headers
        # the same connection: fetch them back, then one GET
        send(sock, "POST", "/api/v1/blocks/fetch", token, json.dumps({"ids": ids}).encode())
        status, headers, answer = reply(sock)
        assert status == 200
        assert headers["content-type"] == "application/octet-stream"
        got = [(b, decode_wire(f, expected_id=b)) for b, f in parse_block_records(answer)]
        assert got == list(zip(ids, datas, strict=True))
        send(sock, "GET", f"/api/v1/blocks/{ids[0]}", token)
        status, _, answer = reply(sock)
        assert status == 200
        assert decode_wire(answer, expected_id=ids[0]) == datas[0]
        # uploading again stores nothing new
        send(sock, "POST", "/api/v1/blocks/batch", token, body)
        assert json.loads(reply(sock)[2]) == {"stored": [False, False, False]}
    with shared_server.client(token) as http:
        assert http.post("/api/v1/blocks/missing", json={"ids": ids}).json() == {"missing": []}
    assert batch_200s(shared_server, token) == batches_before + 2  # counted like any request


def batch_200s(srv: ServerProcess, token: str) -> int:
    with srv.client(token) as http:
        text = http.get("/metrics").text
    m = re.search(r'^drive_requests_total{route="/api/v1/blocks/batch",status="200"} (\d+)',
                  text, re.MULTILINE)  # fmt: skip
    return int(m.group(1)) if m else 0


def test_bulk_connection_refusals_are_clear_and_keep_the_connection(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    _, token = new_user
    data = os.urandom(300_000)
    record = encode_block_records([(block_id(data), encode_wire(data))])
    with bulk_socket(shared_server) as sock:
        # no token: 401, the body is read and dropped, the connection stays usable
        send(sock, "POST", "/api/v1/blocks/batch", None, record)
        status, _, answer = reply(sock)
        assert (status, json.loads(answer)["error"]) == (401, "unauthorized")
        # a frame that is not the block it claims: 400, nothing stored
        liar = encode_block_records([(block_id(b"other"), encode_wire(data))])
        send(sock, "POST", "/api/v1/blocks/batch", token, liar)
        assert reply(sock)[0] == 400
        send(sock, "POST", "/api/v1/blocks/fetch", token, b'{"ids": []}')
        assert reply(sock)[0] == 400
        send(sock, "POST", "/api/v1/blocks/fetch", token, b"not json")
        assert reply(sock)[0] == 400
        send(sock, "GET", f"/api/v1/blocks/{block_id(b'nobody has this')}", token)
        assert reply(sock)[0] == 404
        send(sock, "GET", "/api/v1/blocks/NOTANID", token)
        assert reply(sock)[0] == 400
        send(sock, "GET", "/api/v1/blocks/batch", token)
        assert reply(sock)[0] == 405
        send(sock, "GET", "/api/v1/list?path=/", token)  # not a bulk route
        status, _, answer = reply(sock)
        assert (status, json.loads(answer)["error"]) == (404, "not_found")
        send(sock, "POST", "/api/v1/blocks/batch", token, record)  # still serving
        assert json.loads(reply(sock)[2]) == {"stored": [True]}
    with bulk_socket(shared_server) as sock:  # chunked bodies are refused, then closed
        send(sock, "POST", "/api/v1/blocks/batch", token, extra="Transfer-Encoding: chunked\r\n")
        status, headers, _ = reply(sock)
        assert status == 411
        assert headers["connection"] == "close"
        assert closed(sock)
    with bulk_socket(shared_server) as sock:  # a body over the limit is refused, not read
        sock.sendall(b"POST /api/v1/blocks/batch HTTP/1.1\r\nAuthorization: Bearer "
                     + token.encode() + b"\r\nContent-Length: 999999999\r\n\r\n")  # fmt: skip
        status, headers, answer = reply(sock)
        assert status == 413
        assert json.loads(answer)["error"] == "too_large"
        assert closed(sock)
    with bulk_socket(shared_server) as sock:  # garbage: 400 and closed
        sock.sendall(b"HELLO\r\n\r\n")
        status, headers, _ = reply(sock)
        assert status == 400
        assert closed(sock)


def test_clients_without_the_bulk_protocol_get_the_full_api(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    _, token = new_user
    for offered in (["http/1.1"], ["h2", "http/1.1"]):  # httpx, curl, browsers
        with bulk_socket(shared_server, offered) as sock:
            assert sock.selected_alpn_protocol() == "http/1.1"
            send(sock, "GET", "/api/v1/list?path=/", token)
            status, _, answer = reply(sock)
            assert status == 200
            assert "entries" in json.loads(answer)


def test_the_server_stops_at_once_with_an_idle_bulk_connection(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "srv") as srv:
        srv.add_user("u", "pw")
        token = srv.login("u", "pw")
        with bulk_socket(srv) as sock:
            send(sock, "GET", f"/api/v1/blocks/{block_id(b'none')}", token)
            assert reply(sock)[0] == 404  # served, now waiting for the next request
            started = time.monotonic()
            assert srv.stop() == 0
            # Without closing waiting bulk connections the stop took the whole 5 s grace.
            assert time.monotonic() - started < 3
            assert closed(sock)


def test_with_every_bulk_thread_taken_new_connections_are_still_served(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    # Kept-alive bulk sockets of a few devices can hold every bulk thread; a new
    # connection must then be served anyway (through the ordinary HTTP path).
    _, token = new_user
    data = os.urandom(100_000)
    record = encode_block_records([(block_id(data), encode_wire(data))])
    with ExitStack() as stack:
        held = [stack.enter_context(bulk_socket(shared_server))
                for _ in range(MAX_BULK_CONNECTIONS)]  # fmt: skip
        for sock in held:  # each served once: now a thread waits on each for more
            send(sock, "GET", f"/api/v1/blocks/{block_id(b'none')}", token)
            assert reply(sock)[0] == 404
        extra = stack.enter_context(bulk_socket(shared_server))
        extra.settimeout(10)
        send(extra, "POST", "/api/v1/blocks/batch", token, record)
        status, _, answer = reply(extra)
        assert (status, json.loads(answer)) == (200, {"stored": [True]})
        send(extra, "GET", "/api/v1/blocks/batch", token)
        assert reply(extra)[0] == 400  # the ordinary route table: "batch" is no block id
