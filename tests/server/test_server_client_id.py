"""`X-Drive-Client`: every journal entry names the client program whose request made it, so
a device's follower can skip its own echoes and still see what its CLI did with the same
token. Also: a database from before the column migrates and keeps working."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from blockstore.ids import BlockId
from blockstore.wire import Change
from server.db import Database, accounts, journal, schema, sqlite, versions
from server.db.conn import SQLITE
from server.db.journal import Actor
from server.db.url import SqliteUrl
from syncd.remote import RemoteClient
from tests.helpers.server_proc import ServerProcess
from tests.server.test_server_bulk_conn import bulk_socket, reply, send
from tests.server.test_server_tree import commit, put

pytestmark = pytest.mark.e2e

KEPT, STAGED = "a" * 64, "b" * 64

MOUNT = {"X-Drive-Client": "mount-7f3a_1"}
CLI = {"X-Drive-Client": "cli-1"}


def _delta(http: httpx.Client, cursor: str) -> list[dict[str, Any]]:
    body = http.get("/api/v1/delta", params={"cursor": cursor}).json()
    entries: list[dict[str, Any]] = body["entries"]
    return entries


def test_changes_carry_the_client_of_the_request_that_made_them(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    with shared_server.client(new_user[1]) as http:
        cursor = http.get("/api/v1/cursor").json()["cursor"]
        http.post("/api/v1/mkdir", json={"path": "/d"}, headers=MOUNT).raise_for_status()
        v1 = commit(http, "/d/f", None, [put(http, b"one")], "c1").json()  # no header
        http.post("/api/v1/commit", headers=MOUNT, json={
            "path": "/d/f", "base_rev": v1["rev"], "blocks": [put(http, b"two")], "size": 3,
            "mtime_ns": 1, "commit_id": "c2"}).raise_for_status()  # fmt: skip
        http.post("/api/v1/restore", json={"path": "/d/f", "revision": 1},
                  headers=CLI).raise_for_status()  # fmt: skip
        http.post("/files/upload", params={"path": "/u", "uploadType": "media"}, content=b"u",
                  headers=CLI).raise_for_status()  # fmt: skip
        http.post("/api/v1/commit/batch", headers=MOUNT, json={"commits": [
            {"path": "/b", "base_rev": None, "blocks": [], "size": 0, "mtime_ns": 1,
             "commit_id": "b1"}]}).raise_for_status()  # fmt: skip
        http.post("/api/v1/delete", json={"path": "/b"}, headers=CLI).raise_for_status()
        http.post("/api/v1/undelete", json={"path": "/b"}).raise_for_status()
        entries = _delta(http, cursor)
    got = [(e["op"], e["file"]["path"], e["client"]) for e in entries]
    assert got == [
        ("mkdir", "/d", "mount-7f3a_1"),
        ("create", "/d/f", None),
        ("update", "/d/f", "mount-7f3a_1"),
        ("restore", "/d/f", "cli-1"),
        ("create", "/u", "cli-1"),
        ("create", "/b", "mount-7f3a_1"),
        ("delete", "/b", "cli-1"),
        ("undelete", "/b", None),
    ]
    # The same device (one token) made all of them: only `client` tells them apart.
    assert len({e["device_id"] for e in entries}) == 1
    changes = [Change.from_json(e) for e in entries]
    assert [c.client for c in changes] == [g[2] for g in got]
    assert changes[3].to_json()["client"] == "cli-1"


@pytest.mark.parametrize(
    "value", ["", "a" * 65, "has space", "dot.ted", "slash/", "ünï", "semi;colon"]
)
def test_a_malformed_client_id_is_400_and_changes_nothing(
    shared_server: ServerProcess, new_user: tuple[str, str], value: str
) -> None:
    with shared_server.client(new_user[1]) as http:
        cursor = http.get("/api/v1/cursor").json()["cursor"]
        r = http.post(
            "/api/v1/mkdir",
            json={"path": "/never"},
            headers={"X-Drive-Client": value.encode("utf-8")},
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "bad_request"
        assert "X-Drive-Client" in r.json()["message"]
        assert http.get("/api/v1/meta", params={"path": "/never"}).status_code == 404
        assert _delta(http, cursor) == []
        # Before authentication, and on routes that journal nothing, too.
        assert http.get("/api/v1/info", headers={"X-Drive-Client": "a" * 65}).status_code == 400
        assert http.get("/api/v1/whoami", headers={"X-Drive-Client": "a" * 64}).status_code == 200


def test_a_repeated_client_header_is_400(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    with shared_server.client(new_user[1]) as http:
        r = http.get("/api/v1/whoami", headers=[("X-Drive-Client", "a"), ("X-Drive-Client", "b")])
    assert (r.status_code, r.json()["error"]) == (400, "bad_request")


def test_bulk_connections_check_the_header_too(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    _, token = new_user
    with bulk_socket(shared_server) as sock:
        send(sock, "POST", "/api/v1/blocks/fetch", token, b'{"ids": []}',
             extra="X-Drive-Client: bad id\r\n")  # fmt: skip
        status, _, body = reply(sock)
        assert (status, json.loads(body)["error"]) == (400, "bad_request")
        assert "X-Drive-Client" in json.loads(body)["message"]
        send(sock, "GET", "/api/v1/blocks/" + "0" * 64, token, extra="X-Drive-Client: ok\r\n")
        assert reply(sock)[0] == 404  # a good id is just ignored: the block is not there


async def test_remote_client_names_itself_in_every_request(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    with pytest.raises(ValueError, match="client id"):
        RemoteClient(shared_server.async_client(new_user[1]), client_id="no spaces")
    remote = RemoteClient(shared_server.async_client(new_user[1]), client_id="mount-abc")
    plain = RemoteClient(shared_server.async_client(new_user[1]))
    try:
        cursor = await remote.cursor()
        await remote.mkdir("/m", 0o755)
        await plain.mkdir("/p", 0o755)
        await remote.commit("/m/e", None, [], 0, 1, 0o644, "e1")
        await remote.restore("/m/e", 1)
        changes, _, _, _ = await plain.delta(cursor)
    finally:
        await remote.aclose()
        await plain.aclose()
    assert [(c.op, c.client) for c in changes] == [
        ("mkdir", "mount-abc"),
        ("mkdir", None),
        ("create", "mount-abc"),
        ("restore", "mount-abc"),
    ]


def _v2_database(data_dir: Path) -> None:
    """A database as a server of schema version 2 left it: one user, two blocks (one
    referenced by a version, one only uploaded) and a journal entry without a client."""
    data_dir.mkdir(parents=True)
    conn = sqlite3.connect(data_dir / "drive.db", isolation_level=None)
    try:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version (version) VALUES (2)")
        for stmt in schema.MIGRATIONS[0] + schema.MIGRATIONS[1]:
            conn.execute(stmt.format(**SQLITE.ddl_words))
        now = time.time()
        conn.execute(
            "INSERT INTO users (id, name, account, pw_hash, used_bytes, wrapped_key, root_ns,"
            " created_at) VALUES (1, 'old', 'a1', 'x', 700, x'00', 1, ?)",
            (now,),
        )
        conn.execute(
            "INSERT INTO namespaces (id, owner_id, kind, head_seq) VALUES (1, 1, 'root', 1)"
        )
        conn.execute(
            "INSERT INTO files (ns_id, id, parent_id, name, kind, mode, mtime_ns, rev, size)"
            " VALUES (1, 1, NULL, '', 'dir', 493, 0, 0, 0), (1, 2, 1, 'f', 'file', 420, 0, 1, 300)"
        )
        conn.execute(
            "INSERT INTO file_versions (ns_id, file_id, rev, state, size, mtime_ns, device,"
            " created_at) VALUES (1, 2, 1, 'done', 300, 0, 'dev', ?)",
            (now,),
        )
        conn.execute("INSERT INTO version_blocks VALUES (1, 2, 1, 0, ?, 300)", (KEPT,))
        conn.execute(
            "INSERT INTO blocks (user_id, block_id, size, stored_size, refcount, created_at,"
            " last_access, zero_since) VALUES (1, ?, 300, 310, 1, ?, ?, NULL),"
            " (1, ?, 400, 410, 0, ?, ?, ?)",
            (KEPT, now, now, STAGED, now, now, now),
        )
        record = {"id": 2, "parent_id": 1, "name": "f", "path": "/f", "kind": "file",
                  "mode": 420, "size": 300, "mtime_ns": 0, "rev": 1, "state": "done",
                  "content_hash": None, "blocks": [[KEPT, 300]], "target": None,
                  "deleted": False}  # fmt: skip
        conn.execute(
            "INSERT INTO journal (ns_id, seq, op, file_id, record, device, device_id, user_name,"
            " created_at) VALUES (1, 1, 'create', 2, ?, 'dev', 5, 'old', ?)",
            (json.dumps(record), now),
        )
    finally:
        conn.close()


def test_an_old_database_migrates_and_keeps_its_journal(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _v2_database(data_dir)
    db = Database(SqliteUrl(data_dir / "drive.db"), threads=1)
    try:
        version = db.call(lambda c: c.execute("SELECT version FROM schema_version").fetchone()[0])
        assert version == schema.SCHEMA_VERSION
        old = db.call(journal.delta, 1, 0, 10)
        assert [(e["op"], e["device_id"], e["client"]) for e in old.entries] == [
            ("create", 5, None)
        ]
        assert Change.from_json(old.entries[0]).client is None
        # The recount: the referenced block is used, the merely uploaded one staged.
        assert db.call(
            lambda c: tuple(c.execute("SELECT used_bytes, staged_bytes FROM users").fetchone())
        ) == (300, 400)
        # It keeps working: a new change records its client, the staged block becomes used.
        actor = Actor(1, 1, "old", "dev", 5, "cli-9")
        req = versions.CommitRequest("/g", None, ((BlockId(STAGED), 400),), 400, 0, None, "g")
        db.call(versions.commit, actor, req, versions.Limits(10**10, 10))
        new = db.call(journal.delta, 1, old.cursor, 10)
        assert [(e["op"], e["client"]) for e in new.entries] == [("create", "cli-9")]
        assert db.call(accounts.usage, 1) == accounts.Usage(None, 700, 0)
    finally:
        db.close()
    conn = sqlite.connect(data_dir / "drive.db")
    try:
        assert schema.migrate(conn) == schema.SCHEMA_VERSION  # again: nothing left to do
    finally:
        conn.close()
