"""LmdbBlockCache: LRU, size bound, pins, CacheFullError, corruption, kill -9."""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockstore.cache import TOUCH_BATCH, LmdbBlockCache
from blockstore.errors import CacheFullError
from blockstore.ids import BlockId, block_id


def _block(i: int, size: int = 1000) -> tuple[BlockId, bytes]:
    data = random.Random(i).randbytes(size)
    return block_id(data), data


@pytest.fixture
def cache(tmp_path):
    with LmdbBlockCache(tmp_path / "cache", max_bytes=3000, sync=False) as c:
        yield c


def test_put_get_has(cache):
    bid, data = _block(1)
    assert cache.get(bid) is None
    assert not cache.has(bid)
    cache.put(bid, data)
    assert cache.has(bid)
    assert cache.get(bid) == data
    assert cache.used_bytes() == 1000
    cache.put(bid, data)  # re-put: no double counting
    assert cache.used_bytes() == 1000
    stats = cache.statistics()
    assert (stats.entries, stats.hits, stats.misses) == (1, 1, 1)


def test_lru_order(cache):
    a, b, c, d, e = (_block(i) for i in range(5))
    for bid, data in (a, b, c):
        cache.put(bid, data)
    assert cache.get(a[0]) == a[1]  # order now b, c, a
    cache.put(*d)  # evicts b
    assert [cache.has(x[0]) for x in (a, b, c, d)] == [True, False, True, True]
    cache.get(c[0])  # order a, d, c
    cache.put(*e)  # evicts a
    assert [cache.has(x[0]) for x in (a, c, d, e)] == [False, True, True, True]
    assert cache.statistics().evictions == 2


def test_repeated_reads_count_the_latest(cache):
    a, b, c, d = (_block(i) for i in range(4))
    for bid, data in (a, b, c):
        cache.put(bid, data)
    cache.get(a[0])
    cache.get(b[0])
    cache.get(a[0])  # a read again: recency order is c, b, a (c is the oldest)
    cache.put(*d)
    assert not cache.has(c[0])
    assert cache.has(a[0])
    assert cache.has(b[0])


def test_touch_batches_are_flushed(tmp_path):
    with LmdbBlockCache(tmp_path / "c", max_bytes=10**6, sync=False) as cache:
        bid, data = _block(1)
        cache.put(bid, data)
        for _ in range(TOUCH_BATCH * 2 + 1):
            assert cache.get(bid) == data


def test_re_put_refreshes_recency(cache):
    a, b, c, d = (_block(i) for i in range(4))
    for bid, data in (a, b, c):
        cache.put(bid, data)
    cache.put(*a)
    cache.put(*d)
    assert not cache.has(b[0])
    assert cache.has(a[0])


def test_eviction_never_touches_pinned(cache):
    blocks = [_block(i) for i in range(10)]
    a, b = blocks[0], blocks[1]
    cache.pin(a[0], "file-1")
    cache.pin(b[0], "file-2")
    cache.put(*a)
    cache.put(*b)
    for bid, data in blocks[2:]:
        cache.put(bid, data)
        assert cache.has(a[0])
        assert cache.has(b[0])
        assert cache.used_bytes() <= 3000
    assert cache.get(a[0]) == a[1]
    assert cache.is_pinned(a[0])
    assert cache.statistics().pinned_entries == 2


def test_cache_full_error_leaves_cache_unchanged(cache):
    blocks = [_block(i) for i in range(4)]
    for bid, data in blocks[:3]:
        cache.pin(bid, "dirty")
        cache.put(bid, data)
    before = cache.statistics()
    with pytest.raises(CacheFullError, match="pinned"):
        cache.put(*blocks[3])
    assert cache.statistics() == before
    assert not cache.has(blocks[3][0])
    assert cache.unpin_owner("dirty") == 3
    assert cache.pinned_by("dirty") == []
    cache.put(*blocks[3])  # room can be made now
    assert cache.has(blocks[3][0])
    assert cache.used_bytes() == 3000


def test_block_larger_than_cache(cache):
    with pytest.raises(CacheFullError, match="exceeds"):
        cache.put(*_block(1, size=3001))


