"""Bad input gets a 4xx with the protocol's JSON error and changes nothing; a full disk
gets 507 `insufficient_storage`; uploads create missing folders; stale spool files go.

Real server processes over TLS on 127.0.0.1, on both transports where a request can take
either: plain HTTP (httpx, or raw sockets for what httpx will not send) and bulk
connections (ALPN drive-bulk/1, spoken as in test_server_bulk_conn).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import zstandard

from blockstore.codec import WIRE_VERSION, encode_wire
from blockstore.ids import block_id
from blockstore.wire import encode_block_records
from tests.helpers import pg_cluster
from tests.helpers.server_proc import ServerProcess
from tests.server.test_server_bulk_conn import bulk_socket, reply, send

pytestmark = pytest.mark.e2e

BIG = 2**63


def head(http: httpx.Client) -> str:
    """The journal head: unchanged means the request changed nothing."""
    return str(http.get("/api/v1/cursor").json()["cursor"])


def assert_refused(r: httpx.Response, status: int = 400, code: str = "bad_request") -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code, body
    assert body["message"]


def commit_body(path: str, blocks: list[list[object]] | None = None, **extra: object) -> dict:
    blocks = blocks or []
    size = sum(int(b[1]) for b in blocks)  # type: ignore[call-overload]
    return {"path": path, "base_rev": None, "blocks": blocks, "size": size, "mtime_ns": 1,
            "mode": 0o644, "commit_id": f"c-{path}-{time.monotonic_ns()}", **extra}  # fmt: skip


def raw_request(sock: ssl.SSLSocket, line: bytes, token: str, extra: bytes = b"") -> None:
    """Send a request head (and `extra`: more headers, the blank line, a body) as bytes,
    for what httpx will not send."""
    sock.sendall(line + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode()
                 + b"\r\n" + extra)  # fmt: skip


def put_block(http: httpx.Client, data: bytes) -> str:
    bid = block_id(data)
    http.put(f"/api/v1/blocks/{bid}", content=encode_wire(data)).raise_for_status()
    return bid


@pytest.fixture
def http(shared_server: ServerProcess, new_user: tuple[str, str]) -> Iterator[httpx.Client]:
    with shared_server.client(new_user[1]) as client:
        yield client


def test_the_root_path_is_400_where_an_entry_is_named(http: httpx.Client) -> None:
    before = head(http)
    for route, body in [("mkdir", {"path": "/"}), ("symlink", {"path": "/", "target": "x"}),
                        ("editing", {"path": "/"}), ("commit", commit_body("/"))]:  # fmt: skip
        assert_refused(http.post(f"/api/v1/{route}", json=body))
    for kind in ("media", "resumable"):
        r = http.post("/files/upload", params={"path": "/", "uploadType": kind}, content=b"x")
        assert_refused(r)
    # In a batch only the bad item fails.
    r = http.post("/api/v1/commit/batch", json={"commits": [commit_body("/"),
                                                            commit_body("/ok.txt")]})  # fmt: skip
    assert r.status_code == 200, r.text
    bad, good = r.json()["results"]
    assert bad["error"] == "bad_request"
    assert good["record"]["path"] == "/ok.txt"
    assert [e["file"]["path"] for e in delta(http, before)] == ["/ok.txt"]
    assert http.get("/api/v1/meta", params={"path": "/"}).json()["kind"] == "dir"


def delta(http: httpx.Client, cursor: str) -> list[dict]:
    r = http.get("/api/v1/delta", params={"cursor": cursor})
    r.raise_for_status()
    entries: list[dict] = r.json()["entries"]
    return entries


def test_integers_a_database_cannot_hold_are_400(http: httpx.Client) -> None:
    http.post("/api/v1/mkdir", json={"path": "/d"}).raise_for_status()
    http.post("/api/v1/commit", json=commit_body("/f")).raise_for_status()
    f = http.get("/api/v1/meta", params={"path": "/f"}).json()
    before = head(http)
    for body in [{"path": "/f", "mtime_ns": BIG}, {"path": "/f", "mtime_ns": -BIG - 1},
                 {"path": "/f", "mode": 2**70}, {"path": "/f", "mode": 0o10000},
                 {"path": "/f", "mode": -1}]:  # fmt: skip
        assert_refused(http.post("/api/v1/setattr", json=body))
    assert_refused(http.post("/api/v1/commit", json=commit_body("/f", base_rev=BIG)))
    assert_refused(http.post("/api/v1/commit", json=commit_body("/g", mtime_ns=2**64)))
    assert_refused(http.post("/api/v1/mkdir", json={"path": "/e", "mode": 2**70}))
    assert_refused(http.post("/api/v1/delete", json={"path": "/f", "base_rev": BIG}))
    assert_refused(http.post("/api/v1/move", json={"from": "/f", "to": "/h", "src_id": BIG}))
    assert_refused(http.post("/api/v1/restore", json={"path": "/f", "revision": BIG}))
    for route, params in [("meta", {"id": str(BIG)}), ("delta", {"cursor": str(BIG)}),
                          ("delta", {"cursor": "\u00b2"}), ("longpoll", {"cursor": str(BIG)}),
                          ("revisions", {"path": "/f", "limit": str(BIG)})]:  # fmt: skip
        assert_refused(http.get(f"/api/v1/{route}", params=params))
    r = http.post("/files/upload", params={"path": "/u", "base_rev": str(BIG)}, content=b"x")
    assert_refused(r)
    assert head(http) == before
    assert http.get("/api/v1/meta", params={"path": "/f"}).json() == f


def test_a_lone_surrogate_in_a_json_string_is_400(
    shared_server: ServerProcess, new_user: tuple[str, str], http: httpx.Client
) -> None:
    name, _ = new_user
    escaped = b'{"user": "\\ud800", "password": "x", "device": "d"}'
    raw = b'{"user": "\xed\xa0\x80", "password": "x", "device": "d"}'
    fine_user = json.dumps({"user": name, "password": "pw-" + name}).encode()
    bad_device = fine_user[:-1] + b', "device": "\\udfff"}'
    with shared_server.client() as anon:
        for body in (escaped, raw, bad_device):
            r = anon.post("/api/v1/login", content=body,
                          headers={"content-type": "application/json"})  # fmt: skip
            assert_refused(r)  # not 401 and not a token: the device is not logged in
    before = head(http)
    assert_refused(http.post("/api/v1/symlink", content=b'{"path": "/s", "target": "\\ud800"}'))
    body = json.dumps(commit_body("/c")).replace('"c-', '"\\udc00-').encode()
    assert_refused(http.post("/api/v1/commit", content=body))
    assert head(http) == before


def test_a_query_string_path_that_is_not_utf8_is_400(
    shared_server: ServerProcess, new_user: tuple[str, str], http: httpx.Client
) -> None:
    http.post("/api/v1/mkdir", json={"path": "/caf\u00e9"}).raise_for_status()
    http.post("/api/v1/mkdir", json={"path": "/caf\ufffd"}).raise_for_status()
    _, token = new_user
    with bulk_socket(shared_server, ["http/1.1"]) as sock:
        for target, status in [(b"/api/v1/meta?path=/caf%FF", 400),
                               (b"/api/v1/meta?after=%C3&path=/caf%C3%A9", 400),
                               (b"/api/v1/meta?path=/caf%C3%A9", 200)]:  # fmt: skip
            raw_request(sock, b"GET " + target, token, b"\r\n")
            got, _, answer = reply(sock)
            assert got == status, (target, answer)
            if status == 200:
                assert json.loads(answer)["path"] == "/caf\u00e9"
            else:
                assert json.loads(answer)["error"] == "bad_request"


def test_a_content_length_of_non_ascii_digits_is_400_on_both_transports(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    _, token = new_user
    for alpn in (["drive-bulk/1", "http/1.1"], ["http/1.1"]):
        with bulk_socket(shared_server, alpn) as sock:
            raw_request(sock, b"POST /api/v1/blocks/batch", token, b"Content-Length: \xb2\r\n\r\n")
            status, _, answer = reply(sock)
            assert status == 400, (alpn, answer)
            if alpn[0] == "drive-bulk/1":  # hypercorn's h11 answers its own 400 body
                assert json.loads(answer)["error"] == "bad_request"


def test_commits_are_checked_against_the_stored_block_sizes(http: httpx.Client) -> None:
    bid = put_block(http, b"hello")
    before = head(http)
    lie = commit_body("/lie.txt", [[bid, 1000]])
    r = http.post("/api/v1/commit", json=lie)
    assert_refused(r)
    assert r.json()["wrong_size"] == [bid]
    half = commit_body("/half.txt", [[bid, 5]], size=1000)  # size is not the sum
    assert_refused(http.post("/api/v1/commit", json=half))
    truth = commit_body("/truth.txt", [[bid, 5]])
    r = http.post("/api/v1/commit/batch", json={"commits": [lie, truth]})
    bad, good = r.json()["results"]
    assert (bad["error"], bad["wrong_size"]) == ("bad_request", [bid])
    assert good["record"]["size"] == 5
    assert [e["file"]["path"] for e in delta(http, before)] == ["/truth.txt"]
    for path in ("/lie.txt", "/half.txt"):
        assert http.get("/api/v1/meta", params={"path": path}).status_code == 404
    assert http.get("/files/download", params={"path": "/truth.txt"}).content == b"hello"


def test_a_block_over_the_limit_is_413_on_both_transports(
    shared_server: ServerProcess, new_user: tuple[str, str], http: httpx.Client
) -> None:
    # A zstd frame that declares 9 MiB: refused (by its type, not its message) before it
    # is decompressed.
    plain = bytes(9 << 20)
    frame = bytes([(WIRE_VERSION << 4) | 1]) + zstandard.ZstdCompressor().compress(plain)
    bid = block_id(plain)
    assert_refused(http.put(f"/api/v1/blocks/{bid}", content=frame), 413, "too_large")
    with bulk_socket(shared_server) as sock:
        send(sock, "POST", "/api/v1/blocks/batch", new_user[1],
             encode_block_records([(bid, frame)]))  # fmt: skip
        status, _, answer = reply(sock)
        assert (status, json.loads(answer)["error"]) == (413, "too_large")
    assert http.post("/api/v1/blocks/missing", json={"ids": [bid]}).json()["missing"] == [bid]


def test_uploads_create_missing_parent_folders_journaled(http: httpx.Client) -> None:
    before = head(http)
    r = http.post("/files/upload", params={"path": "/new/dir/file.txt"}, content=b"one")
    assert r.status_code == 201, r.text
    r = http.post("/files/upload", params={"path": "/new/other/big.bin",
                                           "uploadType": "resumable"})  # fmt: skip
    assert r.status_code == 200, r.text
    session = r.json()["session_id"]
    r = http.put(f"/files/upload/sessions/{session}", content=b"two",
                 headers={"Content-Range": "bytes 0-2/3"})  # fmt: skip
    assert r.status_code == 201, r.text
    seen = [(e["op"], e["file"]["path"]) for e in delta(http, before)]
    assert seen == [("mkdir", "/new"), ("mkdir", "/new/dir"), ("create", "/new/dir/file.txt"),
                    ("mkdir", "/new/other"), ("pending", "/new/other/big.bin"),
                    ("create", "/new/other/big.bin")]  # fmt: skip
    assert http.get("/api/v1/meta", params={"path": "/new/dir"}).json()["kind"] == "dir"
    assert http.get("/files/download", params={"path": "/new/other/big.bin"}).content == b"two"
    # A file in the way is 400 and nothing is made.
    before = head(http)
    r = http.post("/files/upload", params={"path": "/new/dir/file.txt/x/y"}, content=b"no")
    assert_refused(r)
    assert head(http) == before


def spool_files(srv: ServerProcess) -> list[str]:
    return sorted(p.name for p in (srv.data_dir / "uploads").glob("tmp-*"))


def wait_for(what: object, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not what():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_spool_files_of_killed_uploads_are_swept(tmp_path: Path) -> None:
    config = {"maintenance_interval_seconds": 1}
    with ServerProcess(tmp_path / "data", config=config) as srv:
        srv.add_user("u", "pw")
        token = srv.login("u", "pw")
        with bulk_socket(srv, ["http/1.1"]) as sock:  # a simple upload, half sent
            raw_request(sock, b"POST /files/upload?path=/a", token,
                        b"Content-Length: 4000000\r\n\r\n" + os.urandom(2_000_000))  # fmt: skip
            wait_for(lambda: spool_files(srv))
            srv.kill()
        assert spool_files(srv)  # kill -9 left it
        srv.start()
        assert spool_files(srv) == []  # swept at start
        # While serving: a stray spool file goes within a round, a running upload's stays.
        with bulk_socket(srv, ["http/1.1"]) as sock:
            raw_request(sock, b"POST /files/upload?path=/b", token, b"Content-Length: 6\r\n\r\nhal")
            wait_for(lambda: spool_files(srv))
            running = spool_files(srv)
            stray = srv.data_dir / "uploads" / "tmp-stray"
            stray.write_bytes(b"left over")
            wait_for(lambda: not stray.exists())
            assert spool_files(srv) == running
            sock.sendall(b"ves")
            assert reply(sock)[0] == 201
        with srv.client(token) as http:
            assert http.get("/files/download", params={"path": "/b"}).content == b"halves"
            assert http.get("/api/v1/meta", params={"path": "/a"}).status_code == 404


# -- a full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs as a server's data directory (needs root to mount); the server's log
    stays outside it."""
    where = tmp_path / "small" / "data"
    where.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs",
                           str(where)], capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Fill the filesystem up to its last byte; returns the filler file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for piece in (bytes(64 << 10), bytes(1)):
            try:
                while os.write(fd, piece):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def assert_out_of_space(status: int, answer: bytes) -> None:
    body = json.loads(answer)
    assert (status, body["error"]) == (507, "insufficient_storage"), body
    assert "out of storage space" in body["message"]
    assert body["request_id"]


