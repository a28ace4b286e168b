"""Scale-out benchmark: one API server against two, on PostgreSQL metadata and S3 blocks.

Run: `.venv/bin/python bench/scaleout_bench.py [--polls 10000] [--upload-seconds 10]`.
Starts a throwaway PostgreSQL cluster (tests/helpers/pg_cluster.py), moto's S3 server in a
process of its own, then for each shape a fresh database and bucket and one or two
`drive server serve` on 127.0.0.1 (the second reads the first one's master key). Prints one
table, a column per shape:

- simple uploads (`POST /files/upload`, 500 KB of random bytes) per second from 8 clients,
  and the CPU each upload cost the API servers, PostgreSQL (postmaster and backends) and
  the S3 endpoint, from /proc utime+stime deltas over the upload phase;
- change latency p50/p99: from sending a commit to server A until a long poll held on
  server B answers (with one server, A and B are the same);
- idle long polls: RSS per waiter and the time from a commit's 200 until the last of N
  waiters has its answer (bench/longpoll_measure.py, waiters held by another process).

Balancing: until the deployment's load balancer is in the repository, the bench clients
spread uploads and long polls round-robin over the servers' URLs themselves (`Spread`).
`--balancer URL --balancer-cafile PEM` sends them through a balancer instead (the latency
rows still address A and B directly, to be sure the two ends are on different servers).
"""

from __future__ import annotations

import argparse
import itertools
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.longpoll_measure import hold_polls
from bench.proc_stats import cpu_seconds, tree_cpu_seconds
from bench.s3_client_bench import create_bucket, moto_process
from tests.helpers import pg_cluster
from tests.helpers.server_proc import ServerProcess

CONFIG = {"rate_per_second": 1e9, "rate_burst": 1_000_000_000, "longpoll_max_open": 100_000}
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
UPLOAD_BYTES = 500_000
LATENCY_ROUNDS = 50


class Spread:
    """Where the bench's clients send requests: round-robin over the servers, or always to
    one balancer URL (the hook for a real load balancer)."""

    def __init__(self, urls: list[str], cafiles: list[Path]) -> None:
        # One context per server: self-signed certificates with the same name in one store
        # would be taken for each other.
        self.targets = [(url, ssl.create_default_context(cafile=str(ca)))
                        for url, ca in zip(urls, cafiles, strict=True)]  # fmt: skip

    @asynccontextmanager
    async def clients(self, token: str) -> AsyncIterator[Iterator[httpx.AsyncClient]]:
        """One client per target for one bench client, handed out round-robin."""
        headers = {"Authorization": f"Bearer {token}"}
        async with AsyncExitStack() as stack:
            made = [await stack.enter_async_context(
                        httpx.AsyncClient(base_url=url, verify=ctx, headers=headers, timeout=60))
                    for url, ctx in self.targets]  # fmt: skip
            yield itertools.cycle(made)


@contextmanager
def deployment(
    pg: pg_cluster.Cluster, endpoint: str, tmp: Path, name: str, servers: int
) -> Iterator[list[ServerProcess]]:
    """`servers` API servers on a fresh database and bucket, sharing one master key."""
    database = pg.create_database()
    bucket = f"bench-{name}-{os.getpid()}"
    create_bucket(endpoint, bucket)
    storage = {"database": database, "blocks": f"s3://{bucket}/blocks",
               "s3_endpoint": endpoint, "s3_region": "us-east-1"}  # fmt: skip
    first_key = tmp / f"{name}-0" / "master.key"
    with ExitStack() as stack:
        procs = []
        for i in range(servers):
            data = tmp / f"{name}-{i}"
            keys = {**storage, "master_key_file": str(first_key)} if i else storage
            data.mkdir(parents=True)  # the admin commands read the storage keys from here
            (data / "server.toml").write_text("".join(f'{k} = "{v}"\n' for k, v in keys.items()))
            srv = ServerProcess(data, config={**CONFIG, **keys}, env=S3_ENV)
            procs.append(stack.enter_context(srv))
        yield procs


def postmaster_pid(pg: pg_cluster.Cluster) -> int:
    """The PostgreSQL server's main process (its backends are its children)."""
    return int((pg.data / "postmaster.pid").read_text().split()[0])


async def uploads(spread: Spread, token: str, clients: int, seconds: float) -> int:
    """Simple uploads of `UPLOAD_BYTES` from `clients` clients for `seconds`; how many."""
    done = 0
    deadline = time.monotonic() + seconds

    async def client(i: int) -> None:
        nonlocal done
        async with spread.clients(token) as next_client:
            for k, http in enumerate(next_client):
                if time.monotonic() >= deadline:
                    return
                params = {"path": f"/up/c{i}-{k}", "uploadType": "media"}
                body = os.urandom(UPLOAD_BYTES)
                r = await http.post("/files/upload", content=body, params=params)
                r.raise_for_status()
                done += 1

    async with trio.open_nursery() as nursery:
        for i in range(clients):
            nursery.start_soon(client, i)
    return done


def upload_costs(
    servers: list[ServerProcess], spread: Spread, token: str, pg: int, s3: int, args: Any
) -> dict[str, float]:
    """Uploads per second and the CPU per upload of each process kind."""
    with servers[0].client(token) as http:
        http.post("/api/v1/mkdir", json={"path": "/up"}).raise_for_status()
    before = (sum(cpu_seconds(s.pid) for s in servers), tree_cpu_seconds(pg), cpu_seconds(s3))
    t0 = time.monotonic()
    done = trio.run(uploads, spread, token, args.upload_clients, args.upload_seconds)
    elapsed = time.monotonic() - t0
    after = (sum(cpu_seconds(s.pid) for s in servers), tree_cpu_seconds(pg), cpu_seconds(s3))
    api, db, store = (b - a for a, b in zip(before, after, strict=True))
    return {"per_second": done / elapsed, "uploads": done, "api_ms": api / done * 1000,
            "pg_ms": db / done * 1000, "s3_ms": store / done * 1000}  # fmt: skip


