"""Slow and truncating senders against a real server, on both transports.

Bodies take room from a server-wide budget before they are read and are kept only as
their bytes arrive; heads and bodies have deadlines for the whole of them (server.body_budget,
server.bulk_conn, server.web). The deadlines here are short through the server config.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from pathlib import Path

import pytest

from blockstore.codec import encode_wire
from blockstore.ids import block_id
from blockstore.wire import encode_block_records
from server.body_budget import BodyBudget
from server.errors import RequestTimeout
from tests.helpers.server_proc import ServerProcess
from tests.server.test_server_bulk_conn import bulk_socket, closed, reply

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
BUDGET = 32 * MIB
HEAD_S = 2.0
BODY_S = 3.0
CONFIG = {
    "body_memory_bytes": BUDGET,
    "body_memory_per_user_bytes": BUDGET // 2,
    "request_head_seconds": HEAD_S,
    "request_body_seconds": BODY_S,
    "request_body_min_bytes_per_second": 1 << 30,  # the deadline is about BODY_S
    "keep_alive_seconds": 4.0,  # hypercorn's deadline for a whole head
    "rate_burst": 10_000,
}
SLACK = 80 * MIB
"""Threads, TLS buffers, allocator slack and the normal client's own traffic."""


def rss(pid: int) -> int:
    """The process's resident set size in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data", config=CONFIG) as server:
        server.add_user("slow", "pw")
        server.add_user("fine", "pw")
        yield server


def claim(sock: ssl.SSLSocket, line: str, token: str, length: int, first: bytes) -> None:
    """Send a head that claims a body of `length` bytes, and the body's first bytes."""
    sock.sendall(f"{line} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                 f"Content-Length: {length}\r\n\r\n".encode() + first)  # fmt: skip


def test_slow_senders_stay_within_the_body_budget_and_others_are_served(
    srv: ServerProcess,
) -> None:
    hostile = srv.login("slow", "pw")
    fine = srv.login("fine", "pw")
    data = os.urandom(300_000)
    bid = block_id(data)
    with srv.client(fine) as http:  # warm up every path the normal client takes below
        http.put(f"/api/v1/blocks/{bid}", content=encode_wire(data)).raise_for_status()
        http.post("/files/upload?path=/warm", content=data).raise_for_status()
    base = rss(srv.pid)
    peak = base
    with ExitStack() as stack:
        socks: list[ssl.SSLSocket] = []
        for _ in range(48):  # bulk batches claiming 60 MiB each
            sock = stack.enter_context(bulk_socket(srv))
            claim(sock, "POST /api/v1/blocks/batch", hostile, 60 * MIB, b"x")
            socks.append(sock)
        for i in range(8):  # the same through hypercorn: PUT of a block frame
            sock = stack.enter_context(bulk_socket(srv, ["http/1.1"]))
            claim(sock, f"PUT /api/v1/blocks/{block_id(bytes([i]))}", hostile, 8 * MIB, b"x")
            socks.append(sock)
        heads = []
        for _ in range(70):  # heads trickled, a byte at a time (past the 64 bulk threads)
            sock = stack.enter_context(bulk_socket(srv))
            sock.sendall(b"G")
            heads.append(sock)
        started = time.monotonic()
        # Meanwhile a normal client uploads and downloads, promptly.
        with srv.client(fine) as http:
            for i in range(3):
                t0 = time.monotonic()
                other = os.urandom(200_000)
                http.put(f"/api/v1/blocks/{block_id(other)}", content=encode_wire(other))
                assert http.get(f"/api/v1/blocks/{bid}").status_code == 200
                up = http.post(f"/files/upload?path=/f{i}", content=other)
                assert up.status_code == 201
                assert http.get(f"/files/download?path=/f{i}").content == other
                assert time.monotonic() - t0 < 2.0
                for sock in socks + heads:  # trickle on
                    with suppress(OSError):
                        sock.sendall(b"E")
                peak = max(peak, rss(srv.pid))
                time.sleep(0.3)
        # Past the deadlines every slow connection is closed: a late body gets 408 first.
        deadline = started + BODY_S + 6.0
        for sock in socks + heads:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            peak = max(peak, rss(srv.pid))
            assert answered_408_or_closed(sock)
        assert time.monotonic() < deadline
    after = rss(srv.pid)
    print(f"RSS base {base / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB, after {after / MIB:.0f} MiB")
    assert peak < base + BUDGET + SLACK
    assert after < base + BUDGET + SLACK


def answered_408_or_closed(sock: ssl.SSLSocket) -> bool:
    """True when the server answers 408 and closes, or just closes (a late head)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    except TimeoutError:
        return False
    return data == b"" or data.startswith(b"HTTP/1.1 408 ")


def test_a_head_or_body_past_its_deadline_closes_the_connection(srv: ServerProcess) -> None:
    token = srv.login("slow", "pw")
    with bulk_socket(srv) as sock:  # a head that never ends, though bytes keep coming
        sock.sendall(b"GET /api/v1/blocks/")
        t0 = time.monotonic()
        sock.settimeout(0.5)
        while time.monotonic() - t0 < HEAD_S + 2:
            try:
                sock.sendall(b"a")
                if sock.recv(1) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        elapsed = time.monotonic() - t0
        assert HEAD_S - 0.5 < elapsed < HEAD_S + 2
    for alpn in (None, ["http/1.1"]):  # a body that stops half way: 408, then closed
        with bulk_socket(srv, alpn) as sock:
            data = os.urandom(100_000)
            record = encode_block_records([(block_id(data), encode_wire(data))])
            t0 = time.monotonic()
            claim(sock, "POST /api/v1/blocks/batch", token, len(record), record[:50_000])
            sock.settimeout(BODY_S + 5)
            status, headers, answer = reply(sock)
            assert (status, json.loads(answer)["error"]) == (408, "request_timeout")
            assert headers.get("connection") == "close"
            assert BODY_S - 0.5 < time.monotonic() - t0 < BODY_S + 3
            assert closed(sock)
    with srv.client(token) as http:  # nothing of it was stored
        assert http.post("/api/v1/blocks/missing", json={"ids": [block_id(data)]}).json() == {
            "missing": [block_id(data)]
        }


def test_a_body_cut_short_commits_nothing(srv: ServerProcess) -> None:
    token = srv.login("slow", "pw")
    data = os.urandom(400_000)
    for alpn in (["http/1.1"], None):
        with bulk_socket(srv, alpn) as sock:  # a simple upload; the client goes away
            line = "POST /files/upload?path=/cut" if alpn else "POST /api/v1/blocks/batch"
            body = data if alpn else encode_block_records([(block_id(data), encode_wire(data))])
            claim(sock, line, token, len(body), body[: len(body) // 2])
            time.sleep(0.5)
            sock.shutdown(socket.SHUT_RDWR)
    time.sleep(1.0)
    with srv.client(token) as http:
        assert http.get("/api/v1/meta", params={"path": "/cut"}).status_code == 404
        missing = http.post("/api/v1/blocks/missing", json={"ids": [block_id(data)]})
        assert missing.json() == {"missing": [block_id(data)]}
    assert not [p for p in (srv.data_dir / "uploads").iterdir() if p.name.startswith("tmp-")]


def test_the_budget_waits_for_room_and_keeps_each_user_to_a_share() -> None:
    budget = BodyBudget(100, 60)
    with budget.hold_sync(60, 1, 0):
        with pytest.raises(RequestTimeout), budget.hold_sync(10, 1, 0.05):
            pass  # user 1's share is full: it waits, then 408
        with budget.hold_sync(40, 2, 0):  # another user still gets the rest at once
            assert budget.used == 100
        got: list[float] = []

        def wait() -> None:
            with budget.hold_sync(30, 2, 5):
                got.append(time.monotonic())

        waiter = threading.Thread(target=wait)
        with budget.hold_sync(40, 3, 0):
            waiter.start()
            time.sleep(0.2)
            assert not got  # 100 in use: user 2 waits for room
            released = time.monotonic()
        waiter.join(5)
        assert got
        assert got[0] >= released
    assert budget.used == 0