def test_a_full_disk_is_507_insufficient_storage_on_both_transports(small_disk: Path) -> None:
    """The blocks stay on the full disk in either pass (`DRIVE_TEST_BLOCKS=s3` leaves a
    server alone that names its own `blocks`): a bucket never runs out of room."""
    with ServerProcess(small_disk, config={"blocks": "blocks"}) as srv:
        srv.add_user("u", "pw")
        token = srv.login("u", "pw")
        with srv.client(token) as http:
            http.post("/api/v1/mkdir", json={"path": "/kept"}).raise_for_status()
            before = head(http)
            filler = fill(small_disk)
            data = os.urandom(300_000)
            bid = block_id(data)
            r = http.put(f"/api/v1/blocks/{bid}", content=encode_wire(data))
            assert_out_of_space(r.status_code, r.content)
            with bulk_socket(srv) as sock:
                send(sock, "POST", "/api/v1/blocks/batch", token,
                     encode_block_records([(bid, encode_wire(data))]))  # fmt: skip
                assert_out_of_space(*reply(sock)[::2])
                send(sock, "GET", f"/api/v1/blocks/{bid}", token)  # the connection stays
                assert reply(sock)[0] == 404
            r = http.post("/files/upload", params={"path": "/up.bin"}, content=data)
            assert_out_of_space(r.status_code, r.content)
            if not pg_cluster.wanted():  # PostgreSQL keeps its files on another disk
                # The database: enough commits in one batch need more room in its log.
                r = http.post("/api/v1/commit/batch", json={"commits": [
                    commit_body(f"/many-{i:04}-{'x' * 200}") for i in range(1000)]})  # fmt: skip
                assert_out_of_space(r.status_code, r.content)
            assert http.post("/api/v1/blocks/missing", json={"ids": [bid]}).json() == {
                "missing": [bid]}  # fmt: skip
            filler.unlink()
            # Room again: nothing stored was damaged, and uploads work.
            assert http.get("/api/v1/meta", params={"path": "/kept"}).json()["kind"] == "dir"
            r = http.post("/files/upload", params={"path": "/up.bin"}, content=data)
            assert r.status_code == 201, r.text
            assert http.get("/files/download", params={"path": "/up.bin"}).content == data
            assert [e["file"]["path"] for e in delta(http, before)][-1] == "/up.bin"
        assert "Traceback" not in srv.log_text()
