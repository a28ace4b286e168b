"""File tree operations: commit with revisions and conflicts, mkdir, list, move, delete."""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

import httpx
import pytest

from blockstore.codec import encode_wire
from tests.helpers.server_proc import ServerProcess

pytestmark = pytest.mark.e2e


def put(http: httpx.Client, data: bytes) -> list[Any]:
    bid = hashlib.sha256(data).hexdigest()
    assert http.put(f"/api/v1/blocks/{bid}", content=encode_wire(data)).status_code in (200, 201)
    return [bid, len(data)]


def commit(
    http: httpx.Client, path: str, base: int | None, blocks: list[Any], cid: str
) -> httpx.Response:
    return http.post(
        "/api/v1/commit",
        json={"path": path, "base_rev": base, "blocks": blocks,
              "size": sum(b[1] for b in blocks), "mtime_ns": 123, "mode": 0o640, "commit_id": cid},
    )  # fmt: skip


@pytest.fixture
def http(shared_server: ServerProcess, new_user: tuple[str, str]):
    with shared_server.client(new_user[1]) as client:
        yield client


def test_commit_create_update_conflict_and_idempotence(http: httpx.Client) -> None:
    b1, b2 = put(http, b"one" * 1000), put(http, b"two" * 1000)
    r = commit(http, "/f.txt", None, [b1], "c1")
    assert r.status_code == 200
    rec = r.json()
    assert (rec["rev"], rec["size"], rec["mode"], rec["blocks"]) == (1, 3000, 0o640, [b1])
    assert rec["content_hash"] == hashlib.sha256(b"one" * 1000).hexdigest()
    again = commit(http, "/f.txt", None, [b1], "c1")
    assert again.json() == rec
    dup = commit(http, "/f.txt", None, [b2], "c-other")
    assert dup.status_code == 409
    assert dup.json()["error"] == "conflict"
    assert dup.json()["current"]["rev"] == 1
    r2 = commit(http, "/f.txt", 1, [b2, b1], "c2")
    assert r2.status_code == 200
    assert r2.json()["rev"] == 2
    assert r2.json()["id"] == rec["id"]
    stale = commit(http, "/f.txt", 1, [b2], "c3")
    assert stale.status_code == 409
    assert stale.json()["current"]["rev"] == 2
    gone = commit(http, "/nope.txt", 4, [b2], "c4")
    assert gone.status_code == 409
    assert gone.json()["current"] is None
    no_parent = commit(http, "/no/parent.txt", None, [b2], "c5")
    assert (no_parent.status_code, no_parent.json()["error"]) == (404, "no_parent")
    missing = commit(http, "/m.txt", None, [[hashlib.sha256(b"zz").hexdigest(), 2]], "c6")
    assert (missing.status_code, missing.json()["error"]) == (400, "blocks_missing")
    assert missing.json()["missing"] == [hashlib.sha256(b"zz").hexdigest()]
    bad_size = http.post(
        "/api/v1/commit",
        json={
            "path": "/s",
            "base_rev": None,
            "blocks": [b1],
            "size": 1,
            "mtime_ns": 0,
            "commit_id": "c7",
        },
    )
    assert bad_size.status_code == 400
    revs = http.get("/api/v1/revisions", params={"path": "/f.txt"}).json()["revisions"]
    assert [r["revision"] for r in revs] == [2, 1]
    assert revs[0]["size"] == 6000
    assert revs[0]["device"] == "test-device"


def test_two_concurrent_commits_exactly_one_wins(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    with shared_server.client(new_user[1]) as http:
        base = commit(http, "/race.txt", None, [put(http, b"base")], "base").json()
        blocks = [put(http, f"writer {i}".encode()) for i in range(2)]
    barrier = threading.Barrier(2)
    results: list[httpx.Response] = []

    def writer(i: int) -> None:
        with shared_server.client(new_user[1]) as http:
            http.get("/api/v1/whoami")  # connection warm, so both commits leave together
            barrier.wait(10)
            results.append(commit(http, "/race.txt", base["rev"], [blocks[i]], f"w{i}"))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 409]
    winner = next(r for r in results if r.status_code == 200).json()
    loser = next(r for r in results if r.status_code == 409).json()
    assert loser["current"]["rev"] == winner["rev"] == 2
    assert loser["current"]["blocks"] == winner["blocks"]


