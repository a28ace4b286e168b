"""Never lose a write, server side: deletes and rename-overs name the revision they saw,
a file renamed over a file becomes its next revision, and a missing parent is `no_parent`."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from blockstore.codec import encode_wire
from blockstore.ids import BlockId
from server import admin
from server.blocks import BlockService
from server.db import Database, accounts, moves, versions
from server.db.journal import Actor
from server.keyring import Keyring, load_master
from server.locations import MASTER_KEY_FILE as MASTER
from server.locations import open_block_store
from server.metrics import Metrics
from syncd import errors
from syncd.remote import RemoteClient
from tests.helpers.moto_s3 import use_test_blocks
from tests.helpers.pg_cluster import use_test_database
from tests.helpers.server_proc import ServerProcess
from tests.server.test_server_tree import commit, put

pytestmark = pytest.mark.e2e


@pytest.fixture
def http(shared_server: ServerProcess, new_user: tuple[str, str]) -> Iterator[httpx.Client]:
    with shared_server.client(new_user[1]) as client:
        yield client


def _meta(http: httpx.Client, path: str) -> httpx.Response:
    return http.get("/api/v1/meta", params={"path": path})


def test_stale_delete_is_refused_and_a_matching_one_deletes(http: httpx.Client) -> None:
    v1 = commit(http, "/doc", None, [put(http, b"v1")], "d1").json()
    v2 = commit(http, "/doc", v1["rev"], [put(http, b"v2")], "d2").json()
    stale = http.post("/api/v1/delete", json={"path": "/doc", "base_rev": v1["rev"]})
    assert stale.status_code == 409
    assert stale.json()["error"] == "conflict"
    current = stale.json()["current"]
    assert (current["id"], current["rev"], current["blocks"]) == (v2["id"], 2, v2["blocks"])
    assert _meta(http, "/doc").json()["rev"] == 2
    assert http.get("/api/v1/trash").json()["entries"] == []
    ok = http.post("/api/v1/delete", json={"path": "/doc", "base_rev": v2["rev"]})
    assert ok.status_code == 200
    assert ok.json()["deleted"]["deleted"] is True
    assert _meta(http, "/doc").status_code == 404
    # Old clients send no base_rev; a directory ignores it (only files have revisions).
    commit(http, "/old", None, [put(http, b"old")], "d3")
    assert http.post("/api/v1/delete", json={"path": "/old"}).status_code == 200
    http.post("/api/v1/mkdir", json={"path": "/dir"})
    assert http.post("/api/v1/delete", json={"path": "/dir", "base_rev": 7}).status_code == 200


def test_a_commit_names_the_file_its_base_revision_is_of(http: httpx.Client) -> None:
    """Convergence seed 1532: a device edited /x/a (file 4, rev 1) offline while another
    moved x away and made a new /x/a (rev 1 too, revisions count per file); the edit's
    commit became the new file's second revision, and the device lost track of file 4. With
    `base_id` it is a conflict showing the file now there."""
    old = commit(http, "/x", None, [put(http, b"old")], "b1").json()
    moved = http.post("/api/v1/move", json={"from": "/x", "to": "/y", "mode": "noreplace"})
    assert moved.is_success
    new = commit(http, "/x", None, [put(http, b"new")], "b2").json()
    assert (old["rev"], new["rev"]) == (1, 1)
    edit = [put(http, b"edited offline")]
    body = {"path": "/x", "base_rev": 1, "base_id": old["id"], "blocks": edit,
            "size": edit[0][1], "mtime_ns": 123, "commit_id": "b3"}  # fmt: skip
    refused = http.post("/api/v1/commit", json=body)
    assert refused.status_code == 409
    assert refused.json()["current"]["id"] == new["id"]
    assert _meta(http, "/x").json()["rev"] == 1
    ours = http.post("/api/v1/commit", json={**body, "base_id": new["id"], "commit_id": "b4"})
    assert ours.status_code == 200
    assert (ours.json()["id"], ours.json()["rev"]) == (new["id"], 2)


def test_stale_rename_over_is_refused(http: httpx.Client) -> None:
    t1 = commit(http, "/t", None, [put(http, b"t1")], "s1").json()
    commit(http, "/t", t1["rev"], [put(http, b"t2")], "s2")
    src = commit(http, "/t.tmp", None, [put(http, b"new")], "s3").json()
    body = {"from": "/t.tmp", "to": "/t", "mode": "replace"}
    stale = http.post("/api/v1/move", json={**body, "dst_rev": t1["rev"]})
    assert stale.status_code == 409
    assert stale.json()["error"] == "conflict"
    assert (stale.json()["current"]["path"], stale.json()["current"]["rev"]) == ("/t", 2)
    stale_src = http.post("/api/v1/move", json={**body, "src_rev": src["rev"] + 1})
    assert stale_src.status_code == 409
    assert stale_src.json()["current"]["id"] == src["id"]
    assert _meta(http, "/t.tmp").json()["id"] == src["id"]
    assert _meta(http, "/t").json()["rev"] == 2
    # dst_rev naming a target that is gone does not stop the rename (the new content wins).
    gone = http.post(
        "/api/v1/move", json={"from": "/t.tmp", "to": "/fresh", "mode": "replace", "dst_rev": 9}
    )
    assert gone.status_code == 200
    assert gone.json()["id"] == src["id"]


def test_rename_over_a_file_becomes_its_next_revision(http: httpx.Client) -> None:
    contents = [b"first save", b"second save", b"third save from a temp file"]
    old = commit(http, "/notes.txt", None, [put(http, contents[0])], "r1").json()
    old = commit(http, "/notes.txt", 1, [put(http, contents[1])], "r2").json()
    tmp = commit(http, "/.notes.txt.swp", None, [put(http, contents[2])], "r3").json()
    cursor = http.get("/api/v1/cursor").json()["cursor"]
    r = http.post(
        "/api/v1/move",
        json={"from": "/.notes.txt.swp", "to": "/notes.txt", "mode": "replace",
              "src_rev": tmp["rev"], "dst_rev": old["rev"]},
    )  # fmt: skip
    assert r.status_code == 200
    rec = r.json()
    assert (rec["id"], rec["path"], rec["rev"]) == (old["id"], "/notes.txt", 3)
    assert (rec["blocks"], rec["size"], rec["mode"]) == (tmp["blocks"], tmp["size"], tmp["mode"])
    assert rec["content_hash"] == hashlib.sha256(contents[2]).hexdigest()
    assert _meta(http, "/.notes.txt.swp").status_code == 404
    assert http.get("/api/v1/meta", params={"id": tmp["id"]}).status_code == 404
    assert http.get("/api/v1/trash").json()["entries"] == []
    assert http.post("/api/v1/undelete", json={"path": "/.notes.txt.swp"}).status_code == 404
    revs = http.get("/api/v1/revisions", params={"path": "/notes.txt"}).json()["revisions"]
    assert [v["revision"] for v in revs] == [3, 2, 1]
    assert http.get("/files/download", params={"path": "/notes.txt"}).content == contents[2]
    back = http.post("/api/v1/restore", json={"path": "/notes.txt", "revision": 1}).json()
    assert (back["id"], back["rev"]) == (old["id"], 4)
    assert http.get("/files/download", params={"path": "/notes.txt"}).content == contents[0]

    # What other devices see: the temp name goes away, the target gets a new revision.
    entries = http.get("/api/v1/delta", params={"cursor": cursor}).json()["entries"]
    moved = [(e["op"], e["file"]["id"], e["file"]["path"]) for e in entries[:2]]
    assert moved == [("delete", tmp["id"], "/.notes.txt.swp"), ("update", old["id"], "/notes.txt")]
    assert entries[0]["file"]["deleted"] is True
    assert (entries[1]["file"]["rev"], entries[1]["file"]["blocks"]) == (3, tmp["blocks"])


def test_moves_and_deletes_touch_only_the_entry_the_caller_saw(http: httpx.Client) -> None:
    """A device that saw `/c` (id X) renames or deletes it after another device deleted it
    and created a new `/c` (id Y): nothing happens to Y. A rename-over whose target is
    another entry than the one the device saw is a conflict, like a stale revision."""
    old = commit(http, "/c", None, [put(http, b"old c")], "i1").json()
    assert http.post("/api/v1/delete", json={"path": "/c"}).status_code == 200
    new = commit(http, "/c", None, [put(http, b"new c")], "i2").json()
    assert new["id"] != old["id"]
    assert new["rev"] == old["rev"]
    moved = http.post("/api/v1/move", json={"from": "/c", "to": "/e", "src_id": old["id"]})
    assert (moved.status_code, moved.json()["error"]) == (404, "not_found")
    gone = http.post("/api/v1/delete", json={"path": "/c", "base_rev": 1, "id": old["id"]})
    assert (gone.status_code, gone.json()["error"]) == (404, "not_found")
    assert _meta(http, "/c").json()["id"] == new["id"]
    assert _meta(http, "/e").status_code == 404
    tmp = commit(http, "/c.tmp", None, [put(http, b"save")], "i3").json()
    over = http.post(
        "/api/v1/move",
        json={"from": "/c.tmp", "to": "/c", "mode": "replace", "dst_rev": 1,
              "src_id": tmp["id"], "dst_id": old["id"]},
    )  # fmt: skip
    assert (over.status_code, over.json()["error"]) == (409, "conflict")
    assert over.json()["current"]["id"] == new["id"]
    assert http.get("/files/download", params={"path": "/c"}).content == b"new c"
    # Naming the entries that are there: both go ahead.
    ok = http.post(
        "/api/v1/move",
        json={"from": "/c.tmp", "to": "/c", "mode": "replace", "src_id": tmp["id"],
              "dst_id": new["id"]},
    )  # fmt: skip
    assert (ok.status_code, ok.json()["id"], ok.json()["rev"]) == (200, new["id"], 2)
    done = http.post("/api/v1/delete", json={"path": "/c", "id": new["id"]})
    assert done.status_code == 200


def test_rename_over_keeps_other_kinds_as_before(http: httpx.Client) -> None:
    for p in ["/d1", "/d2"]:
        http.post("/api/v1/mkdir", json={"path": p})
    d1 = _meta(http, "/d1").json()
    r = http.post("/api/v1/move", json={"from": "/d1", "to": "/d2", "mode": "replace"}).json()
    assert (r["id"], r["path"]) == (d1["id"], "/d2")
    assert [e["path"] for e in http.get("/api/v1/trash").json()["entries"]] == ["/d2"]
    f = commit(http, "/f", None, [put(http, b"f")], "k1").json()
    link = http.post("/api/v1/symlink", json={"path": "/ln", "target": "f"}).json()
    r = http.post("/api/v1/move", json={"from": "/ln", "to": "/f", "mode": "replace"}).json()
    assert (r["id"], r["kind"]) == (link["id"], "symlink")
    assert http.get("/api/v1/revisions", params={"path": "/f"}).status_code == 400
    trash = http.get("/api/v1/trash").json()["entries"]
    assert (trash[0]["path"], trash[0]["id"]) == ("/f", f["id"])


def test_missing_parent_is_no_parent(http: httpx.Client) -> None:
    b = put(http, b"x")
    r = commit(http, "/missing/dir/f", None, [b], "p1")
    assert (r.status_code, r.json()["error"]) == (404, "no_parent")
    item = {"path": "/missing/f", "base_rev": None, "blocks": [b], "size": 1, "mtime_ns": 1,
            "commit_id": "p2"}  # fmt: skip
    ok = {**item, "path": "/here", "commit_id": "p3"}
    res = http.post("/api/v1/commit/batch", json={"commits": [item, ok]}).json()["results"]
    assert res[0]["error"] == "no_parent"
    assert res[1]["record"]["path"] == "/here"
    for route, body in [
        ("mkdir", {"path": "/missing/d"}),
        ("symlink", {"path": "/missing/l", "target": "x"}),
        ("move", {"from": "/here", "to": "/missing/here"}),
    ]:
        answer = http.post(f"/api/v1/{route}", json=body)
        assert (answer.status_code, answer.json()["error"]) == (404, "no_parent"), route
    # The entry itself missing stays plain not_found.
    assert http.post("/api/v1/delete", json={"path": "/nope"}).json()["error"] == "not_found"
    assert _meta(http, "/missing/f").json()["error"] == "not_found"


def test_a_change_names_the_folder_it_means(http: httpx.Client) -> None:
    """A folder renamed elsewhere, a new one made at its old path: a change that names the
    old folder's id is `no_parent` (it follows its folder), not put in the new folder."""
    old = http.post("/api/v1/mkdir", json={"path": "/docs"}).json()
    assert http.post("/api/v1/move", json={"from": "/docs", "to": "/archive"}).status_code == 200
    new = http.post("/api/v1/mkdir", json={"path": "/docs"}).json()
    b = put(http, b"meant for the old folder")
    body = {"path": "/docs/f", "base_rev": None, "blocks": [b], "size": b[1], "mtime_ns": 1,
            "commit_id": "pid1", "parent_id": old["id"]}  # fmt: skip
    r = http.post("/api/v1/commit", json=body)
    assert (r.status_code, r.json()["error"]) == (404, "no_parent")
    (item,) = http.post("/api/v1/commit/batch", json={"commits": [body]}).json()["results"]
    assert item["error"] == "no_parent"
    assert (
        http.post("/api/v1/mkdir", json={"path": "/docs/d", "parent_id": old["id"]}).json()["error"]
        == "no_parent"
    )
    answer = http.post(
        "/api/v1/symlink", json={"path": "/docs/l", "target": "x", "parent_id": old["id"]}
    )
    assert answer.json()["error"] == "no_parent"
    commit(http, "/loose", None, [b], "pid2")
    moved = http.post("/api/v1/move", json={"from": "/loose", "to": "/docs/loose",
                                             "dst_parent_id": old["id"]})  # fmt: skip
    assert moved.json()["error"] == "no_parent"
    listing = http.get("/api/v1/list", params={"path": "/docs"}).json()["entries"]
    assert listing == []  # nothing landed in the new folder
    # Naming the folder that is there (or none, as older clients do) goes ahead.
    ok = http.post("/api/v1/commit", json={**body, "commit_id": "pid3", "parent_id": new["id"]})
    assert (ok.status_code, ok.json()["path"]) == (200, "/docs/f")
    there = http.post("/api/v1/commit", json={**body, "path": "/archive/f", "commit_id": "pid4"})
    assert there.status_code == 200
    moved = http.post("/api/v1/move", json={"from": "/loose", "to": "/archive/loose",
                                             "dst_parent_id": old["id"]})  # fmt: skip
    assert moved.json()["path"] == "/archive/loose"


