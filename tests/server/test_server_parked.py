"""Long polls parked outside hypercorn (server.parked, server.longpoll_fast, server.http_conn),
over real HTTPS on 127.0.0.1: raw TLS sockets, so the bytes on the wire are what is checked.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from tests.helpers.raw_http import closed, read_answer
from tests.helpers.server_proc import ServerProcess

pytestmark = pytest.mark.e2e

CONFIG = {"longpoll_min_seconds": 1, "longpoll_jitter_fraction": 0, "rate_burst": 10_000}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("parked") / "data", config=CONFIG) as server:
        yield server


@pytest.fixture
def token(srv: ServerProcess, request: pytest.FixtureRequest) -> str:
    name = "u" + str(abs(hash(request.node.name)) % 10**8)
    srv.add_user(name, "pw")
    return srv.login(name, "pw")


@contextmanager
def tls_socket(srv: ServerProcess) -> Iterator[ssl.SSLSocket]:
    ctx = srv.ssl_context()
    ctx.set_alpn_protocols(["http/1.1"])
    host, port = srv.url.removeprefix("https://").rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=30)
    with ctx.wrap_socket(raw, server_hostname=host) as sock:
        yield sock


def send(sock: ssl.SSLSocket, target: str, token: str, extra: str = "") -> None:
    sock.sendall(
        f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n{extra}\r\n".encode()
    )


def gauge(srv: ServerProcess, name: str) -> float:
    with srv.client() as http:
        text = http.get("/metrics").text
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def cursor_of(srv: ServerProcess, token: str) -> str:
    with srv.client(token) as http:
        return str(http.get("/api/v1/cursor").json()["cursor"])


def commit(srv: ServerProcess, token: str, path: str) -> None:
    with srv.client(token) as http:
        http.post("/api/v1/mkdir", json={"path": path}).raise_for_status()


def poll_target(cursor: str, timeout: int = 60) -> str:
    return f"/api/v1/longpoll?cursor={cursor}&timeout={timeout}"


def parked(srv: ServerProcess) -> float:
    return gauge(srv, "drive_longpolls_parked")


def test_a_commit_answers_a_parked_poll_as_hypercorn_would(srv: ServerProcess, token: str) -> None:
    # The reference: the same poll through hypercorn and the route (Connection: close is
    # left to hypercorn), answered at once because the cursor is behind.
    commit(srv, token, "/first")
    with tls_socket(srv) as sock:
        send(sock, poll_target("0"), token, "Connection: close\r\n")
        ref_status, ref_headers, ref_body = read_answer(sock)
    cursor = cursor_of(srv, token)
    before = parked(srv)
    with tls_socket(srv) as sock:
        send(sock, poll_target(cursor), token)
        wait_for(lambda: parked(srv) == before + 1)
        commit(srv, token, "/wake")
        status, headers, body = read_answer(sock)
    assert (
        (status, body)
        == (ref_status, ref_body)
        == (b"HTTP/1.1 200 ", b'{"changes":true,"backoff":null}')
    )
    assert [k for k, _ in headers] == [k for k, _ in ref_headers if k != "connection"]
    values = dict(headers)
    assert values["content-type"] == "application/json"
    assert values["server"] == dict(ref_headers)["server"]
    assert len(values["x-request-id"]) == 16
    assert values["x-ratelimit-limit"] == "10000"


def test_the_hold_time_ends_with_the_no_change_answer(srv: ServerProcess, token: str) -> None:
    cursor = cursor_of(srv, token)
    with tls_socket(srv) as sock:
        started = time.monotonic()
        send(sock, poll_target(cursor, timeout=1), token)
        status, _, body = read_answer(sock)
        waited = time.monotonic() - started
    assert status == b"HTTP/1.1 200 "
    assert json.loads(body) == {"changes": False, "backoff": None}
    assert 0.9 <= waited < 4.0


def test_a_client_that_leaves_frees_its_record(srv: ServerProcess, token: str) -> None:
    cursor = cursor_of(srv, token)
    before = (parked(srv), gauge(srv, "drive_longpolls_open"))
    gone = gauge(srv, 'drive_requests_total{route="/api/v1/longpoll",status="499"}')
    with tls_socket(srv) as sock:
        send(sock, poll_target(cursor), token)
        wait_for(lambda: parked(srv) == before[0] + 1)
    wait_for(lambda: (parked(srv), gauge(srv, "drive_longpolls_open")) == before)
    assert gauge(srv, 'drive_requests_total{route="/api/v1/longpoll",status="499"}') == gone + 1


def test_one_connection_carries_polls_and_other_requests(srv: ServerProcess, token: str) -> None:
    cursor = cursor_of(srv, token)
    before = parked(srv)
    with tls_socket(srv) as sock:
        send(sock, poll_target(cursor, timeout=1), token)  # parked, answered "no change"
        status, _, body = read_answer(sock)
        assert (status, json.loads(body)["changes"]) == (b"HTTP/1.1 200 ", False)
        send(sock, "/api/v1/whoami", token)  # then hypercorn, on the same connection
        status, _, body = read_answer(sock)
        assert status == b"HTTP/1.1 200 "
        assert "user" in json.loads(body)
        send(sock, poll_target(cursor), token)  # taken back from hypercorn and parked
        wait_for(lambda: parked(srv) == before + 1)
        commit(srv, token, "/keepalive")
        status, _, body = read_answer(sock)
        assert json.loads(body) == {"changes": True, "backoff": None}
        send(sock, "/api/v1/whoami", token)
        assert read_answer(sock)[0] == b"HTTP/1.1 200 "
    wait_for(lambda: parked(srv) == before)


def test_refused_polls_get_hypercorns_answers(srv: ServerProcess, token: str) -> None:
    with tls_socket(srv) as sock:
        send(sock, poll_target("0"), "not-a-token")
        status, headers, body = read_answer(sock)
        assert status == b"HTTP/1.1 401 "
        assert json.loads(body)["error"] == "unauthorized"
        assert dict(headers)["server"].startswith("hypercorn")
        send(sock, poll_target("x"), token)  # a bad cursor, on the same connection
        status, _, body = read_answer(sock)
        assert status == b"HTTP/1.1 400 "
        assert json.loads(body)["error"] == "bad_request"
        send(sock, poll_target("0"), token, "X-Drive-Client: bad id\r\n")
        assert read_answer(sock)[0] == b"HTTP/1.1 400 "


def test_too_many_open_polls_get_the_backoff_answer(tmp_path: Path) -> None:
    config = {**CONFIG, "longpoll_max_open": 1, "longpoll_backoff_seconds": 7}
    with ServerProcess(tmp_path / "data", config=config) as server:
        server.add_user("a", "pw")
        tok = server.login("a", "pw")
        cursor = cursor_of(server, tok)
        with tls_socket(server) as first, tls_socket(server) as second:
            send(first, poll_target(cursor), tok)
            wait_for(lambda: parked(server) == 1)
            send(second, poll_target(cursor), tok)
            _status, _, body = read_answer(second)
            assert json.loads(body) == {"changes": False, "backoff": 7}
            assert parked(server) == 1


def test_shutdown_answers_parked_polls_and_closes(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", config=CONFIG) as server:
        server.add_user("a", "pw")
        tok = server.login("a", "pw")
        cursor = cursor_of(server, tok)
        with tls_socket(server) as sock:
            send(sock, poll_target(cursor), tok)
            wait_for(lambda: parked(server) == 1)
            started = time.monotonic()
            server.stop()
            _status, _, body = read_answer(sock)
            assert json.loads(body) == {"changes": False, "backoff": None}
            assert closed(sock)
            assert time.monotonic() - started < 4.0


def test_many_parked_polls_wake_at_once(srv: ServerProcess, token: str) -> None:
    cursor = cursor_of(srv, token)
    before = parked(srv)
    n = 50
    with tls_sockets(srv, n) as socks:
        for sock in socks:
            send(sock, poll_target(cursor), token)
        wait_for(lambda: parked(srv) == before + n)
        commit(srv, token, "/many")
        for sock in socks:
            assert json.loads(read_answer(sock)[2]) == {"changes": True, "backoff": None}
    wait_for(lambda: parked(srv) == before)


@contextmanager
def tls_sockets(srv: ServerProcess, n: int) -> Iterator[list[ssl.SSLSocket]]:
    with ExitStack() as stack:
        yield [stack.enter_context(tls_socket(srv)) for _ in range(n)]


def test_an_httpx_poll_on_a_pooled_connection_is_parked(srv: ServerProcess, token: str) -> None:
    cursor = cursor_of(srv, token)
    before = parked(srv)
    answers: list[httpx.Response] = []
    with srv.client(token) as http:
        http.get("/api/v1/whoami").raise_for_status()  # a pooled connection hypercorn served
        poll = threading.Thread(
            target=lambda: answers.append(
                http.get("/api/v1/longpoll", params={"cursor": cursor, "timeout": 60})
            )
        )
        poll.start()
        try:
            wait_for(lambda: parked(srv) == before + 1)
            commit(srv, token, "/pooled")
        finally:
            poll.join(30)
        assert answers[0].status_code == 200
        assert answers[0].json() == {"changes": True, "backoff": None}
        assert answers[0].headers["content-type"] == "application/json"
        assert http.get("/api/v1/whoami").status_code == 200  # the same connection, again


def test_a_request_sent_behind_a_parked_poll_is_answered_after_it(
    srv: ServerProcess, token: str
) -> None:
    cursor = cursor_of(srv, token)
    before = parked(srv)
    with tls_socket(srv) as sock:
        send(sock, poll_target(cursor), token)
        wait_for(lambda: parked(srv) == before + 1)
        send(sock, "/api/v1/whoami", token)  # pipelined: waits for the poll's answer
        commit(srv, token, "/pipelined")
        assert json.loads(read_answer(sock)[2]) == {"changes": True, "backoff": None}
        status, _, body = read_answer(sock)
        assert status == b"HTTP/1.1 200 "
        assert "user" in json.loads(body)


def test_pipelined_requests_with_a_poll_go_to_hypercorn(srv: ServerProcess, token: str) -> None:
    target = poll_target("0", timeout=1)
    both = f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n" * 2
    commit(srv, token, "/ahead")  # the cursor is behind: both are answered at once
    with tls_socket(srv) as sock:
        sock.sendall(both.encode())
        for _ in range(2):
            assert json.loads(read_answer(sock)[2]) == {"changes": True, "backoff": None}
