"""Which S3 client library the block store should use: obstore against boto3/botocore.

Usage: `python bench/s3_client_bench.py [--blocks 64] [--threads 1,4]`

Starts moto's S3 server in a subprocess on a free loopback port (so its Python does not
share this process's GIL), then, per library, puts `--blocks` objects of 1 MiB of random
bytes and gets them back, on 1 thread and on a thread pool (the server calls the store
from trio worker threads). Prints one table: MiB/s, and the CPU time this (client) process
spent per object, which is what the library costs the API server.
A third row, `store`, is `blockstore.s3store.S3BlockStore` itself (obstore plus key
encoding and a conditional create per put). boto3 comes with moto in the test extras.

The endpoint is a Python mock, so absolute figures say more about moto than about S3;
what matters is the difference between the rows of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

MIB = 1024 * 1024
BUCKET = "bench"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_process() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """moto's S3 server in a subprocess: its endpoint URL and the process (for its CPU)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("moto did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def moto_subprocess() -> Iterator[str]:
    with moto_process() as (endpoint, _proc):
        yield endpoint


def create_bucket(endpoint: str, bucket: str = BUCKET) -> None:
    """moto does not check signatures, so a plain PUT makes the bucket."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")).close()


def boto3_ops(endpoint: str) -> tuple[Callable[[str, bytes], None], Callable[[str], bytes]]:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(
            max_pool_connections=16,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    client.create_bucket(Bucket=BUCKET)

    def put(key: str, data: bytes) -> None:
        client.put_object(Bucket=BUCKET, Key=key, Body=data)

    def get(key: str) -> bytes:
        return bytes(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    return put, get


def obstore_ops(endpoint: str) -> tuple[Callable[[str, bytes], None], Callable[[str], bytes]]:
    import obstore
    from obstore.store import S3Store

    create_bucket(endpoint)  # obstore has no bucket operations
    store = S3Store(
        BUCKET, endpoint=endpoint, region="us-east-1", client_options={"allow_http": True}
    )

    def put(key: str, data: bytes) -> None:
        obstore.put(store, key, data)

    def get(key: str) -> bytes:
        return obstore.get(store, key).bytes().to_bytes()

    return put, get


def store_ops(endpoint: str) -> tuple[Callable[[str, bytes], None], Callable[[str], bytes]]:
    from blockstore.s3store import S3BlockStore, S3Settings

    create_bucket(endpoint)
    store = S3BlockStore(BUCKET, "blocks", S3Settings(endpoint=endpoint))

    def put(key: str, data: bytes) -> None:
        store.put(key + "-block", data)

    def get(key: str) -> bytes:
        return store.get(key + "-block")

    return put, get


def run(
    name: str,
    put: Callable[[str, bytes], None],
    get: Callable[[str], bytes],
    blocks: int,
    threads: int,
) -> None:
    data = [os.urandom(MIB) for _ in range(blocks)]
    keys = [f"{name}/{threads}/{i:04d}" for i in range(blocks)]
    put(keys[0] + "-warm", data[0])
    get(keys[0] + "-warm")
    with ThreadPoolExecutor(threads) as pool:
        t0, c0 = time.perf_counter(), time.process_time()
        list(pool.map(put, keys, data))
        t_put, c_put = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        got = list(pool.map(get, keys))
        t_get, c_get = time.perf_counter() - t0, time.process_time() - c0
    assert got == data
    per = 1000 / blocks
    print(
        f"| {name:8} | {threads:7} | {blocks / t_put:9.1f} | {c_put * per:10.2f}"
        f" | {blocks / t_get:9.1f} | {c_get * per:10.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=64)
    parser.add_argument("--threads", default="1,4")
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    libraries = {"boto3": boto3_ops, "obstore": obstore_ops, "store": store_ops}
    print("| library  | threads | put MiB/s | put CPU ms | get MiB/s | get CPU ms |")
    print("|----------|---------|-----------|------------|-----------|------------|")
    for threads in (int(t) for t in args.threads.split(",")):
        for name, make in libraries.items():
            with moto_subprocess() as endpoint:  # a fresh server per row: no memory carried
                try:
                    put, get = make(endpoint)
                except ImportError:
                    print(f"| {name:8} | not installed |")
                    continue
                run(name, put, get, args.blocks, threads)


if __name__ == "__main__":
    main()