async def test_remote_client_sends_revisions_and_maps_no_parent(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    remote = RemoteClient(shared_server.async_client(new_user[1]))
    try:
        data = b"client"
        bid = hashlib.sha256(data).hexdigest()
        await remote.request("PUT", f"/api/v1/blocks/{bid}", content=encode_wire(data))
        blocks: list[Any] = [(bid, len(data))]
        with pytest.raises(errors.ParentMissing):
            await remote.commit("/no/f", None, blocks, len(data), 1, 0o644, "c0")
        f = await remote.commit("/f", None, blocks, len(data), 1, 0o644, "c1")
        g = await remote.commit("/g", None, blocks, len(data), 1, 0o644, "c2")
        batch = [{"path": "/no/x", "base_rev": None, "blocks": [[bid, len(data)]],
                  "size": len(data), "mtime_ns": 1, "commit_id": "c3"}]  # fmt: skip
        (item,) = await remote.commit_batch(batch)
        assert isinstance(item, errors.ParentMissing)
        with pytest.raises(errors.Conflict) as stale:
            await remote.delete("/f", False, base_rev=f.rev + 1)
        assert stale.value.current is not None
        assert stale.value.current["id"] == f.id
        with pytest.raises(errors.Conflict):
            await remote.move("/g", "/f", "replace", dst_rev=f.rev + 1)
        rec = await remote.move("/g", "/f", "replace", src_rev=g.rev, dst_rev=f.rev)
        assert (rec.id, rec.rev) == (f.id, f.rev + 1)
        await remote.delete("/f", False, base_rev=rec.rev)
    finally:
        await remote.aclose()


def test_rename_over_carries_the_source_history_within_revisions_kept(tmp_path: Path) -> None:
    """The source's versions become the target's newest ones with their block references
    (nothing is trashed or counted twice), and revisions_kept still caps the target's
    history: here the target's own two older versions are pruned."""
    use_test_database(tmp_path)
    use_test_blocks(tmp_path)
    admin.add_user(tmp_path, "ro", "pw")
    db = Database(admin.locations(tmp_path).database, threads=2)
    try:
        blocks = BlockService(
            db, open_block_store(admin.locations(tmp_path).blocks),
            Keyring(load_master(tmp_path / MASTER)), Metrics(),
            8 << 20,
        )  # fmt: skip
        found = db.call(accounts.password_hash_of, "ro")
        assert found is not None
        user_id = found[0]
        account, _ = db.call(accounts.account_key, user_id)
        ns_id = db.call(lambda c: c.execute("SELECT root_ns FROM users").fetchone()[0])
        who = accounts.Principal(user_id, "ro", account, ns_id, 0, "unit", "-")
        actor = Actor(ns_id, user_id, "ro", "unit")
        limits = versions.Limits(10**10, 2)
        datas = {name: name.encode() * 50 for name in ("t1", "t2", "s1", "s2")}
        ids = {name: BlockId(hashlib.sha256(d).hexdigest()) for name, d in datas.items()}
        for name, d in datas.items():
            assert blocks.store_plain_sync(who, ids[name], d)

        def save(path: str, name: str, base: int | None) -> int:
            req = versions.CommitRequest(
                path, base, ((ids[name], len(datas[name])),), len(datas[name]), 0, None, name
            )
            return db.call(versions.commit, actor, req, limits)[0].rev

        save("/t", "t1", None)
        save("/t", "t2", 1)
        save("/s", "s1", None)
        save("/s", "s2", 1)
        rec = db.call(moves.move, actor, "/s", "/t", "replace", keep=limits.revisions_kept)
        assert (rec.rev, rec.blocks) == (4, ((ids["s2"], len(datas["s2"])),))

        def refcounts() -> dict[str, int]:
            rows = db.call(
                lambda c: c.execute(
                    "SELECT block_id, refcount FROM blocks WHERE user_id = ?", (user_id,)
                ).fetchall()
            )
            by_id = {str(r[0]): int(r[1]) for r in rows}
            return {name: by_id.get(bid, -1) for name, bid in ids.items()}

        # 2 kept: s1 and s2, now revisions 3 and 4 of /t; t1 and t2 pruned.
        assert refcounts() == {"t1": 0, "t2": 0, "s1": 1, "s2": 1}
        kept = db.call(versions.revisions, ns_id, "/t", 10)
        assert [(v.revision, v.content_hash) for v in kept] == [
            (4, hashlib.sha256(datas["s2"]).hexdigest()),
            (3, hashlib.sha256(datas["s1"]).hexdigest()),
        ]
        time.sleep(0.05)
        assert blocks.collect_sync(grace_seconds=0.01) == 2
        assert blocks.get_plain_sync(who, ids["s2"]) == datas["s2"]
        assert blocks.get_plain_sync(who, ids["s1"]) == datas["s1"]
    finally:
        db.close()