def change_latency(a: ServerProcess, b: ServerProcess, token: str) -> list[float]:
    """Seconds from sending a commit to A until a long poll held on B answers, per round."""
    out: list[float] = []
    with a.client(token) as on_a, b.client(token) as on_b:
        for i in range(LATENCY_ROUNDS):
            cursor = on_b.get("/api/v1/cursor").json()["cursor"]
            out.append(trio.run(_one_change, on_a, b, token, cursor, i))
    return out


async def _one_change(
    on_a: httpx.Client, b: ServerProcess, token: str, cursor: str, i: int
) -> float:
    answered = 0.0
    async with b.async_client(token) as poller:

        async def poll() -> None:
            nonlocal answered
            r = await poller.get("/api/v1/longpoll", params={"cursor": cursor, "timeout": 60})
            r.raise_for_status()
            answered = time.monotonic()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.sleep(0.2)  # the poll is held by now (the same on every round)
            sent = await trio.to_thread.run_sync(time.monotonic)
            r = await trio.to_thread.run_sync(
                lambda: on_a.post("/api/v1/mkdir", json={"path": f"/lat-{i}-{time.time_ns()}"})
            )
            r.raise_for_status()
    return answered - sent


def measure_shape(
    pg: pg_cluster.Cluster, s3: Any, tmp: Path, servers: int, args: Any
) -> dict[str, Any]:
    endpoint, s3_proc = s3
    name = f"s{servers}"
    with deployment(pg, endpoint, tmp, name, servers) as procs:
        procs[0].add_user("bench", "pw")
        token = procs[0].login("bench", "pw")
        urls = [args.balancer] if args.balancer else [p.url for p in procs]
        cafiles = [Path(args.balancer_cafile)] if args.balancer else [p.cert_path for p in procs]
        spread = Spread(urls, cafiles)
        row: dict[str, Any] = upload_costs(procs, spread, token, postmaster_pid(pg),
                                           s3_proc.pid, args)  # fmt: skip
        lat = sorted(change_latency(procs[0], procs[-1], token))
        row["lat_p50"] = statistics.median(lat)
        row["lat_p99"] = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
        if args.polls:
            balanced = (urls, cafiles) if args.balancer else None
            row["polls"] = hold_polls(procs, token, args.polls, balanced)
        return row


def table(rows: dict[str, dict[str, Any]], args: Any) -> list[tuple[str, ...]]:
    """The printed rows: a measure, then one value per shape."""
    shapes = list(rows.values())

    def line(label: str, fmt: str, get: Any) -> tuple[str, ...]:
        return (label, *(fmt.format(get(r)) for r in shapes))

    out = [
        ("measure", *rows.keys()),
        line(f"simple uploads of 500 KB, {args.upload_clients} clients", "{:.1f}/s",
             lambda r: r["per_second"]),
        line("CPU per upload: API servers", "{:.1f} ms", lambda r: r["api_ms"]),
        line("CPU per upload: PostgreSQL", "{:.1f} ms", lambda r: r["pg_ms"]),
        line("CPU per upload: S3 endpoint (moto)", "{:.1f} ms", lambda r: r["s3_ms"]),
        line("change latency A -> B p50", "{:.0f} ms", lambda r: r["lat_p50"] * 1000),
        line(f"change latency A -> B p99 ({LATENCY_ROUNDS} rounds)", "{:.0f} ms",
             lambda r: r["lat_p99"] * 1000),
    ]  # fmt: skip
    if args.polls:
        out += [
            line(f"{args.polls} long polls held / answered 200", "{}",
                 lambda r: f"{r['polls']['held']:.0f} / {r['polls']['answered_200']:.0f}"),
            line("long polls: RSS per waiter", "{:.1f} KiB", lambda r: r["polls"]["kib_per_poll"]),
            line("long polls: last answer after sending commit", "{:.2f} s",
                 lambda r: r["polls"]["all_answered_s"]),
            line("long polls: server CPU for the wake", "{:.2f} s",
                 lambda r: r["polls"]["wake_cpu_s"]),
        ]  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--polls", type=int, default=10_000, help="idle long polls (0: skip)")
    ap.add_argument("--upload-clients", type=int, default=8)
    ap.add_argument("--upload-seconds", type=float, default=10.0)
    ap.add_argument("--balancer", help="send uploads and long polls to this URL instead")
    ap.add_argument("--balancer-cafile", help="the certificate the balancer presents")
    args = ap.parse_args()
    if args.balancer and not args.balancer_cafile:
        ap.error("--balancer needs --balancer-cafile")
    rows: dict[str, dict[str, Any]] = {}
    os.environ.update(S3_ENV)  # for the admin commands (adduser) too
    pg = pg_cluster.cluster()
    try:
        with tempfile.TemporaryDirectory() as tmp, moto_process() as s3:
            for servers, label in ((1, "one server"), (2, "two servers")):
                rows[label] = measure_shape(pg, s3, Path(tmp), servers, args)
    finally:
        pg_cluster.stop_cluster()
    printed = table(rows, args)
    widths = [max(len(r[i]) for r in printed) for i in range(len(printed[0]))]
    for n, r in enumerate(printed):
        print(" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
        if n == 0:
            print("-|-".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
