"""Throughput of the block pipeline: chunk -> id -> compress -> seal, stage by stage.

Usage: `python bench/blockstore_bench.py [--size-mib 256] [--threads N]`

Prints one table (MB/s = 10**6 bytes of plaintext per second) for text-like and random
data. Each stage is timed alone on one thread; the pipeline is timed on one thread and on
a thread pool (chunking on the main thread, id + seal per chunk in the pool). hashlib, zstd
and AES-GCM release the GIL, so the pool uses every core; zstd contexts are per thread
(blockstore.codec keeps them thread-local: sharing one crashes).

Timings on shared machines are noisy: compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import secrets
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blockstore.chunker import chunk_bytes, chunk_stream
from blockstore.codec import ZSTD_LEVEL, seal
from blockstore.ids import BlockId, block_id
from blockstore.keys import new_data_key

MIB = 1024 * 1024
TEXT_SEGMENT_BYTES = 32 * MIB
ACCOUNT = "bench"


def text_like(size: int, seed: int = 1) -> bytes:
    """Return `size` bytes of log/source-like text: lines of words from a vocabulary.

    A 32 MiB base of distinct lines is generated once; further segments are line-level
    shuffles of it, so content does not repeat at any fixed distance.
    """
    rng = random.Random(seed)
    vocab = [rng.randbytes(rng.randint(1, 6)).hex() for _ in range(20_000)]
    lines: list[bytes] = []
    total = 0
    n = 0
    while total < min(size, TEXT_SEGMENT_BYTES):
        words = rng.choices(vocab, k=rng.randint(3, 14))
        line = f"{n:08d} {rng.choice(['INFO', 'DEBUG', 'WARN'])} {' '.join(words)}\n".encode()
        lines.append(line)
        total += len(line)
        n += 1
    out = bytearray()
    while len(out) < size:
        out += b"".join(lines)
        rng.shuffle(lines)
    return bytes(out[:size])


CPU_USED: dict[str, float] = {}
"""Process CPU seconds / wall seconds of the best `timed` run per label (cores in use)."""
DEFAULT_REPEAT = 3
_repeat = DEFAULT_REPEAT


def timed(fn: Callable[[], object], label: str = "") -> float:
    """Return the best wall time of `_repeat` runs (other tenants only ever slow us down)."""
    best = float("inf")
    for _ in range(_repeat):
        cpu = time.process_time()
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
        if wall < best:
            best = wall
            CPU_USED[label] = (time.process_time() - cpu) / wall
    return best


def _each(chunks: list[bytes], fn: Callable[[bytes], object]) -> Callable[[], None]:
    def run() -> None:
        for chunk in chunks:
            fn(chunk)

    return run


def pipeline(data: bytes, threads: int) -> int:
    """Chunk `data` as a stream and id + seal every chunk; return the sealed bytes."""
    key = new_data_key()

    def work(chunk: bytes) -> int:
        return len(seal(key, ACCOUNT, block_id(chunk), chunk))

    chunks = (c.data for c in chunk_stream(io.BytesIO(data)))
    if threads <= 1:
        return sum(work(c) for c in chunks)
    return _pooled(chunks, work, threads)


def _pooled(chunks: Iterable[bytes], work: Callable[[bytes], int], threads: int) -> int:
    """Map `work` over `chunks` in a pool, with a bounded number in flight (bounded memory)."""
    total = 0
    pending: deque[Future[int]] = deque()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for chunk in chunks:
            pending.append(pool.submit(work, chunk))
            if len(pending) >= 2 * threads:
                total += pending.popleft().result()
        while pending:
            total += pending.popleft().result()
    return total


def measure(data: bytes, threads: int) -> dict[str, float]:
    """Return seconds per stage for one data set."""
    chunks = [c.data for c in chunk_bytes(data)]
    aead = AESGCM(new_data_key().secret)
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    key = new_data_key()
    ids = [block_id(c) for c in chunks]
    results = {
        "chunking (FastCDC 256K/1M/4M)": timed(lambda: chunk_bytes(data)),
        "SHA-256 (block id)": timed(_each(chunks, block_id)),
        f"zstd level {ZSTD_LEVEL} compress": timed(_each(chunks, cctx.compress)),
        "AES-256-GCM encrypt": timed(
            _each(chunks, lambda c: aead.encrypt(secrets.token_bytes(12), c, b"aad"))
        ),
        "seal (zstd-if-useful + AES-GCM)": timed(
            lambda: [seal(key, ACCOUNT, BlockId(i), c) for i, c in zip(ids, chunks, strict=True)]
        ),
        "pipeline, 1 thread": timed(lambda: pipeline(data, 1)),
        f"pipeline, {threads} threads": timed(lambda: pipeline(data, threads), "pool"),
    }
    results["_cores"] = CPU_USED["pool"]
    results["_ratio"] = sum(len(cctx.compress(c)) for c in chunks) / len(data)
    results["_chunks"] = len(chunks)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="data per set (MiB)")
    parser.add_argument(
        "--repeat", type=int, default=DEFAULT_REPEAT, help="runs per stage (best is kept)"
    )
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="pipeline threads"
    )
    args = parser.parse_args(argv)
    global _repeat
    _repeat = max(1, args.repeat)
    size = args.size_mib * MIB
    sets = {"text": text_like(size), "random": os.urandom(size)}
    rows = {name: measure(data, args.threads) for name, data in sets.items()}

    print(
        f"blockstore pipeline, {args.size_mib} MiB per data set, "
        f"{len(os.sched_getaffinity(0))} CPUs, best of {_repeat} runs, "
        "MB/s = 10^6 plaintext bytes/s"
    )
    print(f"{'stage':<36}{'text MB/s':>12}{'random MB/s':>14}")
    print("-" * 62)
    for stage in rows["text"]:
        if stage.startswith("_"):
            continue
        cells = [size / rows[name][stage] / 1e6 for name in sets]
        print(f"{stage:<36}{cells[0]:>12,.0f}{cells[1]:>14,.0f}")
    print("-" * 62)
    print(
        f"{'zstd size / plaintext':<36}{rows['text']['_ratio']:>12.3f}"
        f"{rows['random']['_ratio']:>14.3f}"
    )
    counts = [int(rows[name]["_chunks"]) for name in sets]
    means = [f"{n} ({size / n / 1024:,.0f})" for n in counts]
    print(f"{'chunks (mean KiB)':<36}{means[0]:>12}{means[1]:>14}")
    cores = [rows[name]["_cores"] for name in sets]
    print(f"{'cores busy in the threaded pipeline':<36}{cores[0]:>12.2f}{cores[1]:>14.2f}")
    speedup = (
        rows["text"][f"zstd level {ZSTD_LEVEL} compress"]
        / rows["text"][f"pipeline, {args.threads} threads"]
    )
    print(f"text pipeline ({args.threads} threads) vs single-threaded zstd alone: {speedup:.2f}x")


if __name__ == "__main__":
    main()
