"""Device token lifecycle against a real server: revocation by the admin commands in another
process, `passwd` logging devices out, and expiry after an idle time (set short in the
server config), each seen on both transports (HTTP routes and bulk connections)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from blockstore.ids import block_id
from tests.helpers.server_proc import ServerProcess
from tests.server.test_server_bulk_conn import bulk_socket, reply, send

pytestmark = pytest.mark.e2e

_ABSENT_BLOCK = block_id(b"a block nobody stored")


def http_status(srv: ServerProcess, token: str) -> int:
    """The status of an authenticated HTTP request (200 while the token is good)."""
    with srv.client(token) as http:
        return http.get("/api/v1/whoami").status_code


def bulk_status(srv: ServerProcess, token: str) -> int:
    """The status of a bulk-connection request (404 for the absent block while the token
    is good, 401 once it is not)."""
    with bulk_socket(srv) as sock:
        send(sock, "GET", f"/api/v1/blocks/{_ABSENT_BLOCK}", token)
        return reply(sock)[0]


def devices(srv: ServerProcess, user: str) -> list[dict[str, Any]]:
    done = srv.admin("list-devices", user, "--json")
    assert done.returncode == 0, done.stderr
    listed: list[dict[str, Any]] = json.loads(done.stdout)
    return listed


@pytest.fixture
def two_devices(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> tuple[ServerProcess, str, str, str]:
    """A new user logged in on the shared server as "test-device" and "phone": (server,
    user, the first token, the phone's token)."""
    user, laptop = new_user
    return shared_server, user, laptop, shared_server.login(user, "pw-" + user, device="phone")


def test_revoke_by_the_admin_command_is_401_on_both_transports_at_once(
    two_devices: tuple[ServerProcess, str, str, str],
) -> None:
    srv, user, laptop, phone = two_devices
    # Both tokens work, and a bulk connection opened before the revocation stays open.
    assert (http_status(srv, laptop), bulk_status(srv, laptop)) == (200, 404)
    assert (http_status(srv, phone), bulk_status(srv, phone)) == (200, 404)
    listed = devices(srv, user)
    assert [d["device"] for d in listed] == ["test-device", "phone"]
    assert all(not d["expired"] and d["expires_at"] > time.time() + 80 * 86400 for d in listed)
    table = srv.admin("list-devices", user)
    assert table.stdout.splitlines()[0].split("\t") == [
        "ID", "DEVICE", "CREATED", "LAST USED", "EXPIRES",
    ]  # fmt: skip
    with bulk_socket(srv) as open_sock, srv.client(phone) as open_http:
        send(open_sock, "GET", f"/api/v1/blocks/{_ABSENT_BLOCK}", phone)
        assert reply(open_sock)[0] == 404
        assert open_http.get("/api/v1/whoami").status_code == 200

        done = srv.admin("revoke", user, "phone")
        assert done.returncode == 0, done.stderr
        assert "1 token(s)" in done.stdout

        # The very next request on each kept-alive connection is refused.
        send(open_sock, "GET", f"/api/v1/blocks/{_ABSENT_BLOCK}", phone)
        status, _, body = reply(open_sock)
        assert (status, json.loads(body)["error"]) == (401, "unauthorized")
        refused = open_http.get("/api/v1/whoami")
        assert refused.status_code == 401
        assert refused.json()["error"] == "unauthorized"
    assert (http_status(srv, phone), bulk_status(srv, phone)) == (401, 401)
    assert (http_status(srv, laptop), bulk_status(srv, laptop)) == (200, 404)
    assert [d["device"] for d in devices(srv, user)] == ["test-device"]
    # By id too; an unknown device or user is one clear line and a non-zero exit.
    laptop_id = devices(srv, user)[0]["id"]
    assert srv.admin("revoke", user, str(laptop_id)).returncode == 0
    assert (http_status(srv, laptop), bulk_status(srv, laptop)) == (401, 401)
    for args in (("revoke", user, "phone"), ("revoke", "nobody-here", "x"),
                 ("list-devices", "nobody-here")):  # fmt: skip
        failed = srv.admin(*args)
        assert failed.returncode != 0
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
        assert "Traceback" not in failed.stderr


def test_passwd_logs_every_device_out_unless_keep_devices(
    two_devices: tuple[ServerProcess, str, str, str],
) -> None:
    srv, user, laptop, phone = two_devices
    kept = srv.admin("passwd", user, "--password-stdin", "--keep-devices", stdin="second\n")
    assert kept.returncode == 0, kept.stderr
    assert (http_status(srv, laptop), bulk_status(srv, phone)) == (200, 404)

    done = srv.admin("passwd", user, "--password-stdin", stdin="third\n")
    assert done.returncode == 0, done.stderr
    assert "2 device(s)" in done.stdout
    for token in (laptop, phone):
        assert (http_status(srv, token), bulk_status(srv, token)) == (401, 401)
    assert devices(srv, user) == []
    fresh = srv.login(user, "third", device="new")
    assert (http_status(srv, fresh), bulk_status(srv, fresh)) == (200, 404)


IDLE_S = 3.0


@pytest.fixture
def short_idle_server(tmp_path: Path) -> Any:
    """A server whose tokens expire after IDLE_S unused, configured in DATA/server.toml so
    the admin commands see the same idle time."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "server.toml").write_text(f"token_idle_seconds = {IDLE_S}\n")
    with ServerProcess(data) as srv:
        yield srv


def test_tokens_expire_when_idle_and_use_keeps_them_alive(
    short_idle_server: ServerProcess,
) -> None:
    srv = short_idle_server
    srv.add_user("idle", "pw")
    busy = srv.login("idle", "pw", device="busy")
    idle = srv.login("idle", "pw", device="idle")
    created = {d["device"]: d for d in devices(srv, "idle")}
    # Used every half second for twice the idle time: refreshed by use, never expires.
    deadline = time.monotonic() + 2 * IDLE_S
    uses = 0
    while time.monotonic() < deadline:
        assert (http_status(srv, busy), bulk_status(srv, busy)) == (200, 404)
        uses += 1
        time.sleep(0.5)
    # Left alone for longer than the idle time: 401 on both transports.
    assert (http_status(srv, idle), bulk_status(srv, idle)) == (401, 401)
    listed = {d["device"]: d for d in devices(srv, "idle")}
    assert listed["idle"]["expired"]
    assert not listed["busy"]["expired"]
    # Its last use was written back a few times, not once per request.
    assert listed["busy"]["last_used_at"] > created["busy"]["last_used_at"] + IDLE_S
    assert listed["idle"]["last_used_at"] == created["idle"]["last_used_at"]
    assert uses >= 8
    # An expired token stays refused (using it does not revive it); logging in again works.
    assert http_status(srv, idle) == 401
    again = srv.login("idle", "pw", device="idle")
    assert (http_status(srv, again), bulk_status(srv, again)) == (200, 404)


def test_last_use_is_not_written_on_every_request(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    srv = shared_server
    user, token = new_user
    before = devices(srv, user)[0]["last_used_at"]
    with srv.client(token) as http:
        for _ in range(20):
            assert http.get("/api/v1/whoami").status_code == 200
    assert devices(srv, user)[0]["last_used_at"] == before
