"""Mount benchmark: our drive against rclone (webdav, vfs-cache full) and a trivial fs.

    .venv/bin/python bench/mount_bench.py [--size-mib 1024] [--entries 10000]

Measures, in one run (machines are noisy; compare ratios): cold sequential read, warm
re-read (page cache), re-read after drop_caches (local cache), `ls -l` of N entries cold
and warm. Prints one table with ratios. Needs root (drop_caches), fuse3 and rclone. A new
home's first mount lists every folder in the background (offline-first); the reads are
timed once that is done, and its time is a row of its own.

Reading "warm re-read": these VMs run a DAMON `pageout` scheme (see
/sys/kernel/mm/damon/admin/kdamonds/0; min age 12 x 5 s aggregation) that pages out page
cache left idle for roughly 30-60 s, whatever the free memory. A cold read that takes longer
than that loses its first pages before the re-read, which then goes partly through FUSE
again (checked with `fincore`); keep_cache itself is honoured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.mount_proc import MountProcess, login_home
from tests.helpers.server_proc import ServerProcess

MIB = 1 << 20


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def read_all(path: Path) -> None:
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"], check=True,
                   timeout=600)  # fmt: skip


def ls_l(path: Path) -> None:
    subprocess.run(["ls", "-l", str(path)], check=True, stdout=subprocess.DEVNULL, timeout=600)


def wait_mount(mnt: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{mnt} did not mount")
        time.sleep(0.05)


def unmount(mnt: Path, proc: subprocess.Popen[bytes] | None) -> None:
    unmounted = not os.path.ismount(mnt)
    if not unmounted and subprocess.run(["fusermount3", "-u", str(mnt)], check=False).returncode:
        subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
    if proc is not None:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def bench_ours(work: Path, data: Path, entries: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with ServerProcess(work / "srv") as srv:
        srv.add_user("bench", "pw")
        writer = login_home(srv, work / "home-w", "bench", "pw", "writer")
        with MountProcess(writer, work / "mnt-w", cache_size="4G") as m:
            shutil.copyfile(data, m.mnt / "data")
            (m.mnt / "many").mkdir()
            for i in range(entries):
                (m.mnt / "many" / f"f{i:05d}").touch()
            m.wait_synced(timeout=1800)
        reader = login_home(srv, work / "home-r", "bench", "pw", "reader")
        with MountProcess(reader, work / "mnt-r", cache_size="4G") as m:
            out["mirror"] = timed(lambda: wait_mirrored(m))
            drop_caches()
            out["cold"] = timed(lambda: read_all(m.mnt / "data"))
            out["warm"] = timed(lambda: read_all(m.mnt / "data"))
            drop_caches()
            out["local"] = timed(lambda: read_all(m.mnt / "data"))
            out["ls_cold"] = timed(lambda: ls_l(m.mnt / "many"))
            out["ls_warm"] = timed(lambda: ls_l(m.mnt / "many"))
    return out


def wait_mirrored(m: MountProcess, timeout: float = 600) -> None:
    """Wait for the first mount's background listing of every folder (offline-first): the
    reads are timed after it, as on any later mount (docs/performance.md has both)."""
    deadline = time.monotonic() + timeout
    while True:
        mirror = m.status().get("mirror")
        if isinstance(mirror, dict) and mirror.get("complete"):
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the mount did not finish listing every folder")
        time.sleep(0.05)


def bench_rclone(work: Path, data: Path, entries: int) -> dict[str, float]:
    out: dict[str, float] = {}
    root = work / "webdav"
    (root / "many").mkdir(parents=True)
    shutil.copyfile(data, root / "data")
    for i in range(entries):
        (root / "many" / f"f{i:05d}").touch()
    key, cert = work / "key.pem", work / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True)  # fmt: skip
    port, rcport = 18000 + os.getpid() % 1000, 19000 + os.getpid() % 1000
    serve = subprocess.Popen(["rclone", "serve", "webdav", str(root), "--addr",
                              f"127.0.0.1:{port}", "--cert", str(cert), "--key", str(key)],
                             stderr=subprocess.DEVNULL)  # fmt: skip
    mnt = work / "mnt-rclone"
    mnt.mkdir()
    env = {**os.environ, "RCLONE_CONFIG_PEER_TYPE": "webdav",
           "RCLONE_CONFIG_PEER_URL": f"https://127.0.0.1:{port}",
           "RCLONE_CONFIG_PEER_VENDOR": "other"}  # fmt: skip
    mount = None
    try:
        time.sleep(1.0)
        mount = subprocess.Popen(["rclone", "mount", "peer:", str(mnt), "--vfs-cache-mode", "full",
                                  "--cache-dir", str(work / "rclone-cache"),
                                  "--no-check-certificate", "--rc", "--rc-no-auth", "--rc-addr",
                                  f"127.0.0.1:{rcport}"], env=env,
                                 stderr=subprocess.DEVNULL)  # fmt: skip
        wait_mount(mnt, mount)
        drop_caches()
        out["cold"] = timed(lambda: read_all(mnt / "data"))
        out["warm"] = timed(lambda: read_all(mnt / "data"))
        drop_caches()
        out["local"] = timed(lambda: read_all(mnt / "data"))
        out["ls_cold"] = timed(lambda: ls_l(mnt / "many"))
        out["ls_warm"] = timed(lambda: ls_l(mnt / "many"))
    finally:
        unmount(mnt, mount)
        serve.send_signal(signal.SIGTERM)
        serve.wait(15)
    return out


def bench_trivial(work: Path, size: int, entries: int) -> dict[str, float]:
    out: dict[str, float] = {}
    mnt = work / "mnt-trivial"
    mnt.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("trivial_fs.py")),
                             str(mnt), str(size), str(entries)])  # fmt: skip
    try:
        wait_mount(mnt, proc, timeout=120)
        drop_caches()
        out["cold"] = timed(lambda: read_all(mnt / "data"))
        out["warm"] = timed(lambda: read_all(mnt / "data"))
        out["ls_cold"] = timed(lambda: ls_l(mnt / "many"))
        out["ls_warm"] = timed(lambda: ls_l(mnt / "many"))
    finally:
        unmount(mnt, proc)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--entries", type=int, default=10_000)
    args = ap.parse_args()
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="mount-bench-") as tmp:
        work = Path(tmp)
        data = work / "data.bin"
        with open(data, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MIB))
        ours = bench_ours(work / "ours", data, args.entries)
        print("ours:", ours, file=sys.stderr)
        rcl = bench_rclone(work / "rclone", data, args.entries)
        print("rclone:", rcl, file=sys.stderr)
        triv = bench_trivial(work / "trivial", size, args.entries)
        print("trivial:", triv, file=sys.stderr)
    mib = size / MIB

    def rate(t: float) -> str:
        return f"{mib / t:8.0f} MiB/s"

    print(f"\nmount benchmark: {args.size_mib} MiB random file, ls -l of {args.entries} entries")
    print(f"{'measure':28} {'ours':>14} {'rclone':>14} {'trivial fs':>14}  ratio / goal")
    rows = [
        ("cold sequential read", "cold", True, f"ours/rclone {rcl['cold'] / ours['cold']:.2f}x"
         " (goal >= 1.5)"),
        ("warm re-read", "warm", True, f"ours/trivial {triv['warm'] / ours['warm']:.2f}x"
         " (goal >= 0.8)"),
        ("re-read after drop_caches", "local", True, f"ours {mib / ours['local'] / 1024:.2f}"
         " GiB/s (goal >= 1)"),
        ("ls -l cold", "ls_cold", False, f"ours/rclone {ours['ls_cold'] / rcl['ls_cold']:.2f}"
         " (goal <= 0.5)"),
        ("ls -l warm", "ls_warm", False, f"ours/trivial {ours['ls_warm'] / triv['ls_warm']:.2f}"
         " (goal <= 2)"),
        ("first mount lists all (bg)", "mirror", False, "before the reads (offline-first)"),
    ]  # fmt: skip
    for label, key, is_rate, note in rows:
        cells = []
        for res in (ours, rcl, triv):
            t = res.get(key)
            cells.append("-" if t is None else rate(t) if is_rate else f"{t:10.3f} s")
        print(f"{label:28} {cells[0]:>14} {cells[1]:>14} {cells[2]:>14}  {note}")


if __name__ == "__main__":
    main()
