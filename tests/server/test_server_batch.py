"""Batch endpoints: many blocks and many commits per request, each item by its own rules."""

from __future__ import annotations

import hashlib
import os

import pytest

from blockstore.codec import decode_wire, encode_wire
from blockstore.ids import BlockId
from blockstore.wire import parse_block_records
from tests.helpers.server_proc import ServerProcess

pytestmark = pytest.mark.e2e


def _record(bid: str, frame: bytes) -> bytes:
    return bid.encode() + len(frame).to_bytes(4, "big") + frame


def test_block_batch_stores_verifies_and_is_idempotent(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    datas = [os.urandom(5000 + i) for i in range(5)]
    ids = [hashlib.sha256(d).hexdigest() for d in datas]
    body = b"".join(_record(b, encode_wire(d)) for b, d in zip(ids, datas, strict=True))
    with shared_server.client(new_user[1]) as http:
        r = http.post("/api/v1/blocks/batch", content=body)
        assert r.status_code == 200, r.text
        assert r.json() == {"stored": [True] * 5}
        assert http.post("/api/v1/blocks/missing", json={"ids": ids}).json() == {"missing": []}
        assert http.post("/api/v1/blocks/batch", content=body).json() == {"stored": [False] * 5}
        wrong = _record(hashlib.sha256(b"x").hexdigest(), encode_wire(b"y"))
        assert http.post("/api/v1/blocks/batch", content=wrong).status_code == 400
        assert http.post("/api/v1/blocks/batch", content=body[:70]).status_code == 400


def test_block_fetch_answers_frames_in_order_within_a_budget(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    text = b"compressible words " * 20_000  # travels as stored: zstd, not recompressed
    datas = [os.urandom(3 << 20) for _ in range(12)] + [text]
    ids = [hashlib.sha256(d).hexdigest() for d in datas]
    with shared_server.client(new_user[1]) as http:
        for b, d in zip(ids, datas, strict=True):
            assert http.post("/api/v1/blocks/batch", content=_record(b, encode_wire(d))).is_success
        got: list[bytes] = []
        answers = 0
        while len(got) < len(ids):
            r = http.post("/api/v1/blocks/fetch", json={"ids": ids[len(got) :]})
            assert r.status_code == 200, r.text
            records = parse_block_records(r.content)
            assert [b for b, _ in records] == ids[len(got) : len(got) + len(records)]
            got += [decode_wire(f, expected_id=BlockId(b)) for b, f in records]
            answers += 1
        assert got == datas
        assert answers >= 2  # 39 MiB do not fit one answer's budget: a prefix, then the rest
        assert parse_block_records(http.post("/api/v1/blocks/fetch", json={"ids": ids[-1:]})
                                   .content)[0][1][0] & 0x0F == 1  # fmt: skip
        unknown = hashlib.sha256(b"nobody stored this").hexdigest()
        r = http.post("/api/v1/blocks/fetch", json={"ids": [ids[0], unknown]})
        assert r.status_code == 404
        assert unknown in r.text
        for bad in ({"ids": []}, {"ids": ["nope"]}, {"ids": [1]}, {"ids": ids[0]},
                    {"ids": [ids[0]] * 65}):  # fmt: skip
            assert http.post("/api/v1/blocks/fetch", json=bad).status_code == 400, bad
    with shared_server.client("not-a-token") as http:
        assert http.post("/api/v1/blocks/fetch", json={"ids": ids[:1]}).status_code == 401


def test_commit_batch_answers_each_item(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    data = b"batch content"
    bid = hashlib.sha256(data).hexdigest()
    blocks = [[bid, len(data)]]
    with shared_server.client(new_user[1]) as http:
        assert http.put(f"/api/v1/blocks/{bid}", content=encode_wire(data)).status_code == 201
        commits = [
            {"path": f"/f{i}", "base_rev": None, "blocks": blocks, "size": len(data),
             "mtime_ns": 1, "mode": 0o644, "commit_id": f"batch-{i}"}
            for i in range(3)
        ]  # fmt: skip
        commits.append({**commits[0], "commit_id": "other"})  # f0 exists now: conflict
        commits.append({**commits[1], "path": "/no/such/dir", "commit_id": "x"})
        r = http.post("/api/v1/commit/batch", json={"commits": commits})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x.get("record", {}).get("path") for x in results[:3]] == ["/f0", "/f1", "/f2"]
        assert results[3]["error"] == "conflict"
        assert results[3]["current"]["path"] == "/f0"
        assert results[4]["error"] == "no_parent"
        again = http.post("/api/v1/commit/batch", json={"commits": commits[:3]}).json()
        assert [x["record"]["rev"] for x in again["results"]] == [1, 1, 1]
        assert (
            http.get("/api/v1/revisions", params={"path": "/f1"}).json()["revisions"][0]["revision"]
            == 1
        )
        bad = http.post("/api/v1/commit/batch", json={"commits": "nope"})
        assert bad.status_code == 400