def test_mkdir_symlink_setattr_list_paging(http: httpx.Client) -> None:
    d = http.post("/api/v1/mkdir", json={"path": "/d", "mode": 0o700}).json()
    assert (d["kind"], d["mode"], d["parent_id"], d["blocks"]) == ("dir", 0o700, 1, None)
    assert http.post("/api/v1/mkdir", json={"path": "/d"}).json()["error"] == "exists"
    assert http.post("/api/v1/mkdir", json={"path": "/x/y"}).status_code == 404
    names = ["b", "a", "C", "é", "aa", "z"]
    for n in names:
        assert http.post("/api/v1/mkdir", json={"path": f"/d/{n}"}).status_code == 200
    link = http.post("/api/v1/symlink", json={"path": "/d/ln", "target": "../t"}).json()
    assert (link["kind"], link["target"]) == ("symlink", "../t")
    seen: list[str] = []
    after = None
    while True:
        params = {"path": "/d", "limit": "3", **({"after": after} if after else {})}
        page = http.get("/api/v1/list", params=params).json()
        seen += [e["name"] for e in page["entries"]]
        assert all(e["blocks"] is None for e in page["entries"])
        after = page["next"]
        if after is None:
            break
    assert seen == sorted([*names, "ln"], key=lambda s: s.encode())
    s = http.post("/api/v1/setattr", json={"path": "/d/a", "mode": 0o711, "mtime_ns": 42}).json()
    assert (s["mode"], s["mtime_ns"]) == (0o711, 42)
    root = http.get("/api/v1/meta", params={"path": "/"}).json()
    assert (root["id"], root["parent_id"], root["name"], root["path"]) == (1, None, "", "/")
    by_id = http.get("/api/v1/meta", params={"id": d["id"]}).json()
    assert by_id["path"] == "/d"


def test_a_client_that_lost_a_commits_answer_asks_what_it_made(http: httpx.Client) -> None:
    """`meta?commit_id=`: the version a commit made, where its file is now, or 404."""
    first = commit(http, "/lost.txt", None, [put(http, b"v1")], "lost-1").json()
    commit(http, "/lost.txt", 1, [put(http, b"v2")], "lost-2")
    http.post("/api/v1/move", json={"from": "/lost.txt", "to": "/found.txt"})
    made = http.get("/api/v1/meta", params={"commit_id": "lost-1"}).json()
    assert (made["id"], made["rev"], made["path"]) == (first["id"], 1, "/found.txt")
    assert http.get("/api/v1/meta", params={"commit_id": "lost-2"}).json()["rev"] == 2
    never = http.get("/api/v1/meta", params={"commit_id": "never-sent"})
    assert (never.status_code, never.json()["error"]) == (404, "not_found")
    assert http.get("/api/v1/meta", params={"commit_id": ""}).status_code == 400
    assert http.get("/api/v1/meta", params={"commit_id": "x" * 1025}).status_code == 400


def test_a_folder_is_listed_by_id_wherever_it_moved(http: httpx.Client) -> None:
    """A client whose view of the tree is behind lists the folder it means by its id: by
    the old path it would get nothing, or another folder made there since."""
    old = http.post("/api/v1/mkdir", json={"path": "/old"}).json()
    commit(http, "/old/kept.txt", None, [put(http, b"kept")], "l1")
    http.post("/api/v1/move", json={"from": "/old", "to": "/new"})
    http.post("/api/v1/mkdir", json={"path": "/old"})
    by_path = http.get("/api/v1/list", params={"path": "/old"}).json()
    by_id = http.get("/api/v1/list", params={"id": old["id"]}).json()
    assert by_path["entries"] == []
    assert [(e["name"], e["path"]) for e in by_id["entries"]] == [("kept.txt", "/new/kept.txt")]
    assert http.post("/api/v1/delete", json={"path": "/new", "recursive": True}).status_code == 200
    assert http.get("/api/v1/list", params={"id": old["id"]}).status_code == 404
    assert http.get("/api/v1/list", params={"id": 10**6}).status_code == 404
    kept = http.get("/api/v1/meta", params={"path": "/old"}).json()
    file = commit(http, "/old/f", None, [put(http, b"f")], "l2").json()
    assert http.get("/api/v1/list", params={"id": kept["id"]}).json()["entries"][0]["name"] == "f"
    assert http.get("/api/v1/list", params={"id": file["id"]}).status_code == 400


