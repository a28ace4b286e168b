"""Sync benchmark: our drive against rclone (webdav, vfs-cache full) and rsync, in one run.

    .venv/bin/python bench/sync_bench.py [--size-mib 1024] [--files 1000] [--changes 100]
                                         [--runs 3]

Measures (machines are noisy; compare within one run):
- change latency: write and close a file on device A until `stat` on device B sees it;
- 1 GiB written (`cp`) until durable on the server: `--runs` runs per peer, the peers
  taking turns (a new random file each run), median shown;
- 1,000 files of 4 KiB until all are on the server;
- bytes sent for a 1-byte edit in the middle of the big file and for 100 bytes inserted
  at its start (saved like an editor: new file, renamed over the old one), next to rclone
  (re-sends the whole file) and `rsync --stats` ("Total bytes sent", the delta floor).
Needs fuse3, rclone, rsync and openssl. Prints one table.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.mount_proc import MountProcess, login_home
from tests.helpers.server_proc import ServerProcess

MIB = 1 << 20
SMALL_BYTES = 4096
WAIT_S = 1800.0


def wait_until(probe: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout}s")
        time.sleep(0.01)


def received(srv: ServerProcess) -> float:
    with srv.client() as http:
        text = http.get("/metrics").text
    m = re.search(r"^drive_block_bytes_received_total ([0-9.e+]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


_STATES: dict[Path, Any] = {}


def cp(src: Path, dst: Path) -> None:
    """Copy with coreutils `cp`, as a user would (buffer sized by the target's st_blksize;
    Python's `shutil.copyfile` uses sendfile, which reaches a FUSE file in 64 KiB pieces)."""
    subprocess.run(["cp", str(src), str(dst)], check=True, timeout=600)


def settle() -> None:
    """Flush every dirty page before a timed phase, for both peers alike: otherwise the
    kernel writes back the 1 GiB input file (or the last phase's files) in the middle of
    whichever measurement comes ~30 s after it was written, and its fsyncs wait behind it."""
    os.sync()


def queue_empty(home: Path) -> Callable[[], bool]:
    """A probe of `home`'s upload queue. The state database is opened once per home and
    kept: opening an LMDB environment 100 times a second cost the measured upload CPU."""
    from syncd.state import StateDB

    def probe() -> bool:
        st = _STATES.get(home)
        if st is None:
            st = _STATES[home] = StateDB(home / "state")
        return bool(st.op_count() == 0)

    return probe


def write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        for i in range(0, len(data), 8 * MIB):
            f.write(data[i : i + 8 * MIB])


def edit_one_byte(path: Path, where: int) -> None:
    with open(path, "r+b") as f:
        f.seek(where)
        old = f.read(1)
        f.seek(where)
        f.write(bytes([old[0] ^ 0xFF]))


def editor_insert(path: Path, data: bytes) -> None:
    tmp = path.with_name("." + path.name + ".swp")
    write_file(tmp, os.urandom(100) + data)
    os.rename(tmp, path)


# -- ours --------------------------------------------------------------------------------


class Ours:
    """Our server with two mounts (devices A and B) of one account."""

    def __init__(self, work: Path) -> None:
        self.srv = ServerProcess(work / "srv").start()
        self._mounts: list[MountProcess] = []
        try:
            self.srv.add_user("bench", "pw")
            self.home_a = login_home(self.srv, work / "home-a", "bench", "pw", "devA")
            home_b = login_home(self.srv, work / "home-b", "bench", "pw", "devB")
            for home, mnt in ((self.home_a, work / "mnt-a"), (home_b, work / "mnt-b")):
                self._mounts.append(MountProcess(home, mnt, cache_size="4G").start())
        except BaseException:
            self.close()
            raise
        self.a, self.b = self._mounts

    def latency(self, changes: int) -> list[float]:
        """Seconds from a write and close on A until `stat` on B sees it, per change."""
        target_a, target_b = self.a.mnt / "latency.txt", self.b.mnt / "latency.txt"
        target_a.write_bytes(b"x")
        wait_until(lambda: target_b.exists(), "latency.txt on B", 60)
        lat: list[float] = []
        for i in range(changes):
            n = i + 2
            t0 = time.perf_counter()
            target_a.write_bytes(b"y" * n)
            wait_until(lambda: target_b.stat().st_size == n, "change on B", 60)  # noqa: B023
            lat.append(time.perf_counter() - t0)
        return lat

    def big(self, data: Path, name: str) -> float:
        settle()
        t0 = time.perf_counter()
        cp(data, self.a.mnt / name)
        wait_until(queue_empty(self.home_a), "big file on the server")
        return time.perf_counter() - t0

    def small(self, bodies: list[bytes]) -> float:
        (self.a.mnt / "many").mkdir()
        wait_until(queue_empty(self.home_a), "mkdir")
        settle()
        t0 = time.perf_counter()
        for i, body in enumerate(bodies):
            (self.a.mnt / "many" / f"f{i:05d}").write_bytes(body)
        wait_until(queue_empty(self.home_a), "small files on the server")
        return time.perf_counter() - t0

    def edit1(self, payload: bytes) -> float:
        before = received(self.srv)
        edit_one_byte(self.a.mnt / "big.bin", len(payload) // 2)
        wait_until(queue_empty(self.home_a), "1-byte edit on the server")
        return received(self.srv) - before

    def insert(self, payload: bytes) -> float:
        before = received(self.srv)
        editor_insert(self.a.mnt / "big.bin", payload)
        wait_until(queue_empty(self.home_a), "insert on the server")
        return received(self.srv) - before

    def close(self) -> None:
        for m in reversed(self._mounts):
            m.stop()
        self.srv.stop()


# -- rclone ------------------------------------------------------------------------------


class Rclone:
    """`rclone serve webdav` + `rclone mount` (vfs cache full, write-back 0 s)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.root = work / "webdav"
        self.root.mkdir(parents=True)
        self.mnt = work / "mnt-rclone"
        self.mnt.mkdir()
        key, cert = work / "key.pem", work / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"],
                       check=True, capture_output=True)  # fmt: skip
        port = 18100 + os.getpid() % 1000
        self.rcport = 19100 + os.getpid() % 1000
        self.serve = subprocess.Popen(
            ["rclone", "serve", "webdav", str(self.root), "--addr", f"127.0.0.1:{port}",
             "--cert", str(cert), "--key", str(key)], stderr=subprocess.DEVNULL,
        )  # fmt: skip
        env = {**os.environ, "RCLONE_CONFIG_PEER_TYPE": "webdav",
               "RCLONE_CONFIG_PEER_URL": f"https://127.0.0.1:{port}",
               "RCLONE_CONFIG_PEER_VENDOR": "other"}  # fmt: skip
        time.sleep(1.0)
        self.mount = subprocess.Popen(
            ["rclone", "mount", "peer:", str(self.mnt), "--vfs-cache-mode", "full",
             "--vfs-write-back", "0s", "--cache-dir", str(work / "rclone-cache"),
             "--no-check-certificate", "--rc", "--rc-no-auth", "--rc-addr",
             f"127.0.0.1:{self.rcport}"], env=env, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(lambda: os.path.ismount(self.mnt), "rclone mount", 30)

    def rc(self, command: str) -> dict[str, object]:
        r = httpx.post(f"http://127.0.0.1:{self.rcport}/{command}", json={}, timeout=30)
        r.raise_for_status()
        body: dict[str, object] = r.json()
        return body

    def idle(self) -> bool:
        cache = self.rc("vfs/stats").get("diskCache")
        if not isinstance(cache, dict):
            return True
        return not cache.get("uploadsInProgress") and not cache.get("uploadsQueued")

    def bytes_sent(self) -> float:
        value = self.rc("core/stats").get("bytes", 0)
        return float(value) if isinstance(value, int | float) else 0.0

    def big(self, data: Path, name: str) -> float:
        size = data.stat().st_size
        settle()
        t0 = time.perf_counter()
        cp(data, self.mnt / name)
        wait_until(lambda: (self.root / name).exists()
                   and (self.root / name).stat().st_size == size and self.idle(),
                   "rclone big file")  # fmt: skip
        return time.perf_counter() - t0

    def small(self, bodies: list[bytes]) -> float:
        (self.mnt / "many").mkdir()
        settle()
        t0 = time.perf_counter()
        for i, body in enumerate(bodies):
            (self.mnt / "many" / f"f{i:05d}").write_bytes(body)

        def all_there() -> bool:
            d = self.root / "many"
            have = sum(1 for e in os.scandir(d) if e.stat().st_size == SMALL_BYTES)
            return have == len(bodies) and self.idle()

        wait_until(all_there, "rclone small files")
        return time.perf_counter() - t0

    def edit1(self, payload: bytes) -> float:
        before = self.bytes_sent()
        edit_one_byte(self.mnt / "big.bin", len(payload) // 2)
        time.sleep(0.5)
        wait_until(self.idle, "rclone edit")
        return self.bytes_sent() - before

    def insert(self, payload: bytes) -> float:
        before = self.bytes_sent()
        editor_insert(self.mnt / "big.bin", payload)
        time.sleep(0.5)
        wait_until(self.idle, "rclone insert")
        return self.bytes_sent() - before

    def close(self) -> None:
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-uz", str(self.mnt)], check=False)
        for proc in (self.mount, self.serve):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# -- rsync -------------------------------------------------------------------------------


def rsync_sent(src: Path, dst: Path) -> float:
    done = subprocess.run(["rsync", "-a", "-I", "--no-whole-file", "--stats", f"{src}/",
                           f"{dst}/"], capture_output=True, text=True, check=True)  # fmt: skip
    m = re.search(r"Total bytes sent: ([0-9,]+)", done.stdout)
    return float(m.group(1).replace(",", "")) if m else float("nan")


def bench_rsync(work: Path, data: Path) -> dict[str, float]:
    payload = data.read_bytes()
    src, dst = work / "src", work / "dst"
    src.mkdir(parents=True)
    dst.mkdir()
    shutil.copyfile(data, src / "big.bin")
    shutil.copyfile(data, dst / "big.bin")
    edit_one_byte(src / "big.bin", len(payload) // 2)
    out = {"edit1_bytes": rsync_sent(src, dst)}
    shutil.copyfile(data, dst / "big.bin")
    editor_insert(src / "big.bin", payload)
    out["insert_bytes"] = rsync_sent(src, dst)
    return out


def write_random(path: Path, size_mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(MIB))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3, help="big-file runs per peer, taking turns")
    args = ap.parse_args()
    ours: dict[str, float] = {}
    rcl: dict[str, float] = {}
    big_ours: list[float] = []
    big_rcl: list[float] = []
    with tempfile.TemporaryDirectory(prefix="sync-bench-") as tmp:
        work = Path(tmp)
        # Different random content per run: our server would dedupe a repeated file.
        datas = [work / f"data-{r}.bin" for r in range(args.runs)]
        for data in datas:
            write_random(data, args.size_mib)
        payload = datas[0].read_bytes()
        bodies = [os.urandom(SMALL_BYTES) for _ in range(args.files)]
        o = Ours(work / "ours")
        try:
            rc = Rclone(work / "rclone")
            try:
                lat = sorted(o.latency(args.changes))
                ours["lat_p50"] = statistics.median(lat)
                ours["lat_p99"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
                # The machine's speed drifts within minutes: alternate the peers, and
                # which of them goes first, run by run.
                for r, data in enumerate(datas):
                    name = "big.bin" if r == 0 else f"big-{r}.bin"
                    order: list[tuple[Ours | Rclone, list[float]]] = [(o, big_ours), (rc, big_rcl)]
                    for peer, times in order if r % 2 == 0 else order[::-1]:
                        times.append(peer.big(data, name))
                    print(f"run {r + 1}: ours {big_ours[-1]:.3f} s, rclone {big_rcl[-1]:.3f} s",
                          file=sys.stderr)  # fmt: skip
                ours["small_s"], rcl["small_s"] = o.small(bodies), rc.small(bodies)
                ours["edit1_bytes"], rcl["edit1_bytes"] = o.edit1(payload), rc.edit1(payload)
                ours["insert_bytes"], rcl["insert_bytes"] = o.insert(payload), rc.insert(payload)
            finally:
                rc.close()
        finally:
            o.close()
        ours["big_s"], rcl["big_s"] = statistics.median(big_ours), statistics.median(big_rcl)
        print("ours:", ours, file=sys.stderr)
        print("rclone:", rcl, file=sys.stderr)
        rsy = bench_rsync(work / "rsync", datas[0])
        print("rsync:", rsy, file=sys.stderr)

    def secs(v: float | None) -> str:
        return "-" if v is None else f"{v:10.3f} s"

    def size(v: float | None) -> str:
        return "-" if v is None else f"{v / 1024:10.0f} KiB"

    big_ratio = ours["big_s"] / rcl["big_s"]
    big_met = big_ratio <= 0.7 and ours["big_s"] <= 5
    print(f"\nsync benchmark: {args.size_mib} MiB random file, {args.files} x 4 KiB files, "
          f"{args.changes} changes, {args.runs} big-file runs per peer")  # fmt: skip
    print(f"{'measure':34} {'ours':>14} {'rclone':>14} {'rsync':>14}  goal")
    rows = [
        ("change latency p50 (A write->B stat)", secs(ours["lat_p50"]), "-", "-",
         f"<= 0.3 s: {'met' if ours['lat_p50'] <= 0.3 else 'MISSED'}"),
        ("change latency p99", secs(ours["lat_p99"]), "-", "-",
         f"<= 1 s: {'met' if ours['lat_p99'] <= 1 else 'MISSED'}"),
        (f"{args.size_mib} MiB cp until durable (median)", secs(ours["big_s"]),
         secs(rcl["big_s"]), "-",
         f"ours/rclone {big_ratio:.2f}x, goal <= 0.7x and <= 5 s: "
         f"{'met' if big_met else 'MISSED'}"),
        ("  each run, ours / rclone", "/".join(f"{t:.2f}" for t in big_ours),
         "/".join(f"{t:.2f}" for t in big_rcl), "-", ""),
        (f"{args.files} x 4 KiB until on server", secs(ours["small_s"]), secs(rcl["small_s"]),
         "-", f"goal <= 3.5 s: {'met' if ours['small_s'] <= 3.5 else 'MISSED'}"),
        ("bytes sent, 1-byte edit", size(ours["edit1_bytes"]), size(rcl["edit1_bytes"]),
         size(rsy["edit1_bytes"]), ""),
        ("bytes sent, 100 B insert (editor)", size(ours["insert_bytes"]),
         size(rcl["insert_bytes"]), size(rsy["insert_bytes"]), ""),
    ]  # fmt: skip
    for label, c1, c2, c3, note in rows:
        print(f"{label:34} {c1:>14} {c2:>14} {c3:>14}  {note}")


if __name__ == "__main__":
    main()
