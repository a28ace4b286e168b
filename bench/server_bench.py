"""Server benchmark: idle long polls (RSS, wake-up time) and simple uploads per second.

Run: `.venv/bin/python bench/server_bench.py [--polls 2000 10000] [--upload-seconds 10]`.
Starts a real server (`drive server serve`) on 127.0.0.1 with TLS. The long polls are held
by a load generator in another process (`bench/longpoll_load.py`); uploads run in this
process under trio with httpx. Prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.longpoll_measure import hold_polls
from tests.helpers.server_proc import ServerProcess

CONFIG = {"rate_per_second": 1e9, "rate_burst": 1_000_000_000, "longpoll_max_open": 100_000}


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
                r = hold_polls([srv], token, n)
                rows += [
                    (f"{n} idle long polls: held / answered 200",
                     f"{r['held']:.0f} / {r['answered_200']:.0f}"),
                    (f"{n} polls: connect+TLS all", f"{r['connect_s']:.1f} s"),
                    (f"{n} polls: server RSS before/after",
                     f"{r['rss_before_mib']:.0f} / {r['rss_after_mib']:.0f} MiB"),
                    (f"{n} polls: RSS per waiting connection", f"{r['kib_per_poll']:.1f} KiB"),
                    (f"{n} polls: first answer after commit sent",
                     f"{r['first_answered_ms']:.0f} ms"),
                    (f"{n} polls: all answered after commit sent",
                     f"{r['all_answered_s']:.2f} s"),
                    (f"{n} polls: server CPU for the wake", f"{r['wake_cpu_s']:.2f} s"),
                    (f"{n} polls: load generator CPU meanwhile", f"{r['load_cpu_s']:.2f} s"),
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
