"""Server benchmark: idle long polls (RSS, wake-up time) and simple uploads per second.

Run: `.venv/bin/python bench/server_bench.py [--polls 2000 10000] [--upload-seconds 10]`.
Starts a real server (`drive server serve`) on 127.0.0.1 with TLS; clients run in this
process under trio (long polls as raw TLS sockets to keep the client cheap; uploads with
httpx). Prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers.server_proc import ServerProcess

CONFIG = {"rate_per_second": 1e9, "rate_burst": 1_000_000_000, "longpoll_max_open": 100_000}
CONNECT_PARALLEL = 200


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_polls(http: httpx.Client) -> int:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("drive_longpolls_open "):
            return int(line.split()[1])
    return -1


async def hold_polls(srv: ServerProcess, token: str, n: int) -> dict[str, float]:
    ctx = srv.ssl_context()
    host, port = "127.0.0.1", srv.port
    with srv.client(token) as http:
        cursor = http.get("/api/v1/cursor").json()["cursor"]
        rss_before = rss_kib(srv.pid)
    request = (
        f"GET /api/v1/longpoll?cursor={cursor}&timeout=480 HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()
    answered: list[float] = []
    limiter = trio.CapacityLimiter(CONNECT_PARALLEL)
    connected = 0
    all_connected = trio.Event()

    async def one() -> None:
        nonlocal connected
        async with limiter:
            tcp = await trio.open_tcp_stream(host, port)
            stream = trio.SSLStream(tcp, ctx, server_hostname=host)
            await stream.do_handshake()
            await stream.send_all(request)
        connected += 1
        if connected == n:
            all_connected.set()
        data = await stream.receive_some(65536)
        if b"200" in data.split(b"\r\n", 1)[0]:
            answered.append(time.monotonic())
        await stream.aclose()

    t_connect = time.monotonic()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
        with trio.fail_after(300):
            await all_connected.wait()
        with srv.client(token) as http:
            deadline = time.monotonic() + 120
            while open_polls(http) < n and time.monotonic() < deadline:  # noqa: ASYNC110
                await trio.sleep(0.2)  # the gauge is in the server process: poll it
            held = open_polls(http)
            connect_s = time.monotonic() - t_connect
            await trio.sleep(1)
            rss_after = rss_kib(srv.pid)
            t0 = time.monotonic()
            r = http.post("/api/v1/mkdir", json={"path": f"/wake-{n}-{time.time_ns()}"})
            r.raise_for_status()
        with trio.fail_after(120):
            while len(answered) < n:  # noqa: ASYNC110  # counted by n tasks
                await trio.sleep(0.005)
    return {
        "held": held,
        "connect_s": connect_s,
        "rss_before_mib": rss_before / 1024,
        "rss_after_mib": rss_after / 1024,
        "kib_per_poll": (rss_after - rss_before) / n,
        "all_answered_s": max(answered) - t0,
        "first_answered_ms": (min(answered) - t0) * 1000,
    }


async def uploads(srv: ServerProcess, token: str, clients: int, seconds: float) -> dict[str, float]:
    done = 0
    deadline = time.monotonic() + seconds

    async def client(i: int) -> None:
        nonlocal done
        async with srv.async_client(token) as http:
            k = 0
            while time.monotonic() < deadline:
                body = os.urandom(500_000)
                r = await http.post(
                    "/files/upload", params={"path": f"/up/c{i}-{k}", "uploadType": "media"},
                    content=body,
                )  # fmt: skip
                r.raise_for_status()
                done += 1
                k += 1

    with srv.client(token) as http:
        http.post("/api/v1/mkdir", json={"path": "/up"})
    t0 = time.monotonic()
    async with trio.open_nursery() as nursery:
        for i in range(clients):
            nursery.start_soon(client, i)
    elapsed = time.monotonic() - t0
    return {"uploads": done, "seconds": elapsed, "per_second": done / elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--polls", type=int, nargs="*", default=[2000, 10000])
    ap.add_argument("--upload-clients", type=int, default=8)
    ap.add_argument("--upload-seconds", type=float, default=10.0)
    args = ap.parse_args()
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.polls:
            with ServerProcess(Path(tmp) / f"polls{n}", config=CONFIG) as srv:
                srv.add_user("bench", "pw")
                token = srv.login("bench", "pw")
                r = trio.run(hold_polls, srv, token, n)
                rows += [
                    (f"{n} idle long polls: held", f"{r['held']:.0f}"),
                    (f"{n} polls: connect+TLS all", f"{r['connect_s']:.1f} s"),
                    (f"{n} polls: server RSS before/after",
                     f"{r['rss_before_mib']:.0f} / {r['rss_after_mib']:.0f} MiB"),
                    (f"{n} polls: RSS per waiting connection", f"{r['kib_per_poll']:.1f} KiB"),
                    (f"{n} polls: first answer after commit", f"{r['first_answered_ms']:.0f} ms"),
                    (f"{n} polls: all answered after commit", f"{r['all_answered_s']:.2f} s"),
                ]  # fmt: skip
        with ServerProcess(Path(tmp) / "uploads", config=CONFIG) as srv:
            srv.add_user("bench", "pw")
            token = srv.login("bench", "pw")
            u = trio.run(uploads, srv, token, args.upload_clients, args.upload_seconds)
            rows.append(
                (f"simple uploads of 500 KB, {args.upload_clients} clients",
                 f"{u['per_second']:.0f}/s ({u['uploads']} in {u['seconds']:.1f} s)")
            )  # fmt: skip
    width = max(len(k) for k, _ in rows)
    print(f"{'measure'.ljust(width)} | value")
    print(f"{'-' * width}-|------")
    for k, v in rows:
        print(f"{k.ljust(width)} | {v}")


if __name__ == "__main__":
    main()
