"""The seeds' API: simple and resumable uploads (incl. after SIGKILL), download with Range."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from blockstore.chunker import chunk_bytes
from blockstore.codec import encode_wire
from tests.helpers.server_proc import ServerProcess

pytestmark = pytest.mark.e2e


def test_simple_upload_then_new_revision_and_download_ranges(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    data = os.urandom(2_500_000)
    with shared_server.client(new_user[1]) as http:
        r = http.post("/files/upload?path=/up.bin&uploadType=media", content=data)
        assert r.status_code == 201
        assert r.json()["content_hash"] == hashlib.sha256(data).hexdigest()
        r2 = http.post("/files/upload?path=/up.bin&uploadType=media", content=data[::-1])
        assert r2.status_code == 200
        assert r2.json()["rev"] == 2
        conflict = http.post("/files/upload?path=/up.bin&uploadType=media&base_rev=1", content=b"x")
        assert conflict.status_code == 409
        full = http.get("/files/download", params={"path": "/up.bin"})
        assert full.content == data[::-1]
        assert full.headers["etag"] == f'"{hashlib.sha256(data[::-1]).hexdigest()}"'
        part = http.get("/files/download", params={"path": "/up.bin"},
                        headers={"Range": "bytes=1000000-1999999"})  # fmt: skip
        assert part.status_code == 206
        assert part.content == data[::-1][1_000_000:2_000_000]
        assert part.headers["content-range"] == f"bytes 1000000-1999999/{len(data)}"
        tail = http.get("/files/download", params={"path": "/up.bin"},
                        headers={"Range": "bytes=-10"})  # fmt: skip
        assert tail.content == data[::-1][-10:]
        bad = http.get("/files/download", params={"path": "/up.bin"},
                       headers={"Range": "bytes=9999999-"})  # fmt: skip
        assert bad.status_code == 416
        old = http.get("/files/download", params={"path": "/up.bin", "revision": 1})
        assert old.content == data
        empty = http.post("/files/upload?path=/empty&uploadType=media", content=b"")
        assert empty.json()["size"] == 0
        assert http.get("/files/download", params={"path": "/empty"}).content == b""
        revs = http.get("/files/list_revisions", params={"path": "/up.bin", "limit": 1}).json()
        assert [r["revision"] for r in revs["revisions"]] == [2]
        assert http.get("/files/download", params={"path": "/nope"}).status_code == 404
        assert http.post("/files/upload?path=/x&uploadType=weird", content=b"").status_code == 400


def test_uploads_dedupe_with_client_blocks(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    data = os.urandom(3_000_000)
    chunks = chunk_bytes(data)
    with shared_server.client(new_user[1]) as http:
        for c in chunks:
            bid = hashlib.sha256(c.data).hexdigest()
            assert http.put(f"/api/v1/blocks/{bid}", content=encode_wire(c.data)).status_code == 201
        me = http.get("/api/v1/whoami").json()
        assert (me["used_bytes"], me["staged_bytes"]) == (0, len(data))  # not committed yet
        r = http.post("/files/upload?path=/dedupe.bin&uploadType=media", content=data)
        assert r.status_code == 201
        assert [b[0] for b in r.json()["blocks"]] == [
            hashlib.sha256(c.data).hexdigest() for c in chunks
        ]
        me = http.get("/api/v1/whoami").json()  # nothing stored twice: the same bytes, now used
        assert (me["used_bytes"], me["staged_bytes"]) == (len(data), 0)


def _put_part(http: httpx.Client, loc: str, data: bytes, start: int, total: int) -> httpx.Response:
    end = start + len(data) - 1
    return http.put(loc, content=data, headers={"Content-Range": f"bytes {start}-{end}/{total}"})


def test_resumable_upload_protocol(shared_server: ServerProcess, new_user: tuple[str, str]) -> None:
    data = os.urandom(1_500_000)
    total = len(data)
    with shared_server.client(new_user[1]) as http:
        start = http.post("/files/upload?path=/res.bin&uploadType=resumable",
                          headers={"X-Upload-Content-Length": str(total)})  # fmt: skip
        assert start.status_code == 200
        loc = start.headers["location"]
        assert loc == f"/files/upload/sessions/{start.json()['session_id']}"
        ask = http.put(loc, headers={"Content-Range": f"bytes */{total}"})
        assert ask.status_code == 308
        assert "range" not in ask.headers
        r = _put_part(http, loc, data[:500_000], 0, total)
        assert r.status_code == 308
        assert r.headers["range"] == "bytes=0-499999"
        # A retried, overlapping part is fine; a gap is not.
        r = _put_part(http, loc, data[400_000:600_000], 400_000, total)
        assert r.headers["range"] == "bytes=0-599999"
        gap = _put_part(http, loc, data[700_000:800_000], 700_000, total)
        assert gap.status_code == 400
        r = _put_part(http, loc, data[600_000:], 600_000, total)
        assert r.status_code == 201
        assert r.json()["size"] == total
        again = http.put(loc, headers={"Content-Range": f"bytes */{total}"})
        assert again.status_code in (200, 201)
        assert again.json()["id"] == r.json()["id"]
        assert http.get("/files/download", params={"path": "/res.bin"}).content == data
        assert http.put("/files/upload/sessions/nope", headers={"Content-Range": "bytes */1"}
                        ).status_code == 404  # fmt: skip
        assert http.put(loc, headers={"Content-Range": "garbage"}).status_code == 400


def test_resumable_upload_survives_server_sigkill(server: ServerProcess) -> None:
    server.add_user("rs", "pw")
    token = server.login("rs", "pw")
    data = os.urandom(3_000_000)
    total = len(data)
    with server.client(token) as http:
        loc = http.post("/files/upload?path=/k.bin&uploadType=resumable").headers["location"]

        def body():
            yield data[:1_000_000]
            server.kill()  # mid-request: the server dies with this part half-sent
            yield data[1_000_000:2_000_000]

        with pytest.raises(httpx.TransportError):
            http.put(loc, content=body(), headers={"Content-Range": f"bytes 0-{total - 1}/{total}"})
    server.start()
    with server.client(token) as http:
        ask = http.put(loc, headers={"Content-Range": f"bytes */{total}"})
        assert ask.status_code == 308
        got = int(ask.headers["range"].rsplit("-", 1)[1]) + 1 if "range" in ask.headers else 0
        assert 0 <= got <= 2_000_000
        r = _put_part(http, loc, data[got:], got, total)
        assert r.status_code == 201, r.text
        assert http.get("/files/download", params={"path": "/k.bin"}).content == data


def test_expired_sessions_are_gone(tmp_path) -> None:
    config = {"upload_session_days": 1e-5, "maintenance_interval_seconds": 0.2}
    with ServerProcess(tmp_path / "d", config=config) as srv:
        srv.add_user("ex", "pw")
        with srv.client(srv.login("ex", "pw")) as http:
            loc = http.post("/files/upload?path=/e&uploadType=resumable").headers["location"]
            _put_part(http, loc, b"abc", 0, 10)
            import time

            time.sleep(1.5)  # the session lives 0.86 s; maintenance runs every 0.2 s
            assert http.put(loc, headers={"Content-Range": "bytes */10"}).status_code == 404
        assert list((srv.data_dir / "uploads").iterdir()) == []
