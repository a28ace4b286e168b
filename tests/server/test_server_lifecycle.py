"""The storage lifecycle through a real server over HTTPS and `drive server maintenance`:
keep marks, the trash (undelete of a tree, of a taken name, by id), a pass that thins,
expires and collects with usage that equals what is stored, and a dry run that changes
nothing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from blockstore.store import BlockStore
from tests.helpers.server_proc import ServerProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def http(shared_server: ServerProcess, new_user: tuple[str, str]):
    with shared_server.client(new_user[1]) as client:
        yield client


def configured(data: Path, **config: Any) -> ServerProcess:
    """A server whose settings are in DATA/server.toml, which the admin commands read too."""
    data.mkdir(parents=True, exist_ok=True)
    (data / "server.toml").write_text(
        "".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items())
    )
    return ServerProcess(data)


def maintenance(srv: ServerProcess, *args: str) -> dict[str, Any]:
    done = srv.admin("maintenance", "--json", *args)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def upload(http: httpx.Client, path: str, data: bytes) -> dict[str, Any]:
    r = http.post("/files/upload", params={"path": path, "uploadType": "media"}, content=data)
    assert r.status_code in (200, 201), r.text
    rec: dict[str, Any] = r.json()
    return rec


def revisions(http: httpx.Client, path: str) -> list[dict[str, Any]]:
    r = http.get("/api/v1/revisions", params={"path": path})
    assert r.status_code == 200, r.text
    revs: list[dict[str, Any]] = r.json()["revisions"]
    return revs


def test_keep_marks(http: httpx.Client) -> None:
    for i in range(3):
        upload(http, "/k.txt", b"version %d" % i)
    kept = http.post("/api/v1/keep", json={"path": "/k.txt", "revision": 2})
    assert kept.status_code == 200, kept.text
    assert (kept.json()["revision"], kept.json()["kept"]) == (2, True)
    assert [r["kept"] for r in revisions(http, "/k.txt")] == [False, True, False]
    assert (
        http.post("/api/v1/unkeep", json={"path": "/k.txt", "revision": 2}).json()["kept"] is False
    )
    assert not any(r["kept"] for r in revisions(http, "/k.txt"))
    missing = http.post("/api/v1/keep", json={"path": "/k.txt", "revision": 9})
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    for bad in ({"path": "/k.txt", "revision": 0}, {"path": "/k.txt"}, {"revision": 1}):
        r = http.post("/api/v1/keep", json=bad)
        assert (r.status_code, r.json()["error"]) == (400, "bad_request")
    assert http.post("/api/v1/keep", json={"path": "/nope", "revision": 1}).status_code == 404
    # A restore never rewrites history: the old content comes back as the newest version.
    restored = http.post("/api/v1/restore", json={"path": "/k.txt", "revision": 1}).json()
    assert restored["rev"] == 4
    assert [r["revision"] for r in revisions(http, "/k.txt")] == [4, 3, 2, 1]
    assert http.get("/files/download", params={"path": "/k.txt"}).content == b"version 0"


def test_trash_entries_and_undelete_of_a_tree_and_a_taken_name(http: httpx.Client) -> None:
    http.post("/api/v1/mkdir", json={"path": "/t"})
    http.post("/api/v1/mkdir", json={"path": "/t/sub"})
    upload(http, "/t/a.txt", b"a" * 100)
    upload(http, "/t/sub/b.txt", b"b" * 50)
    assert http.post("/api/v1/delete", json={"path": "/t", "recursive": True}).status_code == 200
    (entry,) = http.get("/api/v1/trash").json()["entries"]
    assert (entry["path"], entry["kind"], entry["size"], entry["device"]) == (
        "/t", "dir", 150, "test-device"
    )  # fmt: skip
    # Someone made a new /t meanwhile: the old one comes back beside it, whole.
    http.post("/api/v1/mkdir", json={"path": "/t"})
    back = http.post("/api/v1/undelete", json={"path": "/t"})
    assert back.status_code == 200, back.text
    name = back.json()["name"]
    assert name.startswith("t (restored ")
    assert name.endswith(")")
    got = http.get("/files/download", params={"path": f"/{name}/sub/b.txt"})
    assert got.content == b"b" * 50
    assert http.get("/api/v1/trash").json()["entries"] == []
    # By id: the older of two items deleted from one path; an extension stays last.
    upload(http, "/n.txt", b"first")
    http.post("/api/v1/delete", json={"path": "/n.txt"})
    upload(http, "/n.txt", b"second")
    http.post("/api/v1/delete", json={"path": "/n.txt"})
    upload(http, "/n.txt", b"third")
    older = http.get("/api/v1/trash").json()["entries"][-1]
    rec = http.post("/api/v1/undelete", json={"id": older["id"]}).json()
    assert rec["name"].startswith("n (restored ")
    assert rec["name"].endswith(").txt")
    assert http.get("/files/download", params={"path": rec["path"]}).content == b"first"
    assert http.post("/api/v1/undelete", json={"id": older["id"]}).status_code == 404
    assert http.post("/api/v1/undelete", json={"id": 0}).status_code == 400
    assert http.post("/api/v1/undelete", json={}).status_code == 400


def _stored_bytes(store: BlockStore) -> int:
    return sum(store.size(key) for key in store.keys())  # noqa: SIM118  # a store


def test_maintenance_thins_expires_collects_and_usage_is_what_is_stored(tmp_path: Path) -> None:
    with configured(tmp_path / "data", block_gc_grace_seconds=1.0) as srv:
        srv.add_user("m", "pw")
        with srv.client(srv.login("m", "pw")) as http:
            contents = [os.urandom(20_000) for _ in range(12)]
            for data in contents:
                upload(http, "/f.bin", data)
            assert http.post("/api/v1/keep", json={"path": "/f.bin", "revision": 3}).is_success
            upload(http, "/copy.bin", contents[5])  # dedupe: the same block as revision 6
            http.post("/api/v1/mkdir", json={"path": "/gone"})
            upload(http, "/gone/x.bin", os.urandom(30_000))
            http.post("/api/v1/delete", json={"path": "/gone", "recursive": True})
            before = http.get("/api/v1/whoami").json()
            assert before["dedupe_saved_bytes"] == 20_000

            dry = maintenance(srv, "--dry-run", "--now", "+40d")
            assert len(revisions(http, "/f.bin")) == 12  # a dry run changes nothing
            assert len(http.get("/api/v1/trash").json()["entries"]) == 1
            real = maintenance(srv, "--now", "+40d")
            for part in ("thinned", "trash"):
                assert real[part] == dry[part]
            assert real["trash"]["items"] == 1
            left = [r["revision"] for r in revisions(http, "/f.bin")]
            assert {3, 12} <= set(left)
            assert len(left) <= 3  # one per week (all were made within the same second or so)
            assert real["thinned"]["versions"] == 12 - len(left)
            assert http.get("/api/v1/trash").json()["entries"] == []
            # Released blocks wait for their grace period (on the real clock), then go.
            assert real["collected"]["blocks"] == 0
            time.sleep(1.2)
            later = maintenance(srv)
            assert later["collected"]["blocks"] == 12 - len(left) - (6 not in left) + 1
            assert http.get("/files/download", params={"path": "/copy.bin"}).content == contents[5]
            for r in left:
                got = http.get("/files/download", params={"path": "/f.bin", "revision": r})
                assert got.content == contents[r - 1]
            me = http.get("/api/v1/whoami").json()
            assert me["used_bytes"] == 20_000 * len({*left, 6})
            assert me["staged_bytes"] == 0
            assert me["stored_bytes"] == _stored_bytes(srv.block_store())
            assert me["logical_bytes"] == 20_000 * (len(left) + 1)
        text = srv.admin("maintenance", "--dry-run")
        assert text.returncode == 0
        assert "dry run, nothing changed" in text.stdout
        assert "thinning: 0 versions of 0 files would be removed" in text.stdout
        bad = srv.admin("maintenance", "--now", "40d")
        assert bad.returncode != 0
        assert bad.stderr.count("\n") == 1
        assert "+DURATION" in bad.stderr
