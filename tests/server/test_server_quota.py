"""Quota accounting: only blocks some kept version references count (`used_bytes`); blocks
nothing references (`staged_bytes`) have their own bound, so a refused upload never leaves
its user "full" and unreferenced uploads still cannot fill the disk."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

from blockstore.codec import encode_wire
from blockstore.ids import BlockId
from server import admin
from server.blocks import BlockService
from server.db import Database, accounts, moves, versions, write_txn
from server.db.journal import Actor
from server.errors import ApiError, QuotaExceeded
from server.keyring import Keyring, load_master
from server.locations import MASTER_KEY_FILE as MASTER
from server.locations import open_block_store
from server.metrics import Metrics
from server.quota import StagedLimit
from tests.helpers import pg_cluster
from tests.helpers.moto_s3 import use_test_blocks
from tests.helpers.pg_cluster import use_test_database
from tests.helpers.server_proc import ServerProcess
from tests.server.test_server_tree import commit, put

pytestmark = pytest.mark.e2e


def _usage(http: httpx.Client) -> tuple[int, int]:
    me = http.get("/api/v1/whoami").json()
    return me["used_bytes"], me["staged_bytes"]


def test_a_refused_version_does_not_count_and_dedupe_is_free(tmp_path: Path) -> None:
    # The grace period outlasts the steps below even on a loaded machine (staged blocks that
    # outlive it are collected, which would change the figures); the last step waits it out.
    config = {"block_gc_grace_seconds": 4.0, "maintenance_interval_seconds": 0.3}
    with ServerProcess(tmp_path / "d", config=config) as srv:
        srv.add_user("q", "pw", quota="300K")
        with srv.client(srv.login("q", "pw")) as http:
            a = [put(http, os.urandom(100_000)) for _ in range(2)]
            assert commit(http, "/a", None, a, "a").status_code == 200
            assert _usage(http) == (200_000, 0)
            # Each block fits on its own, the version does not: refused at the commit.
            b = [put(http, os.urandom(60_000)) for _ in range(2)]
            assert _usage(http) == (200_000, 120_000)
            refused = commit(http, "/b", None, b, "b")
            assert (refused.status_code, refused.json()["error"]) == (507, "quota_exceeded")
            assert "storage quota" in refused.json()["message"]
            batch = http.post("/api/v1/commit/batch", json={"commits": [
                {"path": "/b", "base_rev": None, "blocks": b, "size": 120_000, "mtime_ns": 1,
                 "commit_id": "b2"}]}).json()["results"]  # fmt: skip
            assert batch[0]["error"] == "quota_exceeded"
            assert _usage(http) == (200_000, 120_000)  # the refused file's blocks do not count
            assert http.get("/api/v1/meta", params={"path": "/b"}).status_code == 404
            # Blocks a kept version already holds cost nothing; an empty file neither.
            assert commit(http, "/a-copy", None, a, "c").status_code == 200
            assert commit(http, "/empty", None, [], "e").status_code == 200
            assert http.post("/api/v1/restore", json={"path": "/a", "revision": 1}).is_success
            assert _usage(http) == (200_000, 120_000)
            # Half of the refused file fits: it moves from staged to used.
            assert commit(http, "/b-half", None, b[:1], "h").status_code == 200
            assert _usage(http) == (260_000, 60_000)
            # Unreferenced blocks are collected after the grace period.
            http.post("/api/v1/delete", json={"path": "/b-half"}).raise_for_status()
            deadline = time.monotonic() + 30
            while _usage(http)[1] and time.monotonic() < deadline:
                time.sleep(0.1)
            # A delete goes to the trash (undelete brings it back): its blocks still count.
            assert _usage(http) == (260_000, 0)


def test_staged_bytes_have_their_own_limit(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "d", config={"max_staged_bytes": 1000}) as srv:
        srv.add_user("s", "pw", quota="300K")
        with srv.client(srv.login("s", "pw")) as http:
            blocks = [put(http, os.urandom(50_000)) for _ in range(6)]  # the cap: the quota
            assert _usage(http) == (0, 300_000)
            data = os.urandom(10_000)
            bid = hashlib.sha256(data).hexdigest()
            r = http.put(f"/api/v1/blocks/{bid}", content=encode_wire(data))
            assert (r.status_code, r.json()["error"]) == (507, "quota_exceeded")
            assert "staged upload limit of 307200 bytes" in r.json()["message"]
            # Committing some makes room again.
            assert commit(http, "/f", None, blocks[:2], "f").status_code == 200
            assert _usage(http) == (100_000, 200_000)
            assert http.put(f"/api/v1/blocks/{bid}", content=encode_wire(data)).status_code == 201


def test_staged_cap() -> None:
    limit = StagedLimit(max_staged_bytes=1 << 30, max_file_bytes=10 * 10**9)
    assert limit.cap(1 << 20) == 1 << 30
    assert limit.cap(50 << 30) == 50 << 30
    assert limit.cap(None) == 10 * 10**9  # any file that could be committed can be staged


# -- the invariant, in process ---------------------------------------------------------------


def _check_counters(conn: sqlite3.Connection, user_id: int) -> tuple[int, int]:
    """`used_bytes` is the sum over blocks some kept version names, computed from the
    versions (not the refcounts); `staged_bytes` the rest; every named block is held."""
    referenced = "SELECT vb.block_id FROM version_blocks vb JOIN namespaces n ON n.id = vb.ns_id"
    referenced += " WHERE n.owner_id = ?"
    used, staged, missing = conn.execute(
        f"SELECT (SELECT COALESCE(SUM(size), 0) FROM blocks WHERE user_id = ? AND block_id IN"
        f" ({referenced})), (SELECT COALESCE(SUM(size), 0) FROM blocks WHERE user_id = ? AND"
        f" block_id NOT IN ({referenced})), (SELECT COUNT(*) FROM ({referenced}) r WHERE"
        " r.block_id NOT IN (SELECT block_id FROM blocks WHERE user_id = ?))",
        (user_id, user_id, user_id, user_id, user_id, user_id),
    ).fetchone()
    counted = conn.execute(
        "SELECT used_bytes, staged_bytes FROM users WHERE id = ?", (user_id,)
    ).fetchone()
    assert missing == 0
    assert (int(counted[0]), int(counted[1])) == (int(used), int(staged))
    return int(used), int(staged)


def test_used_bytes_is_exactly_the_referenced_blocks(tmp_path: Path) -> None:
    """A random run of uploads, commits (some over quota), restores, deletes, undeletes,
    rename-overs, prunes and collections keeps both counters exact after every step."""
    use_test_database(tmp_path)
    use_test_blocks(tmp_path)
    admin.add_user(tmp_path, "inv", "pw", quota_bytes=25_000)
    db = Database(admin.locations(tmp_path).database, threads=2)
    try:
        blocks = BlockService(
            db, open_block_store(admin.locations(tmp_path).blocks),
            Keyring(load_master(tmp_path / MASTER)), Metrics(),
            8 << 20, StagedLimit(max_staged_bytes=15_000, max_file_bytes=10**9),
        )  # fmt: skip
        found = db.call(accounts.password_hash_of, "inv")
        assert found is not None
        user_id = found[0]
        account, _ = db.call(accounts.account_key, user_id)
        ns_id = db.call(lambda c: c.execute("SELECT root_ns FROM users").fetchone()[0])
        who = accounts.Principal(user_id, "inv", account, ns_id, 0, "unit", "-")
        actor = Actor(ns_id, user_id, "inv", "unit")
        limits = versions.Limits(10**10, 3)
        rng = random.Random(20240607)
        pool = [rng.randbytes(rng.randrange(500, 6000)) for _ in range(16)]
        ids = [BlockId(hashlib.sha256(d).hexdigest()) for d in pool]
        paths = ["/a", "/b", "/c", "/d"]
        counts: dict[str, int] = {}

        def step(kind: str) -> Any:
            path = rng.choice(paths)
            if kind == "upload":
                i = rng.randrange(len(pool))
                return blocks.store_plain_sync(who, ids[i], pool[i])
            if kind == "commit":
                picks = [rng.randrange(len(pool)) for _ in range(rng.randrange(0, 4))]
                refs = tuple((ids[i], len(pool[i])) for i in picks)
                req = versions.CommitRequest(
                    path, None, refs, sum(s for _, s in refs), 0, None, None, overwrite=True
                )
                return db.call(versions.commit, actor, req, limits)
            if kind == "restore":
                return db.call(versions.restore, actor, path, rng.randrange(1, 8), limits)
            if kind == "delete":
                return db.call(moves.delete, actor, path, False)
            if kind == "undelete":
                return db.call(moves.undelete, actor, path)
            if kind == "rename_over":
                return db.call(moves.move, actor, path, rng.choice(paths), "replace", keep=3)
            if kind == "prune":

                def prune(conn: sqlite3.Connection) -> None:
                    with write_txn(conn):
                        rows = conn.execute(
                            "SELECT id FROM files WHERE ns_id = ? AND kind = 'file' ORDER BY id",
                            (ns_id,),
                        ).fetchall()
                        if rows:
                            file_id = int(rng.choice(rows)[0])
                            versions.prune(conn, actor, file_id, rng.randrange(0, 3))

                return db.call(prune)
            assert kind == "collect"
            return blocks.collect_sync(grace_seconds=0)

        kinds = ["upload"] * 4 + ["commit"] * 4 + ["restore", "delete", "undelete",
                 "rename_over", "rename_over", "prune", "collect"]  # fmt: skip
        seen_used: set[int] = set()
        for _ in range(600):
            kind = rng.choice(kinds)
            try:
                step(kind)
                counts[kind] = counts.get(kind, 0) + 1
            except QuotaExceeded:
                counts["refused"] = counts.get("refused", 0) + 1
            except ApiError:
                pass  # not found, exists, missing blocks after a collection: nothing changed
            used, _ = db.call(_check_counters, user_id)
            assert used <= 25_000  # (staged may pass its cap by what deletes released)
            seen_used.add(used)
        # The run did exercise what it claims to.
        assert {"commit", "rename_over", "prune", "collect", "refused"} <= counts.keys()
        assert len(seen_used) > 10
    finally:
        db.close()


def _start_upload(http: httpx.Client, path: str, total: int | None = None) -> httpx.Response:
    headers = {} if total is None else {"X-Upload-Content-Length": str(total)}
    return http.post(f"/files/upload?path={path}&uploadType=resumable", headers=headers)


def _part(http: httpx.Client, loc: str, data: bytes, start: int) -> httpx.Response:
    end = start + len(data) - 1
    return http.put(loc, content=data, headers={"Content-Range": f"bytes {start}-{end}/*"})


def _received(srv: ServerProcess, session_id: str) -> int | None:
    """What the server holds of a session: its part file (SQLite), else the pieces the
    database records (PostgreSQL: server.upload_parts); None when it holds nothing."""
    if not pg_cluster.wanted():
        part = srv.data_dir / "uploads" / f"{session_id}.part"
        return part.stat().st_size if part.exists() else None
    import psycopg

    assert srv.config_path is not None
    url = tomllib.loads(srv.config_path.read_text())["database"]
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT SUM(size) FROM upload_parts WHERE session_id = %s", (session_id,)
        ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def test_resumable_uploads_without_a_size_count_their_bytes_against_the_quota(
    tmp_path: Path,
) -> None:
    with ServerProcess(tmp_path / "d", config={"max_upload_sessions": 3}) as srv:
        srv.add_user("rq", "pw", quota="300K")
        uploads = srv.data_dir / "uploads"
        with srv.client(srv.login("rq", "pw")) as http:
            first = _start_upload(http, "/a.bin")
            assert first.status_code == 200
            loc = first.headers["location"]
            session_id = first.json()["session_id"]
            assert _part(http, loc, os.urandom(200_000), 0).status_code == 308
            over = _part(http, loc, os.urandom(200_000), 200_000)
            assert (over.status_code, over.json()["error"]) == (507, "quota_exceeded")
            assert "storage quota of 307200 bytes" in over.json()["message"]
            assert _received(srv, session_id) == 200_000  # nothing of the refused part was kept
            # Another session: the first one's bytes count too.
            second = _start_upload(http, "/b.bin")
            loc2 = second.headers["location"]
            assert _part(http, loc2, os.urandom(150_000), 0).status_code == 507
            assert _part(http, loc2, os.urandom(50_000), 0).status_code == 308
            # A declared size that cannot fit is refused at the start, as before.
            assert _start_upload(http, "/c.bin", total=100_000).status_code == 507
            # A simple upload without Content-Length (chunked) is bounded the same way.
            chunked = http.post("/files/upload?path=/d.bin&uploadType=media",
                                content=iter([os.urandom(100_000)] * 3))  # fmt: skip
            assert (chunked.status_code, chunked.json()["error"]) == (507, "quota_exceeded")
            assert not [p for p in uploads.iterdir() if p.name.startswith("tmp-")]
            # The first session can still finish within the quota.
            finish = http.put(loc, headers={"Content-Range": "bytes */200000"})
            assert finish.status_code == 201, finish.text
            assert _received(srv, session_id) is None


def test_open_upload_sessions_per_user_are_limited(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "d", config={"max_upload_sessions": 2}) as srv:
        srv.add_user("many", "pw")
        srv.add_user("other", "pw")
        with srv.client(srv.login("many", "pw")) as http:
            locs = [_start_upload(http, f"/s{i}").headers["location"] for i in range(2)]
            refused = _start_upload(http, "/s2")
            assert (refused.status_code, refused.json()["error"]) == (429, "too_many_uploads")
            assert "2 resumable upload sessions are open" in refused.json()["message"]
            assert http.get("/api/v1/meta", params={"path": "/s2"}).status_code == 404
            # A finished session no longer counts.
            assert _part(http, locs[0], b"x", 0).status_code == 308
            assert http.put(locs[0], headers={"Content-Range": "bytes */1"}).status_code == 201
            assert _start_upload(http, "/s3").status_code == 200
        with srv.client(srv.login("other", "pw")) as http:  # the limit is per user
            assert _start_upload(http, "/o").status_code == 200


def test_abandoned_sessions_and_spool_files_are_swept(tmp_path: Path) -> None:
    config = {"upload_session_idle_seconds": 1.0, "maintenance_interval_seconds": 0.3,
              "max_upload_sessions": 1}  # fmt: skip
    with ServerProcess(tmp_path / "d", config=config) as srv:
        srv.add_user("ab", "pw")
        uploads = srv.data_dir / "uploads"
        token = srv.login("ab", "pw")
        with srv.client(token) as http:
            loc = _start_upload(http, "/ab.bin").headers["location"]
            assert _part(http, loc, b"abc", 0).status_code == 308
            time.sleep(2.0)  # no part for longer than the idle time: abandoned
            assert http.put(loc, headers={"Content-Range": "bytes */10"}).status_code == 404
            assert list(uploads.iterdir()) == []
            assert _start_upload(http, "/next.bin").status_code == 200  # room again
        # What a killed server leaves (a simple upload's spool file, the bytes of a session
        # that is gone: a part file, or a piece in the block store with PostgreSQL) is
        # removed when the server starts again.
        srv.kill()
        left = {"tmp-0123456789abcdef01234567"}
        piece = f"uploads/gone/{0:020d}-{'0' * 64}"
        pieces = srv.block_store()
        if pg_cluster.wanted():
            pieces.put(piece, b"left behind")
        else:
            left.add("gone.part")
        for name in left:
            (uploads / name).write_bytes(b"left behind")
        srv.start()
        deadline = time.monotonic() + 10
        while left & {p.name for p in uploads.iterdir()} or pieces.has(piece):
            assert time.monotonic() < deadline, list(uploads.iterdir())
            time.sleep(0.1)
