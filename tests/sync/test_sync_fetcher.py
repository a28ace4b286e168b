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