def test_pins_by_owner(cache):
    a, b = _block(1), _block(2)
    cache.pin(a[0], "f1")
    cache.pin(a[0], "f1")  # idempotent
    cache.pin(a[0], "f2")
    cache.pin(b[0], "f1")
    assert cache.pinned_by("f1") == sorted([a[0], b[0]])
    cache.unpin(a[0], "f1")
    assert cache.is_pinned(a[0])  # f2 still holds it
    cache.unpin(a[0], "f2")
    assert not cache.is_pinned(a[0])
    cache.unpin(a[0], "f2")  # missing is fine
    assert cache.unpin_owner("nobody") == 0
    assert cache.unpin_owner("f1") == 1
    with pytest.raises(ValueError, match="owner"):
        cache.pin(a[0], "")


def test_pin_before_put_protects_the_block(cache):
    blocks = [_block(i) for i in range(6)]
    cache.pin(blocks[0][0], "upload")
    for bid, data in blocks:
        cache.put(bid, data)
    assert cache.has(blocks[0][0])


def test_unpinned_block_is_most_recent(cache):
    a, b, c, d = (_block(i) for i in range(4))
    cache.pin(a[0], "f")
    for bid, data in (a, b, c):
        cache.put(bid, data)
    cache.unpin(a[0], "f")  # a becomes the most recently used: b is the oldest
    cache.put(*d)
    assert not cache.has(b[0])
    assert cache.has(a[0])


def test_discard(cache):
    a = _block(1)
    cache.put(*a)
    cache.discard(a[0])
    cache.discard(a[0])
    assert not cache.has(a[0])
    assert cache.used_bytes() == 0


def test_reopen_keeps_entries_and_pins(tmp_path):
    a, b = _block(1), _block(2)
    with LmdbBlockCache(tmp_path / "c", max_bytes=10_000) as cache:
        cache.put(*a)
        cache.pin(b[0], "f")
        cache.put(*b)
    with LmdbBlockCache(tmp_path / "c", max_bytes=10_000) as cache:
        assert cache.get(a[0]) == a[1]
        assert cache.pinned_by("f") == [b[0]]
        assert cache.used_bytes() == 2000


def test_reopen_with_smaller_bound_evicts(tmp_path):
    blocks = [_block(i) for i in range(5)]
    with LmdbBlockCache(tmp_path / "c", max_bytes=10_000) as cache:
        for bid, data in blocks:
            cache.put(bid, data)
    with LmdbBlockCache(tmp_path / "c", max_bytes=2500) as cache:
        assert cache.used_bytes() == 2000
        assert [cache.has(bid) for bid, _ in blocks] == [False, False, False, True, True]


def test_reopen_below_pinned_bytes_keeps_pins(tmp_path):
    blocks = [_block(i) for i in range(4)]
    with LmdbBlockCache(tmp_path / "c", max_bytes=10_000) as cache:
        for bid, data in blocks:
            cache.put(bid, data)
        cache.pin(blocks[0][0], "f")
        cache.pin(blocks[1][0], "f")
    with LmdbBlockCache(tmp_path / "c", max_bytes=1500) as cache:  # opens all the same
        assert [cache.has(bid) for bid, _ in blocks] == [True, True, False, False]
        with pytest.raises(CacheFullError):
            cache.put(*_block(9))


def test_files_are_private(tmp_path):
    with LmdbBlockCache(tmp_path / "c", max_bytes=10_000) as cache:
        cache.put(*_block(1))
    assert oct((tmp_path / "c").stat().st_mode & 0o777) == "0o700"
    assert oct((tmp_path / "c" / "data.mdb").stat().st_mode & 0o777) == "0o600"


def test_closed_cache_refuses_calls(tmp_path):
    cache = LmdbBlockCache(tmp_path / "c", max_bytes=10_000)
    cache.close()
    cache.close()
    with pytest.raises(ValueError, match="closed"):
        cache.get(_block(1)[0])


def test_map_grows_when_full(tmp_path):
    blocks = [_block(i, size=256 * 1024) for i in range(32)]
    with LmdbBlockCache(tmp_path / "c", max_bytes=64 << 20, map_bytes=1 << 20) as cache:
        for bid, data in blocks:
            cache.put(bid, data)
        assert cache.used_bytes() == 8 << 20
        assert all(cache.get(bid) == data for bid, data in blocks)


