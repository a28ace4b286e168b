"""Block ids, the local checksum, and the offloading helpers."""

from __future__ import annotations

import hashlib
import threading

import pytest
import trio
import trio.testing

from blockstore import aio
from blockstore.ids import block_id, checksum, is_block_id, parse_block_id


def test_block_id_is_sha256_hex():
    assert block_id(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert block_id(memoryview(b"abc")) == block_id(bytearray(b"abc"))


def test_parse_block_id():
    good = block_id(b"x")
    assert parse_block_id(good) == good
    for bad in ["", good[:-1], good + "0", good.upper(), "g" * 64, " " + good[1:]]:
        assert not is_block_id(bad)
        with pytest.raises(ValueError, match="not a block id"):
            parse_block_id(bad)
    assert not is_block_id(None)


def test_checksum_is_xxh3_64():
    assert checksum(b"") == 0x2D06800538D394C2  # the reference XXH3_64bits("")
    assert checksum(b"a") != checksum(b"b")


async def test_run_cpu_and_run_io_use_worker_threads():
    main = threading.get_ident()
    assert await aio.run_cpu(threading.get_ident) != main
    assert await aio.run_io(threading.get_ident) != main
    assert await aio.run_cpu(block_id, b"abc") == block_id(b"abc")


async def test_limiters_are_shared_within_a_run():
    assert aio.cpu_limiter() is aio.cpu_limiter()
    assert aio.io_limiter().total_tokens == aio.IO_THREADS
    assert aio.cpu_limiter().total_tokens >= 1


def test_limiters_are_per_run():
    async def grab() -> trio.CapacityLimiter:
        return aio.cpu_limiter()

    assert trio.run(grab) is not trio.run(grab)


async def test_cpu_limiter_bounds_concurrency():
    limiter = aio.cpu_limiter()
    peak = 0
    running = 0
    lock = threading.Lock()
    release = threading.Event()

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(timeout=10)
        with lock:
            running -= 1

    async with trio.open_nursery() as nursery:
        for _ in range(limiter.total_tokens + 3):
            nursery.start_soon(aio.run_cpu, work)
        with trio.fail_after(10):
            await trio.testing.wait_all_tasks_blocked()
        assert limiter.borrowed_tokens == limiter.total_tokens
        assert limiter.statistics().tasks_waiting == 3
        release.set()
    assert 1 <= peak <= limiter.total_tokens
