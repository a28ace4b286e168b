"""BlockFetcher against a fake server on trio's virtual clock: throttling and outages."""

from __future__ import annotations

import pytest
import trio

from blockstore.codec import encode_wire
from blockstore.ids import BlockId, block_id
from syncd import errors
from syncd.blocks import RATE_LIMITED_MAX_WAIT_S, BlockFetcher

DATA = b"block data " * 1000
BID = block_id(DATA)


class DictCache:
    def __init__(self) -> None:
        self.blocks: dict[BlockId, bytes] = {}

    def get(self, block_id: BlockId) -> bytes | None:
        return self.blocks.get(block_id)

    def put(self, block_id: BlockId, data: bytes) -> None:
        self.blocks[block_id] = data

    def pin(self, block_id: BlockId, owner: str) -> None:
        pass

    def unpin_owner(self, owner: str) -> None:
        pass

    def used_bytes(self) -> int:
        return sum(map(len, self.blocks.values()))


class ThrottlingServer:
    """Answers 429 (retry after `retry_after` s) `times` times, then the block."""

    def __init__(self, times: int, retry_after: float) -> None:
        self.times = times
        self.retry_after = retry_after
        self.calls = 0

    async def get_block(self, bid: BlockId) -> bytes:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        if self.calls <= self.times:
            raise errors.RateLimited("slow down", retry_after=self.retry_after)
        return encode_wire(DATA)


async def test_a_throttled_read_waits_as_told_and_then_succeeds(autojump_clock):
    server = ThrottlingServer(times=30, retry_after=1.0)  # 30 s of 429s > the 5 s offline wait
    fetcher = BlockFetcher(DictCache(), server, fetch_timeout_s=5)
    start = trio.current_time()
    assert await fetcher.get(BID) == DATA
    assert server.calls == 31
    assert trio.current_time() - start == pytest.approx(30.0, abs=0.5)


async def test_a_read_throttled_for_too_long_fails_clearly(autojump_clock):
    server = ThrottlingServer(times=10**6, retry_after=2.0)
    fetcher = BlockFetcher(DictCache(), server, fetch_timeout_s=5)
    with pytest.raises(errors.RateLimited):
        await fetcher.get(BID)
    assert trio.current_time() <= RATE_LIMITED_MAX_WAIT_S + 0.1


class GroupServer:
    """Serves `get_blocks_plain` (at most `per_answer` blocks per answer) and single GETs;
    `fail_groups` makes group requests fail as if the server went away."""

    def __init__(self, blocks: dict[BlockId, bytes], per_answer: int = 100) -> None:
        self.blocks = blocks
        self.per_answer = per_answer
        self.fail_groups = False
        self.group_requests: list[list[BlockId]] = []
        self.single_requests: list[BlockId] = []
        self.release = trio.Event()

    async def get_blocks_plain(self, bids: list[BlockId]) -> list[tuple[BlockId, bytes]]:
        self.group_requests.append(list(bids))
        await self.release.wait()
        if self.fail_groups:
            raise errors.Offline("gone")
        return [(b, self.blocks[b]) for b in bids[: self.per_answer]]

    async def get_block_plain(self, bid: BlockId) -> bytes:
        self.single_requests.append(bid)
        await trio.lowlevel.checkpoint()
        return self.blocks[bid]


async def _settle() -> None:
    """Let read-ahead workers and their cache threads (real threads: no virtual clock) run."""
    await trio.sleep(0.2)


def _blocks(n: int) -> list[tuple[BlockId, bytes]]:
    return [(block_id(d), d) for d in (bytes([i]) * (1000 + i) for i in range(n))]


async def test_read_ahead_asks_for_groups_and_readers_wait_for_them() -> None:
    blocks = _blocks(12)
    server = GroupServer(dict(blocks), per_answer=3)
    cache = DictCache()
    fetcher = BlockFetcher(cache, server)
    async with trio.open_nursery() as nursery:
        await nursery.start(fetcher.run)
        ids = [b for b, _ in blocks]
        fetcher.prefetch(ids[:8])  # the very next block is new: all 8 go, in groups of 4
        await _settle()
        assert sorted(map(len, server.group_requests)) == [4, 4]
        # A reader of a block in flight waits for its group instead of asking alone.
        async with trio.open_nursery() as readers:
            got: list[bytes] = []

            async def read() -> None:
                got.append(await fetcher.get(ids[5]))

            readers.start_soon(read)
            await _settle()
            server.release.set()
        assert got == [blocks[5][1]]
        assert server.single_requests == []
        await _settle()
        # Answers of 3 blocks for groups of 4: the rest was asked for again.
        assert sorted(map(len, server.group_requests)) == [1, 1, 4, 4]
        assert all(cache.get(b) == d for b, d in blocks[:8])
        # One more block due, not urgent: it waits for a whole group.
        fetcher.prefetch(ids[1:9])
        await _settle()
        assert len(server.group_requests) == 4
        fetcher.prefetch(ids[4:12])
        await _settle()
        assert server.group_requests[4] == ids[8:12]
        nursery.cancel_scope.cancel()


async def test_a_failed_group_leaves_each_reader_to_fetch_its_block() -> None:
    blocks = _blocks(4)
    server = GroupServer(dict(blocks))
    server.fail_groups = True
    fetcher = BlockFetcher(DictCache(), server)
    async with trio.open_nursery() as nursery:
        await nursery.start(fetcher.run)
        ids = [b for b, _ in blocks]
        fetcher.prefetch(ids)
        await _settle()
        got: list[bytes] = []

        async def read(i: int) -> None:
            got.append(await fetcher.get(ids[i]))

        async with trio.open_nursery() as readers:
            readers.start_soon(read, 1)
            readers.start_soon(read, 2)
            await _settle()
            server.release.set()
        assert sorted(got) == sorted([blocks[1][1], blocks[2][1]])
        assert sorted(server.single_requests) == sorted([ids[1], ids[2]])
        nursery.cancel_scope.cancel()


async def test_read_ahead_of_a_block_that_repeats_asks_for_it_once() -> None:
    zeros = bytes(4096)
    other = _blocks(2)
    server = GroupServer({block_id(zeros): zeros, **dict(other)})
    server.release.set()
    fetcher = BlockFetcher(DictCache(), server)
    async with trio.open_nursery() as nursery:
        await nursery.start(fetcher.run)
        z = block_id(zeros)
        fetcher.prefetch([z, z, other[0][0], z, other[1][0], z])  # a sparse file's zeros
        await _settle()
        assert server.group_requests == [[z, other[0][0], other[1][0]]]
        assert await fetcher.get(z) == zeros
        nursery.cancel_scope.cancel()