def _flip_stored_byte(path, data: bytes) -> None:
    """Damage the one copy of `data` inside the LMDB file, as a bad disk would."""
    db_file = path / "data.mdb"
    raw = bytearray(db_file.read_bytes())
    at = raw.find(data)
    assert at >= 0
    assert raw.find(data, at + 1) < 0
    raw[at + len(data) // 2] ^= 0x40
    db_file.write_bytes(raw)


def test_corrupt_entry_is_detected_and_dropped(tmp_path, caplog):
    path = tmp_path / "c"
    a, b = _block(1, 5000), _block(2, 5000)
    with LmdbBlockCache(path, max_bytes=100_000) as cache:
        cache.put(*a)
        cache.put(*b)
    _flip_stored_byte(path, a[1])
    with LmdbBlockCache(path, max_bytes=100_000) as cache:
        with caplog.at_level(logging.ERROR, logger="blockstore.cache"):
            assert cache.get(a[0]) is None
        assert "failed its checksum" in caplog.text
        assert not cache.has(a[0])
        assert cache.get(b[0]) == b[1]
        assert cache.used_bytes() == 5000
        assert cache.statistics().corrupt_dropped == 1
        cache.put(*a)  # refetched and cached again
        assert cache.get(a[0]) == a[1]


def test_verify_finds_corruption(tmp_path, caplog):
    path = tmp_path / "c"
    blocks = [_block(i, 5000) for i in range(4)]
    with LmdbBlockCache(path, max_bytes=100_000) as cache:
        for bid, data in blocks:
            cache.put(bid, data)
    _flip_stored_byte(path, blocks[2][1])
    with LmdbBlockCache(path, max_bytes=100_000) as cache:
        with caplog.at_level(logging.ERROR, logger="blockstore.cache"):
            assert cache.verify() == 1
        assert cache.verify() == 0
        assert cache.used_bytes() == 15000
        assert not cache.has(blocks[2][0])


def test_threads_share_one_cache(tmp_path):
    blocks = [_block(i, 2000) for i in range(40)]
    errors: list[BaseException] = []
    with LmdbBlockCache(tmp_path / "c", max_bytes=30_000, sync=False) as cache:

        def work(seed: int) -> None:
            rng = random.Random(seed)
            try:
                for _ in range(300):
                    bid, data = rng.choice(blocks)
                    if rng.random() < 0.5:
                        cache.put(bid, data)
                    else:
                        got = cache.get(bid)
                        assert got is None or got == data
            except BaseException as exc:  # noqa: BLE001 - reported to the main thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        assert cache.used_bytes() <= 30_000
        assert cache.verify() == 0


# -- model-based: the cache against a plain LRU model -----------------------------------

SIZES = [700, 900, 1100, 1300, 1500, 400, 2000, 100]
MODEL_BLOCKS = [_block(100 + i, size) for i, size in enumerate(SIZES)]
MAX_BYTES = 4000
OWNERS = ["f1", "f2"]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, len(SIZES) - 1)),
        st.tuples(st.just("get"), st.integers(0, len(SIZES) - 1)),
        st.tuples(st.just("pin"), st.integers(0, len(SIZES) - 1), st.sampled_from(OWNERS)),
        st.tuples(st.just("unpin"), st.integers(0, len(SIZES) - 1), st.sampled_from(OWNERS)),
        st.tuples(st.just("unpin_owner"), st.sampled_from(OWNERS)),
    ),
    max_size=60,
)


