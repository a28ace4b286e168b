"""Getting a block's plaintext for a read: memory, then the LMDB cache, then the server.

One request per block however many readers want it (single flight), read-ahead in the
background, and a bounded wait when the server is unreachable: after `fetch_timeout_s` the
read fails with `Offline` and one log line says which block and why.

Concurrency: everything here runs on the trio thread except the CPU (decode, SHA-256) and
LMDB payload work, which goes through `blockstore.aio`. `_inflight` and `_mem` are touched
only between checkpoints on the trio thread.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import trio

from blockstore.aio import run_cpu, run_io
from blockstore.codec import decode_wire
from blockstore.errors import CacheFullError, CorruptBlockError
from blockstore.ids import BlockId
from syncd import errors

__all__ = ["BlockCacheLike", "BlockFetcher", "BlockSource"]

log = logging.getLogger(__name__)

MEM_CACHE_BYTES = 64 << 20
"""Decoded blocks kept in memory: a 1 MiB block serves 8 kernel reads of 128 KiB."""
READAHEAD_PARALLEL = 8
FETCH_GROUP = 4
"""Read-ahead asks the server for this many blocks per request (`POST /blocks/fetch`): a
request costs the server about 0.8 ms of CPU whatever its size, so one per 1 MiB block
was a third of its work on a cold sequential read."""
RETRY_SLEEP_S = 0.25
RATE_LIMITED_MAX_WAIT_S = 60.0
"""How long a read keeps honouring 429 answers before it gives up (the server is up)."""


class BlockCacheLike(Protocol):
    """What we need of `blockstore.cache.LmdbBlockCache`."""

    def get(self, block_id: BlockId) -> bytes | None: ...
    def put(self, block_id: BlockId, data: bytes) -> object: ...
    def pin(self, block_id: BlockId, owner: str) -> object: ...
    def unpin_owner(self, owner: str) -> object: ...
    def used_bytes(self) -> int: ...


class BlockSource(Protocol):
    """Where blocks come from when they are not cached (the server)."""

    async def get_block(self, bid: BlockId) -> bytes: ...


@runtime_checkable
class VerifyingBlockSource(Protocol):
    """A source that also fetches, decodes and verifies in one step (`RemoteClient`)."""

    async def get_block_plain(self, bid: BlockId) -> bytes: ...


@runtime_checkable
class GroupBlockSource(Protocol):
    """A source that fetches and verifies several blocks per request (`RemoteClient`)."""

    async def get_blocks_plain(self, bids: list[BlockId]) -> list[tuple[BlockId, bytes]]: ...


class _AskAgain(Exception):
    """A read-ahead group gave up on this block: whoever waits for it fetches it alone."""


class _Flight:
    __slots__ = ("data", "done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None


class BlockFetcher:
    """Single-flight, cached block reads. Start `run()` in a nursery for read-ahead."""

    def __init__(
        self,
        cache: BlockCacheLike,
        source: BlockSource | None,
        *,
        fetch_timeout_s: float = 10.0,
        mem_bytes: int = MEM_CACHE_BYTES,
    ) -> None:
        self.cache = cache
        self.source = source
        self.fetch_timeout_s = fetch_timeout_s
        self._mem: OrderedDict[BlockId, bytes] = OrderedDict()
        self._mem_bytes = 0
        self._mem_limit = mem_bytes
        self._inflight: dict[BlockId, _Flight] = {}
        self._prefetch_send, self._prefetch_recv = trio.open_memory_channel[list[BlockId]](64)
        self._queued: set[BlockId] = set()
        self.fetched_from_server = 0
        # Protocol isinstance checks are slow (typing inspects the class): decide once.
        self._verifying = source if isinstance(source, VerifyingBlockSource) else None
        self._grouping = source if isinstance(source, GroupBlockSource) else None

    # -- memory layer -------------------------------------------------------------------

    def _remember(self, bid: BlockId, data: bytes) -> None:
        if bid in self._mem or len(data) > self._mem_limit // 4:
            return
        self._mem[bid] = data
        self._mem_bytes += len(data)
        while self._mem_bytes > self._mem_limit:
            _, old = self._mem.popitem(last=False)
            self._mem_bytes -= len(old)

    def remember(self, bid: BlockId, data: bytes) -> None:
        """Offer a block we already have in memory (e.g. just uploaded)."""
        self._remember(bid, data)

    def peek(self, bid: BlockId) -> bytes | None:
        """The block if it is in memory (no I/O)."""
        data = self._mem.get(bid)
        if data is not None:
            self._mem.move_to_end(bid)
        return data

    # -- the read path ------------------------------------------------------------------

    async def get(self, bid: BlockId) -> bytes:
        """Return the plaintext of block `bid`.

        Raises:
            Offline: not cached and the server stayed unreachable for `fetch_timeout_s`.
            RemoteError: the server refused (e.g. 404, or 500 "corrupt block").
            CorruptBlockError: the server sent bytes that are not this block.
        """
        data = self.peek(bid)
        if data is not None:
            await trio.lowlevel.checkpoint()
            return data
        flight = self._inflight.get(bid)
        if flight is None:
            flight = _Flight()
            self._inflight[bid] = flight
            try:
                flight.data = await self._load(bid)
                self._remember(bid, flight.data)
            except BaseException as exc:
                flight.error = exc
                raise
            finally:
                del self._inflight[bid]
                flight.done.set()
            return flight.data
        await flight.done.wait()
        if flight.error is not None:
            if isinstance(flight.error, (trio.Cancelled, _AskAgain)):
                return await self.get(bid)  # the first reader was cancelled or gave up, not us
            raise flight.error
        assert flight.data is not None
        return flight.data

    async def _load(self, bid: BlockId) -> bytes:
        cached = await run_io(self.cache.get, bid)
        if cached is not None:
            return cached
        data = await self._download(bid)
        try:
            await run_io(self.cache.put, bid, data)
        except CacheFullError:
            log.debug("block cache full of pinned blocks; not caching %s", bid)
        return data

    async def _download(self, bid: BlockId) -> bytes:
        if self.source is None:
            raise errors.Offline(f"block {bid} is not cached and no server is configured")
        deadline = trio.current_time() + self.fetch_timeout_s
        throttled_until = trio.current_time() + RATE_LIMITED_MAX_WAIT_S
        last: errors.Offline | None = None
        data: bytes | None = None
        frame = b""
        while True:
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                reason = last or "timed out"
                log.warning(
                    "block %s is not cached and the server is unreachable after %.1fs: %s",
                    bid,
                    self.fetch_timeout_s,
                    reason,
                )
                raise errors.Offline(f"block {bid} not cached; server unreachable: {reason}")
            try:
                with trio.fail_after(remaining):
                    if self._verifying is not None:
                        # Fetch + decode + SHA-256 check in one worker-thread hop.
                        data = await self._verifying.get_block_plain(bid)
                    else:
                        frame = await self.source.get_block(bid)
                break
            except errors.Offline as exc:
                last = exc
                await trio.sleep(min(RETRY_SLEEP_S, max(0.0, deadline - trio.current_time())))
            except errors.RateLimited as exc:
                # The server is up and asks us to slow down: a throttled read waits as told
                # (it is not "offline", so the offline deadline moves along with it).
                wait = max(0.01, exc.retry_after)
                if trio.current_time() + wait > throttled_until:
                    raise
                log.info("rate limited while fetching block %s; retrying in %.2fs", bid, wait)
                await trio.sleep(wait)
                deadline = trio.current_time() + self.fetch_timeout_s
            except trio.TooSlowError:
                last = errors.Offline("request timed out")
            except CorruptBlockError:
                log.error("server sent a block that does not match its id %s", bid)
                raise
        if data is None:
            try:
                data = await run_cpu(_decode, frame, bid)
            except CorruptBlockError:
                log.error("server sent a block that does not match its id %s", bid)
                raise
        self.fetched_from_server += 1
        return data

    # -- read-ahead ---------------------------------------------------------------------

    def prefetch(self, bids: Iterable[BlockId]) -> None:
        """Ask for the blocks after a sequential read, `bids[0]` being the very next one.

        They go out in groups of `FETCH_GROUP` per request. Blocks that are not urgent wait
        until a whole group is due, so a reader moving one block at a time does not turn
        every step into a request of one block. Dropped silently when the queue is full.
        """
        wanted = list(dict.fromkeys(bids))  # a file may hold one block many times (zeros)
        new = [b for b in wanted if b not in self._mem and b not in self._inflight
               and b not in self._queued]  # fmt: skip
        if not new:
            return
        if new[0] != wanted[0] and len(new) < FETCH_GROUP:
            return
        for i in range(0, len(new), FETCH_GROUP):
            group = new[i : i + FETCH_GROUP]
            try:
                self._prefetch_send.send_nowait(group)
            except trio.WouldBlock:
                return
            self._queued.update(group)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve read-ahead requests with `READAHEAD_PARALLEL` workers until cancelled."""
        async with trio.open_nursery() as nursery:
            for _ in range(READAHEAD_PARALLEL):
                nursery.start_soon(self._prefetch_worker, self._prefetch_recv.clone())
            task_status.started()

    async def _prefetch_worker(self, recv: trio.MemoryReceiveChannel[list[BlockId]]) -> None:
        async with recv:
            async for group in recv:
                self._queued.difference_update(group)
                # Already wanted by someone else: waiting for that flight here would idle
                # this worker while the blocks behind it wait.
                todo = [b for b in group if b not in self._mem and b not in self._inflight]
                try:
                    if len(todo) == 1 or self._grouping is None:
                        for bid in todo:
                            await self.get(bid)
                    elif todo:
                        await self._get_group(todo)
                except (errors.SyncError, CorruptBlockError, OSError) as exc:
                    log.debug("read-ahead of %s failed: %s", todo, exc)
                except Exception:  # read-ahead is an optimisation: a bug must not stop reads
                    log.exception("read-ahead of %s crashed", todo)

    async def _get_group(self, bids: list[BlockId]) -> None:
        """Load several blocks (cache, then one request per server answer) for read-ahead.

        Each block gets a flight, so readers wait for the group instead of asking again;
        blocks the group could not deliver end their flight with `_AskAgain`.
        """
        bids = list(dict.fromkeys(bids))
        flights = {}
        for bid in bids:
            flights[bid] = self._inflight[bid] = _Flight()
        try:
            cached = await run_io(_cache_get_many, self.cache, bids)
            todo = []
            for bid, data in zip(bids, cached, strict=True):
                if data is None:
                    todo.append(bid)
                else:
                    self._land(bid, flights.pop(bid), data)
            assert self._grouping is not None
            while todo:
                got = await self._grouping.get_blocks_plain(todo)
                self.fetched_from_server += len(got)
                await run_io(_cache_put_many, self.cache, got)
                for bid, data in got:
                    self._land(bid, flights.pop(bid), data)
                todo = todo[len(got) :]
        finally:
            for bid, flight in flights.items():
                flight.error = _AskAgain()
                del self._inflight[bid]
                flight.done.set()

    def _land(self, bid: BlockId, flight: _Flight, data: bytes) -> None:
        flight.data = data
        self._remember(bid, data)
        del self._inflight[bid]
        flight.done.set()


def _cache_get_many(cache: BlockCacheLike, bids: list[BlockId]) -> list[bytes | None]:
    return [cache.get(bid) for bid in bids]


def _cache_put_many(cache: BlockCacheLike, items: list[tuple[BlockId, bytes]]) -> None:
    for bid, data in items:
        try:
            cache.put(bid, data)
        except CacheFullError:
            log.debug("block cache full of pinned blocks; not caching %s", bid)


def _decode(frame: bytes, bid: BlockId) -> bytes:
    return decode_wire(frame, expected_id=bid)
