"""The BlockStore contract on every backend (a directory, S3 on moto); LocalDirStore's
layout, atomicity under kill -9 and concurrent writer processes."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time

import pytest

from blockstore.errors import BlockNotFound
from blockstore.s3store import S3BlockStore, S3Settings
from blockstore.store import BlockStore, LocalDirStore
from tests.helpers.moto_s3 import CREDENTIALS

ID_A = hashlib.sha256(b"a").hexdigest()
ID_B = hashlib.sha256(b"b").hexdigest()


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> BlockStore:
    """Each backend in turn (moto starts only for the S3 one)."""
    if request.param == "local":
        return LocalDirStore(tmp_path / "blocks")
    s3 = request.getfixturevalue("moto_s3")
    where = S3Settings(endpoint=s3.endpoint, **CREDENTIALS)
    return S3BlockStore(s3.new_bucket(), "drive/blocks", where)


@pytest.fixture
def local_store(tmp_path) -> LocalDirStore:
    return LocalDirStore(tmp_path / "blocks")


def test_contract(store):
    assert isinstance(store, BlockStore)
    assert store.put(f"alice/{ID_A}", b"a") is True
    assert store.put(f"alice/{ID_A}", b"a") is False
    assert store.get(f"alice/{ID_A}") == b"a"
    assert store.has(f"alice/{ID_A}")
    assert not store.has(f"bob/{ID_A}")
    assert store.size(f"alice/{ID_A}") == 1
    store.put(f"bob/{ID_B}", memoryview(b"bb"))
    assert sorted(store.keys()) == [f"alice/{ID_A}", f"bob/{ID_B}"]
    assert list(store.keys("alice/")) == [f"alice/{ID_A}"]
    assert list(store.keys("ali")) == [f"alice/{ID_A}"]
    assert list(store.keys(f"bob/{ID_B[:3]}")) == [f"bob/{ID_B}"]
    assert list(store.keys("carol/")) == []
    store.delete(f"alice/{ID_A}")
    store.delete(f"alice/{ID_A}")  # missing is fine
    assert not store.has(f"alice/{ID_A}")
    with pytest.raises(BlockNotFound):
        store.get(f"alice/{ID_A}")
    with pytest.raises(BlockNotFound):
        store.size(f"alice/{ID_A}")
    assert store.put(f"alice/{ID_A}", b"a") is True  # a deleted key can be stored again


def test_fan_out_layout(local_store):
    store = local_store
    store.put(f"alice/{ID_A}", b"a")
    assert (store.root / "alice" / ID_A[:2] / ID_A[2:4] / f"{ID_A}.blk").read_bytes() == b"a"
    assert (
        oct((store.root / "alice" / ID_A[:2] / ID_A[2:4] / f"{ID_A}.blk").stat().st_mode)[-3:]
        == "600"
    )


@pytest.mark.parametrize(
    "key", ["", "abc", "a/../" + ID_A, "a//" + ID_A, "./" + ID_A, "a\x00/" + ID_A, "x/" + "y" * 300]
)
def test_invalid_keys(store, key):
    with pytest.raises(ValueError, match="invalid store key"):
        store.put(key, b"x")


def test_odd_segments_round_trip(store):
    keys = [f"john.doe/{ID_A}", f"ü ber/~x/{ID_B}", f"%41/{ID_A}", f"A/{ID_A}", "top-level"]
    for key in keys:
        store.put(key, key.encode())
    assert sorted(store.keys()) == sorted(keys)
    for key in keys:
        assert store.get(key) == key.encode()


def test_temp_files_ignored_and_cleaned(local_store):
    store = local_store
    store.put(f"alice/{ID_A}", b"a")
    directory = store.root / "alice" / ID_A[:2] / ID_A[2:4]
    stale = directory / ".tmp-1-dead"
    fresh = directory / ".tmp-2-live"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert list(store.keys()) == [f"alice/{ID_A}"]
    assert store.remove_stale_temp_files() == 1
    assert not stale.exists()
    assert fresh.exists()
    assert store.remove_stale_temp_files(older_than_seconds=-1) == 1
    assert list(store.keys()) == [f"alice/{ID_A}"]


THREADS = 8


def test_concurrent_puts_of_one_key_store_it_once(store):
    key = f"alice/{ID_A}"
    results: list[bool] = []
    barrier = threading.Barrier(THREADS)

    def writer() -> None:
        barrier.wait()
        results.append(store.put(key, b"a"))

    threads = [threading.Thread(target=writer) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [False] * (THREADS - 1) + [True]
    assert store.get(key) == b"a"


def _check_all_complete(store: LocalDirStore) -> int:
    """Every visible object is complete: its content hashes to its key's name."""
    n = 0
    for key in list(store.keys()):
        try:
            data = store.get(key)
        except BlockNotFound:  # pragma: no cover - nothing deletes in these tests
            continue
        assert hashlib.sha256(data).hexdigest() == key.rpartition("/")[2], key
        n += 1
    return n


KILL_ROUNDS = 8


def test_kill9_never_leaves_partial_objects(tmp_path, spawn_writer):
    root = tmp_path / "blocks"
    store = LocalDirStore(root)
    rng = random.Random(99)
    acknowledged: set[str] = set()
    for round_no in range(KILL_ROUNDS):
        writer = spawn_writer("store", str(root), str(round_no))
        writer.wait_acked(1)
        # Keep checking while the writer runs: no partial object may ever be visible.
        for _ in range(rng.randint(1, 4)):
            _check_all_complete(store)
        time.sleep(rng.random() * 0.03)  # kill at a random point inside some write
        acked = writer.kill()
        acknowledged.update(key for key, _ in acked)
        assert _check_all_complete(store) >= len(acknowledged) > 0
        for key in acknowledged:  # every acknowledged write survived
            assert store.has(key)
    store.remove_stale_temp_files(older_than_seconds=-1)
    leftovers = [p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".blk")]
    assert leftovers == []
    assert _check_all_complete(store) >= len(acknowledged)


WRITERS = 4


def test_concurrent_writers_of_one_block(tmp_path, spawn_writer):
    root = tmp_path / "blocks"
    root.mkdir()
    writers = [spawn_writer("same", str(root), "0") for _ in range(WRITERS)]
    for writer in writers:
        writer.wait_acked(1)  # all started and ready
    (root / "go").touch()
    results = [{int(i): flag for i, flag in w.finish() if int(i) >= 0} for w in writers]
    (root / "go").unlink()
    n_blocks = len(results[0])
    assert n_blocks > 0
    for i in range(n_blocks):
        stored = [r[i] for r in results]
        assert sum(stored) == 1, f"block {i}: exactly one writer stores it, got {stored}"
    store = LocalDirStore(root)
    assert _check_all_complete(store) == n_blocks
    assert list(root.rglob(".tmp-*")) == []