class Model:
    def __init__(self) -> None:
        self.order: OrderedDict[BlockId, int] = OrderedDict()  # oldest first
        self.pins: dict[BlockId, set[str]] = {}

    def put(self, bid: BlockId, size: int) -> bool:
        if bid in self.order:
            self.order.move_to_end(bid)
            return True
        need = sum(self.order.values()) + size - MAX_BYTES
        victims, freed = [], 0
        for old, old_size in self.order.items():
            if freed >= need:
                break
            if not self.pins.get(old):
                victims.append(old)
                freed += old_size
        if freed < need:
            return False
        for old in victims:
            del self.order[old]
        self.order[bid] = size
        return True

    def get(self, bid: BlockId) -> None:
        if bid in self.order:
            self.order.move_to_end(bid)

    def unpin(self, bid: BlockId, owner: str) -> None:
        owners = self.pins.get(bid, set())
        if owner in owners:
            owners.discard(owner)
            if not owners and bid in self.order:
                self.order.move_to_end(bid)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_cache_matches_lru_model(tmp_path_factory, ops):
    model = Model()
    path = tmp_path_factory.mktemp("model")
    with LmdbBlockCache(path, max_bytes=MAX_BYTES, sync=False) as cache:
        for op in ops:
            if op[0] == "put":
                bid, data = MODEL_BLOCKS[op[1]]
                if model.put(bid, len(data)):
                    cache.put(bid, data)
                else:
                    with pytest.raises(CacheFullError):
                        cache.put(bid, data)
            elif op[0] == "get":
                bid, data = MODEL_BLOCKS[op[1]]
                model.get(bid)
                assert cache.get(bid) == (data if bid in model.order else None)
            elif op[0] == "pin":
                bid = MODEL_BLOCKS[op[1]][0]
                model.pins.setdefault(bid, set()).add(op[2])
                cache.pin(bid, op[2])
            elif op[0] == "unpin":
                bid = MODEL_BLOCKS[op[1]][0]
                model.unpin(bid, op[2])
                cache.unpin(bid, op[2])
            else:
                owner = op[1]
                for bid in sorted(b for b, owners in model.pins.items() if owner in owners):
                    model.unpin(bid, owner)
                cache.unpin_owner(owner)
            assert cache.used_bytes() == sum(model.order.values()) <= MAX_BYTES
            present = {bid for bid, _ in MODEL_BLOCKS if cache.has(bid)}
            assert present == set(model.order)
        assert cache.verify() == 0


# -- kill -9 ----------------------------------------------------------------------------

KILL_ROUNDS = 6
CACHE_MAX_BYTES = 6 * 1024 * 1024  # as in _bs_crash_writer.py


def test_survives_kill9_of_a_writer(tmp_path, spawn_writer):
    path = tmp_path / "cache"
    rng = random.Random(7)
    for round_no in range(KILL_ROUNDS):
        writer = spawn_writer("cache", str(path), str(round_no))
        writer.wait_acked(rng.randint(1, 12))
        acked = writer.kill()
        pinned = {bid for bid, was_pinned in acked if was_pinned}
        with LmdbBlockCache(path, max_bytes=CACHE_MAX_BYTES) as cache:
            used = cache.used_bytes()
            assert cache.verify() == 0  # every entry intact
            assert cache.used_bytes() == used <= CACHE_MAX_BYTES  # the count was right
            for bid in pinned:  # this round's acknowledged pinned blocks all survived
                data = cache.get(BlockId(bid))
                assert data is not None
                assert hashlib.sha256(data).hexdigest() == bid
            for bid, _ in acked:
                data = cache.get(BlockId(bid))
                assert data is None or hashlib.sha256(data).hexdigest() == bid
    # The environment is still fully usable by a new writer process.
    with LmdbBlockCache(path, max_bytes=CACHE_MAX_BYTES) as cache:
        bid, data = _block(12345)
        cache.put(bid, data)
        assert cache.get(bid) == data


def test_reads_run_in_parallel_with_map_growth_and_close(tmp_path):
    # Reads hold no lock (parallel read-ahead overlaps its disk reads); the map must still
    # never be resized or closed under an open read, which would crash the process.
    blocks = [_block(i, size=64 * 1024) for i in range(64)]
    errors: list[BaseException] = []
    stop = threading.Event()
    cache = LmdbBlockCache(tmp_path / "c", max_bytes=64 << 20, map_bytes=1 << 20, sync=False)
    cache.put(*blocks[0])

    def read() -> None:
        try:
            while not stop.is_set():
                for bid, data in blocks:
                    got = cache.get(bid)
                    assert got is None or got == data
        except ValueError as exc:  # the cache was closed under us: the only allowed error
            if "closed" not in str(exc):
                errors.append(exc)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for t in readers:
        t.start()
    for bid, data in blocks:  # 4 MiB into a 1 MiB map: it grows three times under the reads
        cache.put(bid, data)
    assert all(cache.get(bid) == data for bid, data in blocks)
    cache.close()  # while the readers still read
    stop.set()
    for t in readers:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in readers)  # nobody stuck behind a resize or close
    assert errors == []
    with LmdbBlockCache(tmp_path / "c", max_bytes=64 << 20) as again:
        assert again.verify() == 0
        assert again.used_bytes() == 64 * 64 * 1024