def test_move_rename_directory_exchange_replace(http: httpx.Client) -> None:
    for p in ["/a", "/a/sub", "/b", "/full", "/full/x"]:
        http.post("/api/v1/mkdir", json={"path": p})
    f = commit(http, "/a/sub/f", None, [put(http, b"f")], "m1").json()
    moved = http.post("/api/v1/move", json={"from": "/a", "to": "/b/a2"}).json()
    assert moved["path"] == "/b/a2"
    again = http.get("/api/v1/meta", params={"id": f["id"]}).json()
    assert again["path"] == "/b/a2/sub/f"
    assert http.get("/api/v1/meta", params={"path": "/a/sub/f"}).status_code == 404
    into_self = http.post("/api/v1/move", json={"from": "/b", "to": "/b/a2/inside"})
    assert into_self.status_code == 400
    exists = http.post("/api/v1/move", json={"from": "/b", "to": "/full"})
    assert exists.json()["error"] == "exists"
    not_empty = http.post("/api/v1/move", json={"from": "/b", "to": "/full", "mode": "replace"})
    assert not_empty.json()["error"] == "not_empty"
    g = commit(http, "/g", None, [put(http, b"g")], "m2").json()
    h = commit(http, "/h", None, [put(http, b"h")], "m3").json()
    ex = http.post("/api/v1/move", json={"from": "/g", "to": "/h", "mode": "exchange"}).json()
    assert (ex["id"], ex["path"]) == (g["id"], "/h")
    assert http.get("/api/v1/meta", params={"path": "/g"}).json()["id"] == h["id"]
    rep = http.post("/api/v1/move", json={"from": "/g", "to": "/h", "mode": "replace"}).json()
    # A file renamed over a file becomes the target's next revision: the target keeps its id.
    assert (rep["id"], rep["path"], rep["rev"], rep["blocks"]) == (g["id"], "/h", 2, h["blocks"])
    assert http.get("/api/v1/meta", params={"path": "/g"}).status_code == 404
    assert http.post("/api/v1/move", json={"from": "/", "to": "/r"}).status_code == 400
    assert (
        http.post("/api/v1/move", json={"from": "/g", "to": "/q", "mode": "x"}).status_code == 400
    )


def test_delete_trash_undelete(http: httpx.Client) -> None:
    http.post("/api/v1/mkdir", json={"path": "/t"})
    f = commit(http, "/t/f", None, [put(http, b"keep me")], "d1").json()
    ne = http.post("/api/v1/delete", json={"path": "/t"})
    assert ne.status_code == 409
    assert ne.json()["error"] == "not_empty"
    d = http.post("/api/v1/delete", json={"path": "/t", "recursive": True}).json()["deleted"]
    assert d["deleted"] is True
    assert http.get("/api/v1/meta", params={"path": "/t/f"}).status_code == 404
    assert http.get("/api/v1/meta", params={"id": f["id"]}).status_code == 404
    trash = http.get("/api/v1/trash").json()["entries"]
    assert [(e["path"], e["kind"]) for e in trash] == [("/t", "dir")]
    back = http.post("/api/v1/undelete", json={"path": "/t"}).json()
    assert back["path"] == "/t"
    restored = http.get("/api/v1/meta", params={"path": "/t/f"}).json()
    assert restored["id"] == f["id"]
    assert restored["blocks"] == f["blocks"]
    assert http.get("/api/v1/trash").json()["entries"] == []
    assert http.post("/api/v1/undelete", json={"path": "/t"}).status_code == 404
    assert http.post("/api/v1/delete", json={"path": "/"}).status_code == 400
    assert http.post("/api/v1/delete", json={"path": "/nothing"}).status_code == 404


def test_revisions_are_capped_and_restore_makes_a_new_revision(tmp_path) -> None:
    with ServerProcess(tmp_path / "d", config={"revisions_kept": 3}) as srv:
        srv.add_user("rv", "pw")
        with srv.client(srv.login("rv", "pw")) as http:
            contents = [os.urandom(100) for _ in range(5)]
            rev = None
            for i, c in enumerate(contents):
                rev = commit(http, "/r", rev, [put(http, c)], f"r{i}").json()["rev"]
            revs = http.get("/files/list_revisions", params={"path": "/r", "limit": 10}).json()
            assert [r["revision"] for r in revs["revisions"]] == [5, 4, 3]
            assert (
                http.post("/api/v1/restore", json={"path": "/r", "revision": 1}).status_code == 404
            )
            back = http.post("/files/restore", params={"path": "/r", "revision": 3}).json()
            assert back["rev"] == 6
            assert http.get("/files/download", params={"path": "/r"}).content == contents[2]
            old = http.get("/files/download", params={"path": "/r", "revision": 4})
            assert old.content == contents[3]
