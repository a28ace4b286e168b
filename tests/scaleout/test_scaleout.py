"""The scale-out shape end to end: a throwaway PostgreSQL cluster, moto's S3 server on
loopback, two API servers and nginx with deploy/nginx-drive.conf (tests/helpers/scaleout.py,
started once for the module). Devices reach the servers only through the balancer, except
where a test needs one particular server."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from blockstore.wire import BULK_ALPN
from tests.helpers.moto_s3 import MotoS3
from tests.helpers.mount_proc import MountProcess, login_home, requires_fuse
from tests.helpers.scaleout import Balancer, ScaleoutStack

pytestmark = pytest.mark.e2e

WAKE_SECONDS = 3.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, moto_s3: MotoS3) -> Iterator[ScaleoutStack]:
    base = tmp_path_factory.mktemp("scaleout")
    with ScaleoutStack(base, moto_s3.endpoint, moto_s3.new_bucket()) as made:
        yield made


@pytest.fixture(scope="module")
def balancer(stack: ScaleoutStack) -> Balancer:
    assert stack.balancer is not None
    return stack.balancer


_users = iter(range(1, 1000))


def _user(stack: ScaleoutStack, balancer: Balancer) -> tuple[str, str]:
    """A fresh user; returns (name, a token logged in through the balancer)."""
    name = f"u{next(_users)}"
    stack.add_user(name, "pw")
    with balancer.client() as http:
        r = http.post("/api/v1/login", json={"user": name, "password": "pw", "device": "d"})
        r.raise_for_status()
        return name, str(r.json()["token"])


def _upload(http: httpx.Client, path: str, data: bytes) -> httpx.Response:
    return http.post("/files/upload", params={"path": path, "uploadType": "media"}, content=data)


def _upstreams(stack: ScaleoutStack, path: str) -> list[str]:
    """The API servers nginx sent requests for `path` to, in order."""
    assert stack.nginx is not None
    return [ln.split()[-1] for ln in stack.nginx.access_log() if ln.split()[2] == path]


def _all_up(stack: ScaleoutStack) -> None:
    """Every API server running again (a test that killed one restarts it)."""
    for srv in stack.servers:
        if not srv.running():
            srv.start()


def test_the_balancer_presents_its_certificate_and_picks_http11_for_bulk(
    balancer: Balancer,
) -> None:
    with balancer.client() as http:
        assert http.get("/healthz").json() == {"ok": True}
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(balancer.cert_path)
    ctx.check_hostname = False
    ctx.set_alpn_protocols([BULK_ALPN, "http/1.1"])  # what syncd.remote.bulk offers
    port = int(balancer.url.rsplit(":", 1)[1])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        assert tls.selected_alpn_protocol() == "http/1.1"
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    pin = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    assert pin == balancer.fingerprint


def test_devices_on_different_servers_see_each_others_changes_by_long_poll(
    stack: ScaleoutStack, balancer: Balancer
) -> None:
    _all_up(stack)
    _, token = _user(stack, balancer)
    with balancer.client(token) as a, balancer.client(token) as b:
        cursor = a.get("/api/v1/cursor").json()["cursor"]
        answer: dict[str, object] = {}

        def poll() -> None:
            t = time.monotonic()
            r = a.get("/api/v1/longpoll", params={"cursor": cursor, "timeout": 60}, timeout=90)
            answer.update(r.json(), seconds=time.monotonic() - t)

        waiter = threading.Thread(target=poll)
        waiter.start()
        time.sleep(1.0)  # the long poll is held by one server
        assert _upload(b, "/from-b.txt", b"hello").status_code == 201
        waiter.join(30)
        assert answer.get("changes") is True, answer
        assert float(answer["seconds"]) < 1.0 + WAKE_SECONDS  # type: ignore[arg-type]
        delta = a.get("/api/v1/delta", params={"cursor": cursor}).json()
        assert [e["file"]["path"] for e in delta["entries"]] == ["/from-b.txt"]
    # least_conn sent the upload to the server not holding the long poll.
    held_by = _upstreams(stack, "/api/v1/longpoll")[-1]
    written_by = _upstreams(stack, "/files/upload")[-1]
    assert held_by != written_by


def test_a_resumable_upload_started_on_one_server_finishes_on_another(
    stack: ScaleoutStack, balancer: Balancer
) -> None:
    _all_up(stack)
    name, _ = _user(stack, balancer)
    first, second = stack.servers
    data = os.urandom(3 << 20)
    with first.client(first.login(name, "pw")) as one:
        started = one.post("/files/upload", params={"path": "/big.bin", "uploadType": "resumable"})
        loc = started.headers["location"]
        half = 2 << 20
        r = one.put(loc, content=data[:half],
                    headers={"Content-Range": f"bytes 0-{half - 1}/{len(data)}"})  # fmt: skip
        assert r.status_code == 308
    first.kill()  # acknowledged (308): those bytes must survive the server
    with second.client(second.login(name, "pw")) as two:
        asked = two.put(loc, headers={"Content-Range": f"bytes */{len(data)}"})
        assert asked.status_code == 308
        assert asked.headers["range"] == f"bytes=0-{half - 1}"
        rest = f"bytes {half}-{len(data) - 1}/{len(data)}"
        r = two.put(loc, content=data[half:], headers={"Content-Range": rest})
        assert r.status_code == 201, r.text
        assert r.json()["content_hash"] == hashlib.sha256(data).hexdigest()
    with balancer.client(_user_token(balancer, name)) as http:
        got = http.get("/files/download", params={"path": "/big.bin"})
        assert got.content == data
    first.start()


def _user_token(balancer: Balancer, name: str) -> str:
    with balancer.client() as http:
        r = http.post("/api/v1/login", json={"user": name, "password": "pw", "device": "d2"})
        r.raise_for_status()
        return str(r.json()["token"])


@requires_fuse
def test_killing_a_server_during_mount_uploads_loses_nothing(
    stack: ScaleoutStack, balancer: Balancer, tmp_path: Path
) -> None:
    _all_up(stack)
    name, token = _user(stack, balancer)
    home = login_home(balancer, tmp_path / "home", name, "pw")  # type: ignore[arg-type]
    written: dict[str, bytes] = {}
    assert stack.nginx is not None
    seen = len(stack.nginx.access_log())

    def write(i: int, m: MountProcess) -> None:
        data = os.urandom(200_000 + i * 10_000)
        (m.mnt / f"f{i}.bin").write_bytes(data)  # acknowledged at close
        written[f"/f{i}.bin"] = data

    with MountProcess(home, tmp_path / "mnt") as m:
        for i in range(12):
            write(i, m)
        # Once the mount's uploads are under way, kill -9 the server that took the latest.
        deadline = time.monotonic() + 30
        while True:
            mine = [ln.split() for ln in stack.nginx.access_log()[seen:]]
            blocks = [f[-1] for f in mine if f[2].startswith("/api/v1/blocks/")]
            if blocks:
                break
            assert time.monotonic() < deadline, "the mount sent no block"
            time.sleep(0.02)
        victim = next(s for s in stack.servers if blocks[-1] == f"127.0.0.1:{s.port}")
        victim.kill()
        for i in range(12, 24):
            write(i, m)
        m.wait_synced(timeout=90)
    with balancer.client(token) as http:
        for path, data in written.items():
            got = http.get("/files/download", params={"path": path})
            assert got.status_code == 200, (path, got.text)
            assert got.content == data, path
    # Another device reads them through its mount: block fetches (the client's bulk
    # connections, ALPN drive-bulk/1 offered) go through nginx as HTTP/1.1.
    other = login_home(balancer, tmp_path / "home2", name, "pw", device="other")  # type: ignore[arg-type]
    with MountProcess(other, tmp_path / "mnt2") as m2:
        deadline = time.monotonic() + 60
        while not all((m2.mnt / p[1:]).exists() for p in written):
            assert time.monotonic() < deadline, sorted(os.listdir(m2.mnt))
            time.sleep(0.2)
        for path, data in written.items():
            assert (m2.mnt / path[1:]).read_bytes() == data, path
    paths = {ln.split()[2] for ln in stack.nginx.access_log()}  # type: ignore[union-attr]
    assert {"/api/v1/blocks/batch", "/api/v1/blocks/fetch"} & paths, sorted(paths)
    victim.start()


def test_a_postgresql_restart_is_only_a_delay(stack: ScaleoutStack, balancer: Balancer) -> None:
    _all_up(stack)
    _, token = _user(stack, balancer)
    assert stack.pg is not None
    stack.pg.restart()
    with balancer.client(token) as a, balancer.client(token) as b:
        deadline = time.monotonic() + 30
        while True:  # requests started during the reconnect may fail; then all succeed
            r = _upload(b, "/after-restart.txt", b"still here")
            if r.status_code == 201:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.5)
        for i in range(6):  # through both servers
            assert _upload(b, f"/n{i}", b"x").status_code == 201
        # The listeners reconnected: a change through one server wakes a poll on the other.
        deadline = time.monotonic() + 15
        while not all("listening again" in s.log_text() for s in stack.servers):
            assert time.monotonic() < deadline, [s.log_text()[-500:] for s in stack.servers]
            time.sleep(0.2)
        cursor = a.get("/api/v1/cursor").json()["cursor"]
        answer: dict[str, object] = {}
        query = {"cursor": cursor, "timeout": 60}
        waiter = threading.Thread(
            target=lambda: answer.update(a.get("/api/v1/longpoll", params=query, timeout=90).json())
        )
        waiter.start()
        time.sleep(1.0)
        assert _upload(b, "/wake.txt", b"w").status_code == 201
        waiter.join(WAKE_SECONDS + 5)
        assert answer.get("changes") is True
