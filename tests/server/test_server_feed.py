"""Change feed: cursor, delta, reset after trimming, long polls (wake, timeout, disconnect)."""

from __future__ import annotations

import hashlib
import time

import httpx
import pytest
import trio

from blockstore.codec import encode_wire
from tests.helpers.server_proc import ServerProcess

pytestmark = pytest.mark.e2e


def _open_longpolls(http: httpx.Client | None, text: str | None = None) -> int:
    body = text if text is not None else http.get("/metrics").text  # type: ignore[union-attr]
    line = next(ln for ln in body.splitlines() if ln.startswith("drive_longpolls_open "))
    return int(line.split()[1])


def test_delta_lists_changes_in_order_with_paging(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    with shared_server.client(new_user[1]) as http:
        cursor = http.get("/api/v1/cursor").json()["cursor"]
        http.post("/api/v1/mkdir", json={"path": "/d"})
        http.post("/files/upload?path=/d/f&uploadType=media", content=b"hello")
        http.post("/api/v1/move", json={"from": "/d/f", "to": "/d/g"})
        http.post("/api/v1/delete", json={"path": "/d/g"})
        http.post("/api/v1/editing", json={"path": "/d"})  # a directory: refused
        page1 = http.get("/api/v1/delta", params={"cursor": cursor, "limit": 2}).json()
        assert page1["has_more"] is True
        assert page1["reset"] is False
        page2 = http.get("/api/v1/delta", params={"cursor": page1["cursor"]}).json()
        assert page2["has_more"] is False
        entries = page1["entries"] + page2["entries"]
        assert [e["op"] for e in entries] == ["mkdir", "create", "move", "delete"]
        assert entries[2]["old_path"] == "/d/f"
        assert entries[2]["file"]["path"] == "/d/g"
        assert entries[3]["file"]["deleted"] is True
        assert entries[1]["file"]["blocks"] is not None
        assert {e["device"] for e in entries} == {"test-device"}
        assert {e["user"] for e in entries} == {new_user[0]}
        seqs = [e["seq"] for e in entries]
        assert seqs == sorted(seqs)
        empty = http.get("/api/v1/delta", params={"cursor": page2["cursor"]}).json()
        assert empty["entries"] == []
        assert empty["cursor"] == page2["cursor"]


def test_pending_is_journaled_for_uploads_and_editing(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    with shared_server.client(new_user[1]) as http:
        cursor = http.get("/api/v1/cursor").json()["cursor"]
        loc = http.post("/files/upload?path=/p.txt&uploadType=resumable",
                        headers={"X-Upload-Content-Length": "5"}).headers["location"]  # fmt: skip
        http.put(loc, content=b"hello", headers={"Content-Range": "bytes 0-4/5"})
        assert http.post("/api/v1/editing", json={"path": "/p.txt"}).json() == {"ok": True}
        assert http.post("/api/v1/editing", json={"path": "/nope"}).status_code == 404
        entries = http.get("/api/v1/delta", params={"cursor": cursor}).json()["entries"]
    assert [e["op"] for e in entries] == ["pending", "create", "pending"]
    pending, created, editing = (e["file"] for e in entries)
    assert (pending["state"], pending["rev"], pending["size"]) == ("pending", 0, 5)
    assert pending["id"] == created["id"]
    assert created["state"] == "done"
    assert (editing["state"], editing["rev"]) == ("pending", 1)


def test_cursor_older_than_the_trimmed_journal_gets_reset(tmp_path) -> None:
    config = {"journal_keep_entries": 2, "maintenance_interval_seconds": 0.2}
    with ServerProcess(tmp_path / "d", config=config) as srv:
        srv.add_user("tr", "pw")
        with srv.client(srv.login("tr", "pw")) as http:
            for i in range(5):
                http.post("/api/v1/mkdir", json={"path": f"/d{i}"})
            deadline = time.monotonic() + 10
            while True:
                d = http.get("/api/v1/delta", params={"cursor": "0"}).json()
                if d["reset"] or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert d["reset"] is True
            assert d["entries"] == []
            assert d["cursor"] == "5"
            tail = http.get("/api/v1/delta", params={"cursor": "3"}).json()
            assert [e["seq"] for e in tail["entries"]] == [4, 5]
            assert http.get("/api/v1/delta", params={"cursor": "99"}).json()["reset"] is True


async def test_longpoll_wakes_within_100ms_of_a_commit_on_another_connection(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    async with (
        shared_server.async_client(new_user[1]) as poller,
        shared_server.async_client(new_user[1]) as writer,
    ):
        cursor = (await poller.get("/api/v1/cursor")).json()["cursor"]
        data = b"wake up"
        bid = hashlib.sha256(data).hexdigest()
        await writer.put(f"/api/v1/blocks/{bid}", content=encode_wire(data))
        answered: list[tuple[float, dict[str, object]]] = []
        done = trio.Event()

        async def poll() -> None:
            r = await poller.get("/api/v1/longpoll", params={"cursor": cursor, "timeout": 60})
            answered.append((time.monotonic(), r.json()))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            with trio.fail_after(10):
                # The gauge lives in another process: poll it (no event to wait on).
                while _open_longpolls(None, (await writer.get("/metrics")).text) < 1:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            t0 = time.monotonic()
            r = await writer.post(
                "/api/v1/commit",
                json={"path": "/wake", "base_rev": None, "blocks": [[bid, len(data)]],
                      "size": len(data), "mtime_ns": 0, "commit_id": "wake"},
            )  # fmt: skip
            assert r.status_code == 200
            with trio.fail_after(10):
                await done.wait()
        woke_at, body = answered[0]
        assert body == {"changes": True, "backoff": None}
        assert woke_at - t0 < 0.1, f"long poll answered {woke_at - t0:.3f} s after the commit"
        now_cursor = (await poller.get("/api/v1/cursor")).json()["cursor"]
        r = await poller.get("/api/v1/longpoll", params={"cursor": cursor, "timeout": 60})
        assert r.json()["changes"] is True  # already behind: answers at once
        assert now_cursor != cursor


def test_longpoll_timeout_and_disconnect(tmp_path) -> None:
    config = {"longpoll_min_seconds": 0.5, "longpoll_max_seconds": 1.0}
    with ServerProcess(tmp_path / "d", config=config) as srv:
        srv.add_user("lp", "pw")
        token = srv.login("lp", "pw")
        with srv.client(token) as http:
            t0 = time.monotonic()
            r = http.get("/api/v1/longpoll", params={"cursor": "0", "timeout": 0})
            held = time.monotonic() - t0
            assert r.json() == {"changes": False, "backoff": None}
            assert 0.45 <= held < 5
        # A client that goes away releases its waiter at once.
        with (
            srv.client(token, timeout=httpx.Timeout(30, read=0.3)) as http,
            pytest.raises(httpx.ReadTimeout),
        ):
            http.get("/api/v1/longpoll", params={"cursor": "0", "timeout": 1})
        with srv.client(token) as http:
            deadline = time.monotonic() + 0.5
            while _open_longpolls(http) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _open_longpolls(http) == 0
