"""Measure idle long polls on running servers: RSS per waiter and wake time after a commit.

The waiters are held by `bench/longpoll_load.py` in a process of its own, so the server's
figures are not mixed with the client's and the client does not steal the server's GIL.
Per-waiter RSS = (server RSS with N waiters - RSS idle) / N, summed over the servers; wake
time = from sending the commit to the last waiter's complete answer (the waiters are woken
before the commit's own 200 is sent, so timing from that 200 would leave out part of the
wake); wake CPU = the servers' CPU from just before the commit until then (less noisy than
the wake time on a busy machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.proc_stats import cpu_seconds, rss_kib
from tests.helpers.server_proc import ServerProcess

LOAD = Path(__file__).resolve().parent / "longpoll_load.py"
HOLD_SECONDS = 300.0


def open_polls(http: httpx.Client) -> int:
    """The server's `drive_longpolls_open` gauge."""
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("drive_longpolls_open "):
            return int(line.split()[1])
    return -1


def hold_polls(
    servers: list[ServerProcess],
    token: str,
    n: int,
    balanced: tuple[list[str], list[Path]] | None = None,
) -> dict[str, float]:
    """Hold `n` long polls spread over `servers` (or over the URLs of `balanced`, with the
    certificates they present: a load balancer), then commit through the first server and
    time the answers."""
    first = servers[0]
    with first.client(token) as http:
        cursor = http.get("/api/v1/cursor").json()["cursor"]
    rss_before = sum(rss_kib(s.pid) for s in servers)
    urls, certs = balanced or ([s.url for s in servers], [s.cert_path for s in servers])
    cafiles = ",".join(str(c) for c in certs)
    load = subprocess.Popen(
        [sys.executable, str(LOAD), ",".join(urls), cafiles, token, cursor, str(n)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert load.stdout is not None
    try:
        t_connect = time.monotonic()
        if load.stdout.readline().strip() != "ready":
            raise RuntimeError("the load generator stopped before holding every poll")
        clients = [s.client(token) for s in servers]
        try:
            deadline = time.monotonic() + HOLD_SECONDS
            while sum(open_polls(c) for c in clients) < n and time.monotonic() < deadline:
                time.sleep(0.2)
            held = sum(open_polls(c) for c in clients)
            connect_s = time.monotonic() - t_connect
            time.sleep(1)
            rss_after = sum(rss_kib(s.pid) for s in servers)
            cpu_before = sum(cpu_seconds(s.pid) for s in servers)
            load_cpu_before = cpu_seconds(load.pid)
            t_commit = time.monotonic()
            r = clients[0].post("/api/v1/mkdir", json={"path": f"/wake-{n}-{time.time_ns()}"})
            r.raise_for_status()
        finally:
            for c in clients:
                c.close()
        result = json.loads(load.stdout.readline())
        wake_cpu = sum(cpu_seconds(s.pid) for s in servers) - cpu_before
        load_cpu = cpu_seconds(load.pid) - load_cpu_before  # is the client the bottleneck?
        load.wait(30)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    return {
        "held": held,
        "answered_200": result["statuses"].get("200", 0),
        "connect_s": connect_s,
        "rss_before_mib": rss_before / 1024,
        "rss_after_mib": rss_after / 1024,
        "kib_per_poll": (rss_after - rss_before) / n,
        "all_answered_s": result["last"] - t_commit,
        "first_answered_ms": (result["first"] - t_commit) * 1000,
        "wake_cpu_s": wake_cpu,
        "load_cpu_s": load_cpu,
    }
