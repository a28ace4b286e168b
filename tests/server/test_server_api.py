"""Accounts, authentication, isolation, paths and limits, against a real server over TLS."""

from __future__ import annotations

import hashlib
import json
import os

import httpx
import pytest

from blockstore.codec import encode_wire
from tests.helpers.server_proc import ServerProcess

pytestmark = pytest.mark.e2e


def put_block(http: httpx.Client, data: bytes) -> str:
    bid = hashlib.sha256(data).hexdigest()
    r = http.put(f"/api/v1/blocks/{bid}", content=encode_wire(data))
    assert r.status_code in (200, 201), r.text
    return bid


def test_info_needs_no_token_and_shows_the_fingerprint(shared_server: ServerProcess) -> None:
    with shared_server.client() as http:
        body = http.get("/api/v1/info").json()
    assert body["server"] == "drive"
    assert body["api"] == 1
    assert body["fingerprint"] == shared_server.fingerprint
    assert len(shared_server.fingerprint.split(":")) == 32


def test_ready_file_and_clean_exit(server: ServerProcess) -> None:
    info = json.loads((server.data_dir / "server.json").read_text())
    assert info == {"url": server.url, "fingerprint": server.fingerprint, "pid": server.pid}
    assert server.stop() == 0
    assert not (server.data_dir / "server.json").exists()


def test_login_whoami_logout(shared_server: ServerProcess, new_user: tuple[str, str]) -> None:
    name, token = new_user
    with shared_server.client(token) as http:
        me = http.get("/api/v1/whoami").json()
        assert me["user"] == name
        assert me["device"] == "test-device"
        assert me["used_bytes"] == 0
        assert http.post("/api/v1/logout").status_code == 200
        r = http.get("/api/v1/whoami")
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}, {"Authorization": ""}],
)
def test_missing_or_wrong_token_is_401(
    shared_server: ServerProcess, headers: dict[str, str]
) -> None:
    with shared_server.client() as http:
        for method, url in [
            ("GET", "/api/v1/whoami"),
            ("GET", "/api/v1/list?path=/"),
            ("GET", "/files/download?path=/x"),
            ("POST", "/files/upload?path=/x&uploadType=media"),
            ("GET", "/api/v1/longpoll?cursor=0"),
        ]:
            r = http.request(method, url, headers=headers)
            assert r.status_code == 401, (method, url)
            assert r.json()["error"] == "unauthorized"


