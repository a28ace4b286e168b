"""Child process for the kill -9 tests: writes forever, acknowledging each completed write.

Run as a script: `python _bs_crash_writer.py MODE PATH SEED`. It prints one line per
write that returned (`ok <key-or-id> <pinned>`), flushed, so that the parent knows what was
acknowledged before it killed us. MODE `same` writes a fixed list of blocks once, after
waiting for the file PATH/go, and prints whether each put stored it.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from pathlib import Path

from blockstore.cache import LmdbBlockCache
from blockstore.ids import BlockId
from blockstore.store import LocalDirStore

CACHE_MAX_BYTES = 6 * 1024 * 1024
CACHE_PINNED_BLOCKS = 8
SAME_BLOCKS = 12
GO_DEADLINE_SECONDS = 30


def same_block(i: int) -> bytes:
    return random.Random(i).randbytes(512 * 1024 + 1000 * i)


def run_store(root: Path, seed: int) -> None:
    store = LocalDirStore(root)
    rng = random.Random(seed)
    while True:
        data = rng.randbytes(rng.choice([0, 1, 4096, 300_000, 1 << 20, 3 << 20]))
        key = f"acct/{hashlib.sha256(data).hexdigest()}"
        store.put(key, data)
        print("ok", key, 0, flush=True)


def run_cache(path: Path, seed: int) -> None:
    cache = LmdbBlockCache(path, CACHE_MAX_BYTES)
    cache.unpin_owner(f"dirty-{seed - 1}")  # the previous round's file "got synced"
    rng = random.Random(seed)
    done: list[BlockId] = []
    i = 0
    while True:
        data = rng.randbytes(rng.randint(16 * 1024, 512 * 1024))
        bid = BlockId(hashlib.sha256(data).hexdigest())
        pinned = i < CACHE_PINNED_BLOCKS
        if pinned:
            cache.pin(bid, f"dirty-{seed}")
        cache.put(bid, data)
        print("ok", bid, int(pinned), flush=True)
        done.append(bid)
        for old in rng.sample(done, min(3, len(done))):
            cache.get(old)
        i += 1


def run_same(root: Path) -> None:
    store = LocalDirStore(root)
    print("ok", -1, 0, flush=True)  # ready: the parent gives the start signal to all at once
    deadline = time.monotonic() + GO_DEADLINE_SECONDS
    while not (root / "go").exists():
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.001)
    for i in range(SAME_BLOCKS):
        data = same_block(i)
        stored = store.put(f"acct/{hashlib.sha256(data).hexdigest()}", data)
        print("ok", i, int(stored), flush=True)


if __name__ == "__main__":
    mode, target, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    {"store": lambda: run_store(target, seed), "cache": lambda: run_cache(target, seed)}.get(
        mode, lambda: run_same(target)
    )()
