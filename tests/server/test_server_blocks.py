"""Block API: missing, put (verified, idempotent, concurrent), get, encryption at rest."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import httpx
import pytest

from blockstore.codec import decode_wire, encode_wire
from tests.helpers.server_proc import ServerProcess

pytestmark = pytest.mark.e2e


def test_put_get_missing_roundtrip(shared_server: ServerProcess, new_user: tuple[str, str]) -> None:
    data = os.urandom(300_000) + b"a" * 300_000
    bid = hashlib.sha256(data).hexdigest()
    other = hashlib.sha256(b"other").hexdigest()
    with shared_server.client(new_user[1]) as http:
        r = http.post("/api/v1/blocks/missing", json={"ids": [bid, other, bid]})
        assert r.json() == {"missing": [bid, other]}
        assert http.put(f"/api/v1/blocks/{bid}", content=encode_wire(data)).status_code == 201
        assert http.put(f"/api/v1/blocks/{bid}", content=encode_wire(data)).status_code == 200
        assert http.post("/api/v1/blocks/missing", json={"ids": [bid, other]}).json() == {
            "missing": [other]
        }
        got = http.get(f"/api/v1/blocks/{bid}")
        assert got.status_code == 200
        assert decode_wire(got.content, expected_id=bid) == data  # type: ignore[arg-type]
        assert http.get(f"/api/v1/blocks/{other}").status_code == 404
        metrics = http.get("/metrics").text
    assert "drive_dedupe_hits_total" in metrics


def test_put_rejects_wrong_id_bad_frames_and_huge_blocks(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    data = b"hello world"
    wrong = hashlib.sha256(b"something else").hexdigest()
    with shared_server.client(new_user[1]) as http:
        r = http.put(f"/api/v1/blocks/{wrong}", content=encode_wire(data))
        assert r.status_code == 400
        assert http.post("/api/v1/blocks/missing", json={"ids": [wrong]}).json()["missing"]
        assert http.put("/api/v1/blocks/NOTANID", content=encode_wire(data)).status_code == 400
        bid = hashlib.sha256(data).hexdigest()
        assert http.put(f"/api/v1/blocks/{bid}", content=b"\xff garbage").status_code == 400
        big = b"z" * (8 * 1024 * 1024 + 1)  # compresses: the frame is small, the block is not
        r = http.put(f"/api/v1/blocks/{hashlib.sha256(big).hexdigest()}", content=encode_wire(big))
        assert r.status_code == 413
        raw = os.urandom(9 * 1024 * 1024)
        r = http.put(f"/api/v1/blocks/{hashlib.sha256(raw).hexdigest()}", content=b"\x10" + raw)
        assert r.status_code == 413
        too_many = http.post("/api/v1/blocks/missing", json={"ids": [bid] * 10_001})
        assert too_many.status_code == 400


def test_concurrent_puts_of_one_block_are_safe(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    data = os.urandom(2 * 1024 * 1024)
    bid = hashlib.sha256(data).hexdigest()
    frame = encode_wire(data)
    statuses: list[int] = []

    def put() -> None:
        with shared_server.client(new_user[1]) as http:
            statuses.append(http.put(f"/api/v1/blocks/{bid}", content=frame).status_code)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(statuses) == [200] * 7 + [201]
    with shared_server.client(new_user[1]) as http:
        got = http.get(f"/api/v1/blocks/{bid}")
        assert decode_wire(got.content) == data
        me = http.get("/api/v1/whoami").json()
        # Stored once; no version references it yet, so it is staged, not used.
        assert (me["used_bytes"], me["staged_bytes"]) == (0, len(data))


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_blocks_are_encrypted_and_corruption_is_an_error(server: ServerProcess) -> None:
    server.add_user("enc", "pw")
    token = server.login("enc", "pw")
    marker = b"PLAINTEXT-MARKER-" * 4096  # compressible: would survive as a run if unencrypted
    secret = os.urandom(100_000) + marker
    with server.client(token) as http:
        r = http.post("/files/upload", params={"path": "/s.bin", "uploadType": "media"},
                      content=secret)  # fmt: skip
        assert r.status_code == 201
        blocks = r.json()["blocks"]
    store = server.block_store()  # DATA/blocks/, or a bucket under DRIVE_TEST_BLOCKS=s3
    stored = {key: store.get(key) for key in store.keys()}  # noqa: SIM118  # a store
    at_rest = [(str(p), p.read_bytes()) for p in _files_under(server.data_dir)]
    for where, content in [*stored.items(), *at_rest]:
        assert b"PLAINTEXT-MARKER" not in content, where
        assert secret[:64] not in content, where
    assert len(stored) == len(blocks)
    victim = next(iter(stored))
    raw = bytearray(stored[victim])
    raw[len(raw) // 2] ^= 0x01
    store.delete(victim)  # puts never overwrite: the corrupt copy replaces the object
    store.put(victim, bytes(raw))
    bad_id = victim.rsplit("/", 1)[1]
    assert bad_id in {b[0] for b in blocks}
    with server.client(token) as http:
        r = http.get(f"/api/v1/blocks/{bad_id}")
        assert r.status_code == 500
        assert r.json()["error"] == "internal"
        assert r.json()["message"] == "corrupt block"
        assert "request_id" in r.json()
        with http.stream("GET", "/files/download", params={"path": "/s.bin"}) as resp:
            if resp.status_code == 200:
                got = bytearray()

                def read_all() -> None:
                    for piece in resp.iter_bytes():
                        got.extend(piece)

                with pytest.raises(httpx.TransportError):  # cut short, never wrong bytes
                    read_all()
                assert secret.startswith(bytes(got))
                assert len(got) < len(secret)
            else:
                assert resp.status_code == 500
    assert "corrupt" in server.log_text()