def test_wrong_password_and_unknown_user_look_the_same(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    name, _ = new_user
    with shared_server.client() as http:
        a = http.post("/api/v1/login", json={"user": name, "password": "x", "device": "d"})
        b = http.post("/api/v1/login", json={"user": "ghost", "password": "x", "device": "d"})
    assert a.status_code == b.status_code == 401
    assert a.json() == b.json()


def test_admin_commands_work_while_serving(shared_server: ServerProcess) -> None:
    srv = shared_server
    srv.add_user("carol", "first", quota="1G")
    token = srv.login("carol", "first")
    done = srv.admin("passwd", "carol", "--password-stdin", stdin="second\n")
    assert done.returncode == 0, done.stderr
    with srv.client() as http:
        bad = http.post("/api/v1/login", json={"user": "carol", "password": "first", "device": "d"})
        assert bad.status_code == 401
    with srv.client(token) as http:  # passwd logged the old device out
        assert http.get("/api/v1/whoami").status_code == 401
    token = srv.login("carol", "second")
    listed = json.loads(srv.admin("list-users", "--json").stdout)
    carol = next(u for u in listed if u["name"] == "carol")
    assert carol["quota_bytes"] == 1024**3
    assert carol["devices"] == 1
    dup = srv.admin("adduser", "carol", "--password-stdin", stdin="x\n")
    assert dup.returncode != 0
    assert "already exists" in dup.stderr
    assert "Traceback" not in dup.stderr
    done = srv.admin("deluser", "carol", "--yes")
    assert done.returncode == 0, done.stderr
    with srv.client() as http:
        gone = http.post(
            "/api/v1/login", json={"user": "carol", "password": "second", "device": "d"}
        )
        assert gone.status_code == 401
    with srv.client(token) as http:
        assert http.get("/api/v1/whoami").status_code == 401
    no_stdin = srv.admin("adduser", "dave")
    assert no_stdin.returncode != 0
    assert "--password-stdin" in no_stdin.stderr


def test_two_users_are_isolated(shared_server: ServerProcess) -> None:
    srv = shared_server
    srv.add_user("iso-a", "pa")
    srv.add_user("iso-b", "pb")
    ta, tb = srv.login("iso-a", "pa"), srv.login("iso-b", "pb")
    secret = os.urandom(1000)
    with srv.client(ta) as a, srv.client(tb) as b:
        bid = put_block(a, secret)
        rec = a.post(
            "/api/v1/commit",
            json={"path": "/mine.txt", "base_rev": None, "blocks": [[bid, 1000]], "size": 1000,
                  "mtime_ns": 1, "mode": 0o600, "commit_id": "iso-1"},
        ).json()  # fmt: skip
        assert b.get(f"/api/v1/blocks/{bid}").status_code == 404
        assert b.post("/api/v1/blocks/missing", json={"ids": [bid]}).json()["missing"] == [bid]
        assert b.get("/api/v1/meta", params={"path": "/mine.txt"}).status_code == 404
        assert b.get("/api/v1/meta", params={"id": rec["id"]}).status_code == 404
        assert b.get("/files/download", params={"path": "/mine.txt"}).status_code == 404
        assert b.get("/api/v1/list", params={"path": "/"}).json()["entries"] == []
        assert b.get("/api/v1/delta", params={"cursor": "0"}).json()["entries"] == []
        missing = b.post(
            "/api/v1/commit",
            json={"path": "/steal.txt", "base_rev": None, "blocks": [[bid, 1000]], "size": 1000,
                  "mtime_ns": 1, "mode": 0o600, "commit_id": "iso-2"},
        )  # fmt: skip
        assert missing.status_code == 400
        assert missing.json()["missing"] == [bid]
        assert a.get("/api/v1/meta", params={"id": rec["id"]}).json()["path"] == "/mine.txt"


@pytest.mark.parametrize(
    "path",
    ["/a/../b", "/a/./b", "relative", "/a//b", "/a/", "/nul\x00byte", "/" + "x" * 256,
     "/" + "/".join(["d" * 200] * 21), ""],
)  # fmt: skip
def test_invalid_paths_are_400(
    shared_server: ServerProcess, new_user: tuple[str, str], path: str
) -> None:
    with shared_server.client(new_user[1]) as http:
        for r in (
            http.get("/api/v1/meta", params={"path": path}),
            http.post("/api/v1/mkdir", json={"path": path}),
            http.post("/files/upload", params={"path": path, "uploadType": "media"}, content=b"x"),
        ):
            assert r.status_code == 400, (path, r.text)
            assert r.json()["error"] == "bad_request"


def test_bad_bodies_are_400_or_413(shared_server: ServerProcess, new_user: tuple[str, str]) -> None:
    with shared_server.client(new_user[1]) as http:
        assert http.post("/api/v1/mkdir", content=b"{not json").status_code == 400
        assert http.post("/api/v1/mkdir", json=[1, 2]).status_code == 400
        assert http.post("/api/v1/mkdir", json={"path": 5}).status_code == 400
        huge = http.post("/api/v1/mkdir", content=b"x" * (1024 * 1024 + 10))
        assert huge.status_code == 413
        assert huge.json()["error"] == "too_large"
        assert http.get("/api/v1/delta", params={"cursor": "abc"}).status_code == 400
        assert http.get("/api/v1/list", params={"path": "/", "limit": "0"}).status_code == 400
        assert http.get("/no/such/route").status_code == 404


def test_rate_limit_answers_429_with_headers(tmp_path) -> None:
    with ServerProcess(tmp_path / "d", config={"rate_per_second": 1.0, "rate_burst": 3}) as srv:
        srv.add_user("rl", "pw")
        token = srv.login("rl", "pw")
        with srv.client(token) as http:
            answers = [http.get("/api/v1/whoami") for _ in range(5)]
    assert [r.status_code for r in answers[:3]] == [200, 200, 200]
    limited = answers[-1]
    assert limited.status_code == 429
    assert limited.json()["error"] == "rate_limited"
    assert limited.headers["X-Ratelimit-Limit"] == "3"
    assert limited.headers["X-Ratelimit-Remaining"] == "0"
    assert int(limited.headers["X-Ratelimit-Retry-After"]) >= 1
    assert answers[0].headers["X-Ratelimit-Remaining"] == "2"


def test_file_size_limit_and_quota(tmp_path) -> None:
    with ServerProcess(tmp_path / "d", config={"max_file_bytes": 100_000}) as srv:
        srv.add_user("lim", "pw", quota="200K")
        token = srv.login("lim", "pw")
        with srv.client(token) as http:
            r = http.post("/files/upload", params={"path": "/big", "uploadType": "media"},
                          content=os.urandom(100_001))  # fmt: skip
            assert r.status_code == 413
            assert "100000" in r.json()["message"]
            r = http.post("/files/upload", params={"path": "/big", "uploadType": "resumable"},
                          headers={"X-Upload-Content-Length": str(10 * 10**9)})  # fmt: skip
            assert r.status_code == 413
            big = os.urandom(90_000)
            for i in range(2):
                r = http.post("/files/upload", params={"path": f"/f{i}", "uploadType": "media"},
                              content=big if i == 0 else os.urandom(90_000))  # fmt: skip
                assert r.status_code == 201, r.text
            r = http.post("/files/upload", params={"path": "/f3", "uploadType": "media"},
                          content=os.urandom(90_000))  # fmt: skip
            assert r.status_code == 507
            assert r.json()["error"] == "quota_exceeded"
            data = os.urandom(50_000)
            bid = hashlib.sha256(data).hexdigest()
            r = http.put(f"/api/v1/blocks/{bid}", content=encode_wire(data))
            assert r.status_code == 507
            r = http.post(
                "/api/v1/commit",
                json={"path": "/huge", "base_rev": None, "blocks": [], "size": 0, "mtime_ns": 0,
                      "commit_id": "h"},
            )  # fmt: skip
            assert r.status_code == 200
