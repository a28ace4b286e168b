"""Randomized multi-device convergence of the whole drive, against real processes.

Three devices (homes) of one account, each a real FUSE mount in a subprocess that talks to
the server through its own `TcpProxy` (so the harness can cut it: offline spells). A plan of
N operations is drawn from `random.Random(seed)` over a small namespace (names a, b, c in the
root and in folders x, y, x/z, y/z) so that devices collide often: writes, appends,
truncates, truncate+extend, renames (plain and over a file), editor saves (temporary file
renamed over), unlinks, mkdir, rmdir, rm -r, folder renames, moves into folders, pauses,
offline spells and kill -9 of a mount (restarted on the same home). The plan depends only on
the seed; what each operation finds (and whether it fails with an OSError) depends on timing.

Every write whose `close()` returned 0 is *acknowledged* and recorded (device, path, inode,
SHA-256). At the end every proxy is restored and the run waits (with a deadline) until every
device has nothing pending or parked and every device's tree (path -> sha256, folders
included) equals every other's and the server's. Then each acknowledged content is looked
for on the server: live files and their revisions (HTTP API), the trash (the API lists trash
items but cannot show a trashed file's revisions, so those are read from the server's
database, read-only), and the change journal (`/api/v1/delta`) tells whether a content that
is nowhere was ever committed. A write that the same device changed or removed again later
may legitimately never reach the server (the mount coalesces queued commits of a file), so
only the *final* writes of each device's file objects must be found; the others are counted.

Used by tests/sync/test_sync_convergence.py (short seeded runs) and by `scripts/convergence`
(long runs: `scripts/convergence --seed S --ops N --seeds K`). On failure the report holds
the seed, the numbered operation log, every tree, the statuses and the mounts' log tails.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.mount_proc import MountProcess, drive
from tests.helpers.server_proc import ServerProcess, drive_command
from tests.helpers.tcp_proxy import TcpProxy

DEVICES = ("devA", "devB", "devC")
DIRS = ("x", "y", "x/z", "y/z")
PARENTS = ("", *DIRS)
NAMES = ("a", "b", "c")
MAX_FILE_BYTES = 200_000
"""Below the chunker's 256 KiB minimum: every file is one block, so `content_hash` is exact."""
SYNC_ENV = {"DRIVE_FETCH_TIMEOUT": "3"}
OP_SECONDS = 60.0
"""An operation on a mount that takes longer than this is a hang (a failure)."""
MAX_SPELL_OPS = 25
"""An offline spell ends after at most this many operations."""
WEIGHTS = {
    "write": 16,
    "append": 7,
    "truncate": 4,
    "trunc_extend": 4,
    "rename": 8,
    "move_into": 4,
    "sed": 6,
    "unlink": 5,
    "unlink_any": 2,
    "mkdir": 6,
    "rmdir": 2,
    "rm_r": 2,
    "dir_rename": 2,
    "pause": 10,
    "cut": 2,
    "restore": 6,
    "kill": 1,
}
LOG_TAIL_CHARS = 6000
PARKED_GIVE_UP_S = 75.0
"""A change parked this long has been retried (every 60 s) and refused again: give up."""


# -- the plan: a pure function of (seed, ops) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Op:
    """One planned operation (`dev` indexes DEVICES)."""

    i: int
    kind: str
    dev: int
    path: str = ""
    dst: str = ""
    size: int = 0
    n: int = 0
    fsync: bool = False

    def describe(self) -> str:
        d = DEVICES[self.dev]
        k = self.kind
        mkdir_p = "mkdir -p, " if self.n and k in ("write", "rename", "move_into") else ""
        if k in ("write", "append"):
            fsync = ", fsync" if self.fsync else ""
            return f"{d} {k} {self.path} ({mkdir_p}{self.size} B{fsync})"
        if k == "truncate":
            return f"{d} truncate {self.path} to {self.n / 10:.1f}%"
        if k == "trunc_extend":
            return f"{d} truncate {self.path} to {self.n / 10:.1f}% then write at +{self.size}"
        if k in ("rename", "move_into", "dir_rename"):
            return f"{d} {k} {self.path} -> {self.dst}{' (mkdir -p)' if mkdir_p else ''}"
        if k == "unlink_any":
            return f"{d} unlink entry #{self.n} of /{self.path}"
        if k == "pause":
            return f"pause {self.n} ms"
        if k in ("cut", "restore", "kill"):
            return f"{d} {k}"
        return f"{d} {k} {self.path}"


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _random_file(rng: random.Random) -> str:
    parent = rng.choice(PARENTS)
    name = rng.choice(NAMES)
    return f"{parent}/{name}" if parent else name


def _random_size(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.6:
        return rng.randrange(0, 2000)
    if r < 0.9:
        return rng.randrange(2000, 30_000)
    return rng.randrange(30_000, 190_000)


def make_plan(seed: int, n_ops: int, exclude: frozenset[str] = frozenset()) -> list[Op]:
    """The operations of a run; at least one offline spell and one kill -9 when n_ops >= 8.
    `exclude` leaves kinds of operations out (to look past a known bug; another plan)."""
    rng = random.Random(seed)
    n_dev = len(DEVICES)
    cut_since: dict[int, int] = {}
    spells = kills = 0
    plan: list[Op] = []
    kinds = list(WEIGHTS)
    for i in range(n_ops):
        overdue = [d for d, since in sorted(cut_since.items()) if i - since >= MAX_SPELL_OPS]
        if overdue:
            kind = "restore"
        elif spells == 0 and i >= n_ops // 4 and "cut" not in exclude:
            kind = "cut"
        elif kills == 0 and i >= n_ops // 2 and "kill" not in exclude:
            kind = "kill"
        else:
            weights = [0.0 if k in exclude else float(WEIGHTS[k]) for k in kinds]
            weights[kinds.index("restore")] = WEIGHTS["restore"] if cut_since else 0.0
            if len(cut_since) >= n_dev - 1:
                weights[kinds.index("cut")] = 0.0
            kind = rng.choices(kinds, weights)[0]
        dev = rng.randrange(n_dev)
        if kind == "restore":
            dev = overdue[0] if overdue else rng.choice(sorted(cut_since))
            del cut_since[dev]
            plan.append(Op(i, kind, dev))
        elif kind == "cut":
            dev = rng.choice([d for d in range(n_dev) if d not in cut_since])
            cut_since[dev] = i
            spells += 1
            plan.append(Op(i, kind, dev))
        elif kind == "kill":
            kills += 1
            plan.append(Op(i, kind, dev))
        elif kind == "write":
            plan.append(
                Op(
                    i,
                    kind,
                    dev,
                    _random_file(rng),
                    size=_random_size(rng),
                    n=int(rng.random() < 0.5),
                    fsync=rng.random() < 0.3,
                )
            )
        elif kind == "append":
            plan.append(
                Op(
                    i,
                    kind,
                    dev,
                    _random_file(rng),
                    size=rng.choice([40, 400, 4000, 20_000]),
                    fsync=rng.random() < 0.3,
                )
            )
        elif kind == "truncate":
            plan.append(Op(i, kind, dev, _random_file(rng), n=rng.randrange(0, 1000)))
        elif kind == "trunc_extend":
            plan.append(
                Op(
                    i,
                    kind,
                    dev,
                    _random_file(rng),
                    n=rng.randrange(0, 1000),
                    size=rng.randrange(1, 60_000),
                )
            )
        elif kind == "rename":
            src, dst = _random_file(rng), _random_file(rng)
            plan.append(Op(i, kind, dev, src, dst, n=int(rng.random() < 0.3)))
        elif kind == "move_into":
            src = _random_file(rng)
            dst_parent = rng.choice([p for p in PARENTS if p != _parent(src)])
            name = src.rpartition("/")[2]
            dst = f"{dst_parent}/{name}" if dst_parent else name
            plan.append(Op(i, kind, dev, src, dst, n=int(rng.random() < 0.3)))
        elif kind in ("sed", "unlink"):
            plan.append(Op(i, kind, dev, _random_file(rng)))
        elif kind == "unlink_any":
            plan.append(Op(i, kind, dev, rng.choice(PARENTS), n=rng.randrange(1000)))
        elif kind in ("mkdir", "rmdir", "rm_r"):
            plan.append(Op(i, kind, dev, rng.choice(DIRS)))
        elif kind == "dir_rename":
            src = rng.choice(DIRS)
            dst = rng.choice([d for d in DIRS if d != src and not d.startswith(src + "/")])
            plan.append(Op(i, kind, dev, src, dst))
        elif kind == "pause":
            plan.append(Op(i, kind, dev, n=rng.choice([0, 50, 200, 500, 1000, 2000])))
        else:  # pragma: no cover - WEIGHTS and this chain list the same kinds
            raise AssertionError(kind)
    return plan


def content(seed: int, op: int, dev: str, size: int, tag: str) -> bytes:
    """Unique bytes (the header names seed, operation and device), at least a header long."""
    head = f"[{tag} seed={seed} op={op} dev={dev}]\n".encode()
    if size <= len(head):
        return head
    return (head * (size // len(head) + 1))[:size]


# -- what happened ----------------------------------------------------------------------------


@dataclass(slots=True)
class Ack:
    """An acknowledged write: `close()` returned 0 with these bytes in the file."""

    op: int
    dev: str
    path: str
    ino: int
    sha: str
    size: int
    where: list[str] = field(default_factory=list)
    superseded_by: int | None = None
    """The later operation of the same device that changed or removed this file object."""


@dataclass(slots=True)
class Outcome:
    """What one operation did (for the log)."""

    ok: bool = True
    note: str = ""
    touched: set[int] = field(default_factory=set)
    """Inodes of this device whose content this operation replaced or removed."""
    acks: list[Ack] = field(default_factory=list)
    t: float = 0.0
    wall: float = 0.0
    seconds: float = 0.0


@dataclass(slots=True)
class Result:
    """One seed's verdict and figures."""

    seed: int
    ok: bool = False
    ops_done: int = 0
    acked: int = 0
    must_find: int = 0
    found_live: int = 0
    found_history: int = 0
    found_trash: int = 0
    coalesced: int = 0
    spells: int = 0
    kills: int = 0
    seconds: float = 0.0
    converge_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    report: str = ""
    log: str = ""

    def summary(self) -> str:
        verdict = "OK" if self.ok else "FAIL"
        return (
            f"seed {self.seed}: {verdict}  ops={self.ops_done} acked={self.acked} "
            f"must-find={self.must_find} (live {self.found_live}, history "
            f"{self.found_history}, trash {self.found_trash}) coalesced={self.coalesced} "
            f"offline-spells={self.spells} kills={self.kills} "
            f"converged-in={self.converge_seconds:.1f}s seconds={self.seconds:.1f}"
        )


# -- file-system helpers ------------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_all(fd: int) -> bytes:
    parts: list[bytes] = []
    off = 0
    while True:
        chunk = os.pread(fd, 1 << 20, off)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        off += len(chunk)


def _write_all(fd: int, data: bytes, off: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        view = view[n:]
        off += n


def local_tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of the content, folders as "path/" -> "dir"."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
        rel = Path(dirpath).relative_to(root)
        for d in dirnames:
            out[(rel / d).as_posix() + "/"] = "dir"
        for name in filenames:
            p = Path(dirpath) / name
            out[(rel / name).as_posix()] = (
                f"symlink:{os.readlink(p)}" if p.is_symlink() else _sha(p.read_bytes())
            )
    return out


def _raise(exc: OSError) -> None:
    raise exc


def _mkdir_p(mnt: Path, path: str) -> None:
    """Create the folders above `path` (like `mkdir -p "$(dirname path)"`)."""
    parent = _parent(path)
    if parent:
        os.makedirs(mnt / parent, exist_ok=True)


def _remove_tree(path: Path, removed: set[int]) -> None:
    """`rm -r path`, adding the inode of each file to `removed` as it goes: the change feed
    may move entries in meanwhile (a walk made before the removal missed a file moved in
    after it, then removed with the rest: convergence seed 1747)."""
    with os.scandir(path) as entries:
        names = [e.name for e in entries]
    for name in names:
        p = path / name
        st = os.lstat(p)
        if stat.S_ISDIR(st.st_mode):
            _remove_tree(p, removed)
        else:
            os.unlink(p)
            removed.add(st.st_ino)
    os.rmdir(path)


def _diff(a: dict[str, str], b: dict[str, str]) -> str:
    lines = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            lines.append(f"    {k}: {str(a.get(k))[:12]} vs {str(b.get(k))[:12]}")
    return "\n".join(lines)


def _fmt_tree(t: dict[str, str] | None) -> str:
    if t is None:
        return "    (unreadable)"
    return "\n".join(f"    {k}  {v[:16]}" for k, v in sorted(t.items())) or "    (empty)"


# -- one device ---------------------------------------------------------------------------------


class Device:
    """One home, its proxy and its mount."""

    def __init__(self, name: str, root: Path, server: ServerProcess) -> None:
        self.name = name
        self.proxy = TcpProxy(server.port)
        self.home = root / f"home-{name}"
        self.mount = MountProcess(self.home, root / f"mnt-{name}", env=SYNC_ENV)
        self.cut = False

    @property
    def mnt(self) -> Path:
        return self.mount.mnt

    def login(self, server: ServerProcess, user: str, password: str) -> None:
        args = [
            "--home",
            str(self.home),
            "login",
            self.proxy.url,
            "--user",
            user,
            "--password-stdin",
            "--trust-fingerprint",
            server.fingerprint,
            "--device",
            self.name,
        ]
        done = subprocess.run(
            drive_command(*args),
            input=password + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"drive login ({self.name}) failed: {done.stderr.strip()}")

    def status(self) -> dict[str, Any]:
        done = drive(self.home, "status", "--json", timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"drive status ({self.name}): {done.stderr.strip()}")
        body: dict[str, Any] = json.loads(done.stdout)
        return body

    def token(self) -> str:
        done = drive(self.home, "auth", "token")
        if done.returncode != 0:
            raise RuntimeError(f"drive auth token ({self.name}): {done.stderr.strip()}")
        return done.stdout.strip()

    def alive(self) -> bool:
        return self.mount.proc is not None and self.mount.proc.poll() is None

    def dump_stacks(self) -> None:
        """Have the mount write every thread's Python stack into its log (SIGUSR1 is the
        mount's faulthandler signal): what a hung operation was waiting on, or spinning in."""
        proc = self.mount.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)

    def kill9(self) -> None:
        """SIGKILL the mount process and clear its dead mountpoint (lazily)."""
        proc = self.mount.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(15)
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True, check=False)

    def close(self) -> None:
        self.proxy.restore()
        try:
            self.mount.stop()
        except (RuntimeError, OSError, subprocess.SubprocessError):
            self.kill9()
        self.proxy.close()


# -- the run ------------------------------------------------------------------------------------


class Run:
    """One seed against `server` as `user` (a fresh account), homes and mounts under `root`."""

    def __init__(
        self,
        server: ServerProcess,
        root: Path,
        seed: int,
        n_ops: int,
        user: str,
        password: str,
        *,
        converge_seconds: float = 120.0,
        progress: Callable[[str], None] | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> None:
        self.server = server
        self.exclude = exclude
        self.root = root
        self.seed = seed
        self.user = user
        self.password = password
        self.plan = make_plan(seed, n_ops, exclude)
        self.converge_seconds = converge_seconds
        self.progress = progress
        self.devices: list[Device] = []
        self.log: list[tuple[Op, Outcome]] = []
        self.acks: list[Ack] = []
        self.result = Result(seed)
        self.t0 = 0.0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convergence-op")
        self._token = ""
        self._abort = False
        self._by_id: dict[int, list[dict[str, Any]]] = {}

    # -- lifecycle ----------------------------------------------------------------------

    def execute(self) -> Result:
        self.t0 = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            for name in DEVICES:
                dev = Device(name, self.root, self.server)
                self.devices.append(dev)
                dev.login(self.server, self.user, self.password)
                dev.mount.start()
            self._token = self.devices[0].token()
            self._run_ops()
            if not self._abort:
                self._finish()
        except Exception as exc:  # noqa: BLE001 - any harness or product error is reported
            self.result.failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            self.result.seconds = time.monotonic() - self.t0
            self.result.acked = len(self.acks)
            self.result.ok = not self.result.failures
            self.result.log = self.op_log()
            if not self.result.ok:
                self.result.report = self._report()
            for dev in self.devices:
                dev.close()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self.result.seconds = time.monotonic() - self.t0
        return self.result

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    # -- operations -----------------------------------------------------------------------

    def _run_ops(self) -> None:
        for op in self.plan:
            out = Outcome(t=time.monotonic() - self.t0, wall=time.time())
            dev = self.devices[op.dev]
            fut = self._pool.submit(self._do, op, dev, out)
            try:
                fut.result(timeout=OP_SECONDS)
            except FutureTimeout:
                out.ok = False
                out.note = f" HUNG for more than {OP_SECONDS:.0f}s"
                self.result.failures.append(f"op {op.i} ({op.describe()}) hung")
                self._abort = True
                dev.dump_stacks()
                dev.kill9()  # unblocks the system call (ENOTCONN)
            except OSError as exc:
                out.ok = False
                out.note = (
                    f" {errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror}{out.note}"
                )
            out.seconds = time.monotonic() - self.t0 - out.t
            self.log.append((op, out))
            self.result.ops_done += 1
            for ack in out.acks:
                self.acks.append(ack)
            if self._abort:
                return
            for d in self.devices:
                if not d.alive():
                    self.result.failures.append(
                        f"the mount of {d.name} died (rc={d.mount.proc and d.mount.proc.poll()})"
                        f" after op {op.i}"
                    )
                    self._abort = True
                    return
            if op.i % 50 == 49:
                self._say(f"seed {self.seed}: {op.i + 1}/{len(self.plan)} ops")

    def _do(self, op: Op, dev: Device, out: Outcome) -> None:
        getattr(self, f"_op_{op.kind}")(op, dev, out)

    def _ack(self, op: Op, dev: Device, out: Outcome, path: str, fd: int, data: bytes,
             ours: list[tuple[int, bytes]] | None = None) -> None:  # fmt: skip
        """Called just before `close(fd)`: checks the file reads back what was written and
        records what it holds as acknowledged.

        `ours`: the (offset, bytes) this operation wrote, when it changed a file it had read
        first. Another device's version may land between that read and the write (the file
        was clean: a concurrent writer, as on any shared file); then the file must hold our
        bytes where we wrote them and have the size we made, and what it holds is what the
        close acknowledges. Anything else is a failure."""
        back = _read_all(fd)
        ino = os.fstat(fd).st_ino
        if back != data:
            interleaved = (
                ours is not None
                and len(back) == len(data)
                and all(back[off : off + len(b)] == b for off, b in ours)
            )
            out.note += (
                f" {'REMOTE UPDATE INTERLEAVED' if interleaved else 'READBACK MISMATCH'}"
                f" before close: expected {len(data)} B {_sha(data)[:12]}, read {len(back)} B"
                f" {_sha(back)[:12]}"
            )
            if not interleaved:
                self.result.failures.append(
                    f"op {op.i} ({op.describe()}): the file did not read back what was written"
                )
            data = back
        out.acks.append(Ack(op.i, dev.name, path, ino, _sha(data), len(data)))
        out.touched.add(ino)

    def _close(self, fd: int, out: Outcome) -> None:
        """Close; a failing close un-acknowledges the write."""
        try:
            os.close(fd)
        except OSError:
            out.acks.clear()
            raise

    def _op_write(self, op: Op, dev: Device, out: Outcome) -> None:
        data = content(self.seed, op.i, dev.name, op.size, "write")
        if op.n:
            _mkdir_p(dev.mnt, op.path)
        fd = os.open(dev.mnt / op.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            out.touched.add(os.fstat(fd).st_ino)
            _write_all(fd, data, 0)
            if op.fsync:
                os.fsync(fd)
            self._ack(op, dev, out, op.path, fd, data)
        except BaseException:
            os.close(fd)
            raise
        self._close(fd, out)

    def _modify(
        self,
        op: Op,
        dev: Device,
        out: Outcome,
        change: Callable[[int, bytes, list[tuple[int, bytes]]], bytes],
    ) -> None:
        fd = os.open(dev.mnt / op.path, os.O_RDWR)
        try:
            out.touched.add(os.fstat(fd).st_ino)
            old = _read_all(fd)
            ours: list[tuple[int, bytes]] = []
            new = change(fd, old, ours)
            if op.fsync:
                os.fsync(fd)
            self._ack(op, dev, out, op.path, fd, new, ours)
        except BaseException:
            os.close(fd)
            raise
        self._close(fd, out)

    def _op_append(self, op: Op, dev: Device, out: Outcome) -> None:
        def change(fd: int, old: bytes, ours: list[tuple[int, bytes]]) -> bytes:
            chunk = content(self.seed, op.i, dev.name, op.size, "append")
            keep = min(len(old), MAX_FILE_BYTES - len(chunk))
            if keep < len(old):
                os.ftruncate(fd, keep)
                out.note += f" (cut to {keep} B first)"
            _write_all(fd, chunk, keep)
            ours.append((keep, chunk))
            return old[:keep] + chunk

        self._modify(op, dev, out, change)

    def _op_truncate(self, op: Op, dev: Device, out: Outcome) -> None:
        def change(fd: int, old: bytes, ours: list[tuple[int, bytes]]) -> bytes:
            size = len(old) * op.n // 1000
            os.ftruncate(fd, size)
            out.note += f" ({len(old)} -> {size} B)"
            return old[:size]

        self._modify(op, dev, out, change)

    def _op_trunc_extend(self, op: Op, dev: Device, out: Outcome) -> None:
        def change(fd: int, old: bytes, ours: list[tuple[int, bytes]]) -> bytes:
            size = len(old) * op.n // 1000
            marker = content(self.seed, op.i, dev.name, 0, "extend")
            at = min(size + op.size, MAX_FILE_BYTES - len(marker))
            os.ftruncate(fd, size)
            _write_all(fd, marker, at)
            ours.append((at, marker))
            out.note += f" ({len(old)} -> {size} B, marker at {at})"
            return old[:size] + bytes(at - size) + marker

        self._modify(op, dev, out, change)

    def _op_sed(self, op: Op, dev: Device, out: Outcome) -> None:
        """An editor's save: read, write a temporary file beside it, rename it over."""
        target = dev.mnt / op.path
        old = target.read_bytes()
        head = content(self.seed, op.i, dev.name, 0, "sed")
        data = head + old[: MAX_FILE_BYTES - len(head)][len(head) :]
        tmp_rel = f"{_parent(op.path)}/.sed{op.i}".lstrip("/")
        fd = os.open(dev.mnt / tmp_rel, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, data, 0)
            self._ack(op, dev, out, tmp_rel, fd, data)
        except BaseException:
            os.close(fd)
            raise
        self._close(fd, out)
        out.touched.discard(out.acks[0].ino)
        with contextlib.suppress(OSError):
            out.touched.add(os.lstat(target).st_ino)
        os.rename(dev.mnt / tmp_rel, target)
        out.acks[0].path = op.path
        out.note += f" (via {tmp_rel})"

    def _rename(self, op: Op, dev: Device, out: Outcome) -> None:
        src, dst = dev.mnt / op.path, dev.mnt / op.dst
        if op.n and op.kind != "dir_rename":
            _mkdir_p(dev.mnt, op.dst)
        try:
            st = os.lstat(dst)
        except OSError:
            st = None
        os.rename(src, dst)
        if st is not None and op.path != op.dst:
            out.note += " (over an existing entry)"
            out.touched.add(st.st_ino)

    _op_rename = _rename
    _op_move_into = _rename
    _op_dir_rename = _rename

    def _op_unlink(self, op: Op, dev: Device, out: Outcome) -> None:
        p = dev.mnt / op.path
        ino = os.lstat(p).st_ino
        os.unlink(p)
        out.touched.add(ino)

    def _op_unlink_any(self, op: Op, dev: Device, out: Outcome) -> None:
        d = dev.mnt / op.path
        files = sorted(e.name for e in os.scandir(d) if e.is_file(follow_symlinks=False))
        if not files:
            raise OSError(errno.ENOENT, "no file to unlink")
        name = files[op.n % len(files)]
        out.note += f" ({name})"
        ino = os.lstat(d / name).st_ino
        os.unlink(d / name)
        out.touched.add(ino)

    def _op_mkdir(self, op: Op, dev: Device, out: Outcome) -> None:
        os.mkdir(dev.mnt / op.path)

    def _op_rmdir(self, op: Op, dev: Device, out: Outcome) -> None:
        os.rmdir(dev.mnt / op.path)

    def _op_rm_r(self, op: Op, dev: Device, out: Outcome) -> None:
        p = dev.mnt / op.path
        if not p.is_dir():
            raise OSError(errno.ENOENT, "no such folder")
        _remove_tree(p, out.touched)

    def _op_pause(self, op: Op, dev: Device, out: Outcome) -> None:
        time.sleep(op.n / 1000)

    def _op_cut(self, op: Op, dev: Device, out: Outcome) -> None:
        dev.proxy.cut()
        dev.cut = True
        self.result.spells += 1

    def _op_restore(self, op: Op, dev: Device, out: Outcome) -> None:
        dev.proxy.restore()
        dev.cut = False

    def _op_kill(self, op: Op, dev: Device, out: Outcome) -> None:
        dev.kill9()
        self.result.kills += 1
        dev.mount.start()

    # -- convergence ----------------------------------------------------------------------

    def _server_get(self, path: str, **params: Any) -> Any:
        with self.server.client(self._token) as http:
            r = http.get(path, params=params)
            r.raise_for_status()
            return r.json()

    def server_tree(self) -> dict[str, str]:
        """The server's live tree, in `local_tree`'s format."""
        out: dict[str, str] = {}
        todo = ["/"]
        with self.server.client(self._token) as http:
            while todo:
                d = todo.pop()
                after: str | None = None
                while True:
                    params: dict[str, Any] = {"path": d, "limit": 5000}
                    if after is not None:
                        params["after"] = after
                    r = http.get("/api/v1/list", params=params)
                    r.raise_for_status()
                    body = r.json()
                    for e in body["entries"]:
                        rel = e["path"].lstrip("/")
                        if e["kind"] == "dir":
                            out[rel + "/"] = "dir"
                            todo.append(e["path"])
                        elif e["kind"] == "symlink":
                            out[rel] = f"symlink:{e['target']}"
                        elif e["content_hash"]:
                            out[rel] = e["content_hash"]
                        else:
                            dl = http.get("/files/download", params={"path": e["path"]})
                            dl.raise_for_status()
                            out[rel] = _sha(dl.content)
                    after = body["next"]
                    if after is None:
                        break
        return out

    def _snapshot(
        self,
    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str] | None], dict[str, str]]:
        statuses = {d.name: d.status() for d in self.devices}
        trees: dict[str, dict[str, str] | None] = {}
        for d in self.devices:
            fut = self._pool.submit(local_tree, d.mnt)
            try:
                trees[d.name] = fut.result(timeout=OP_SECONDS)
            except OSError:
                trees[d.name] = None
        return statuses, trees, self.server_tree()

    def _finish(self) -> None:
        for d in self.devices:
            d.proxy.restore()
            d.cut = False
        t_start = time.monotonic()
        deadline = t_start + self.converge_seconds
        why = "not checked"
        parked_since: float | None = None
        while True:
            for d in self.devices:
                if not d.alive():
                    self.result.failures.append(f"the mount of {d.name} died while converging")
                    return
            statuses, trees, srv = self._snapshot()
            why = self._not_converged(statuses, trees, srv)
            if not why:
                break
            now = time.monotonic()
            if any(st.get("parked") for st in statuses.values()):
                parked_since = now if parked_since is None else parked_since
            else:
                parked_since = None
            stuck = parked_since is not None and now - parked_since > PARKED_GIVE_UP_S
            if now > deadline or stuck:
                waited = f"{now - t_start:.0f}s" + (" (parked past a retry)" if stuck else "")
                self.result.failures.append(f"no convergence within {waited}: {why}")
                break
            time.sleep(1.0)
        self.result.converge_seconds = time.monotonic() - t_start
        self._check_acks(srv)

    def _not_converged(
        self,
        statuses: dict[str, dict[str, Any]],
        trees: dict[str, dict[str, str] | None],
        srv: dict[str, str],
    ) -> str:
        reasons = []
        for name, st in statuses.items():
            if st.get("pending"):
                reasons.append(f"{name} has {st['pending']} pending")
            if st.get("parked"):
                reasons.append(f"{name} has parked changes: {st['parked']}")
        for name, t in trees.items():
            if t is None:
                reasons.append(f"{name}'s tree is unreadable")
            elif t != srv:
                reasons.append(f"{name}'s tree differs from the server's:\n{_diff(t, srv)}")
        return "; ".join(reasons)

    # -- the acknowledged writes ------------------------------------------------------------

    def _server_contents(self, srv: dict[str, str]) -> dict[str, list[str]]:
        """sha256 -> where on the server: live files, their revisions (API) and the trash
        (database: the API cannot list a trashed file's revisions)."""
        where: dict[str, list[str]] = {}
        with self.server.client(self._token) as http:
            for rel, h in srv.items():
                if h == "dir" or h.startswith("symlink:"):
                    continue
                where.setdefault(h, []).append(f"live /{rel}")
                r = http.get("/api/v1/revisions", params={"path": "/" + rel, "limit": 10000})
                r.raise_for_status()
                for rev in r.json()["revisions"]:
                    rh = rev["content_hash"]
                    if rh is None:
                        dl = http.get(
                            "/files/download",
                            params={"path": "/" + rel, "revision": rev["revision"]},
                        )
                        dl.raise_for_status()
                        rh = _sha(dl.content)
                    where.setdefault(rh, []).append(f"history /{rel} rev {rev['revision']}")
        for h, what in self._trash_contents().items():
            where.setdefault(h, []).extend(what)
        return where

    def _db(self) -> sqlite3.Connection:
        db = self.server.data_dir / "drive.db"
        return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)

    def _trash_contents(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        conn = self._db()
        try:
            (ns,) = conn.execute(
                "SELECT root_ns FROM users WHERE name = ?", (self.user,)
            ).fetchone()
            roots = dict(
                conn.execute(
                    "SELECT id, trash_path FROM files WHERE ns_id = ? AND deleted_at IS NOT NULL"
                    " AND trash_root = id",
                    (ns,),
                ).fetchall()
            )
            rows = conn.execute(
                "SELECT f.id, f.trash_root, v.rev, v.content_hash FROM file_versions v"
                " JOIN files f ON f.ns_id = v.ns_id AND f.id = v.file_id"
                " WHERE v.ns_id = ? AND v.state = 'done' AND f.deleted_at IS NOT NULL",
                (ns,),
            ).fetchall()
        finally:
            conn.close()
        for fid, troot, rev, h in rows:
            if h is not None:
                out.setdefault(h, []).append(
                    f"trash (file id {fid} rev {rev}, deleted with {roots.get(troot, '?')})"
                )
        return out

    def _journal(self) -> dict[str, list[dict[str, Any]]]:
        """sha256 -> the journal entries that committed it (GET /api/v1/delta from 0); also
        keeps every entry by file id in `self._by_id`."""
        out: dict[str, list[dict[str, Any]]] = {}
        cursor = "0"
        while True:
            body = self._server_get("/api/v1/delta", cursor=cursor, limit=1000)
            for e in body["entries"]:
                self._by_id.setdefault(int(e["file"]["id"]), []).append(e)
                h = e["file"].get("content_hash")
                if h and e["op"] in ("create", "update", "restore"):
                    out.setdefault(h, []).append(e)
            cursor = body["cursor"]
            if not body["has_more"]:
                return out

    def _check_acks(self, srv: dict[str, str]) -> None:
        last_touch: dict[tuple[str, int], list[int]] = {}
        for op, out in self.log:
            for ino in out.touched:
                last_touch.setdefault((DEVICES[op.dev], ino), []).append(op.i)
        for ack in self.acks:
            later = [i for i in last_touch.get((ack.dev, ack.ino), []) if i > ack.op]
            ack.superseded_by = min(later) if later else None
        where = self._server_contents(srv)
        journal = self._journal()
        res = self.result
        res.acked = len(self.acks)
        for ack in self.acks:
            ack.where = where.get(ack.sha, [])
            if ack.superseded_by is not None and not ack.where:
                res.coalesced += 1
                continue
            if ack.superseded_by is None:
                res.must_find += 1
            if ack.where:
                kinds = {w.split(" ", 1)[0] for w in ack.where}
                if ack.superseded_by is None:
                    if "live" in kinds:
                        res.found_live += 1
                    elif "history" in kinds:
                        res.found_history += 1
                    else:
                        res.found_trash += 1
                continue
            commits = journal.get(ack.sha, [])
            label = f"op {ack.op} ({ack.dev} wrote {ack.size} B {ack.sha[:12]} at {ack.path})"
            if not commits:
                res.failures.append(f"LOST: {label}: never committed to the server")
                continue
            story = ", ".join(
                f"seq {e['seq']} {e['op']} {e['file']['path']} rev "
                f"{e['file']['rev']} id {e['file']['id']} by {e['device']}"
                for e in commits
            )
            res.failures.append(
                f"LOST: {label}: committed ({story}) but no longer on the "
                "server (not live, in no revision, not in the trash)"
            )

    # -- the report ---------------------------------------------------------------------------

    def op_log(self) -> str:
        """The numbered operation log: outcome, notes, acknowledged writes and their fate."""
        lines = [
            f"--- operation log (plan of {len(self.plan)}; t = seconds since start, then the"
            " wall clock as in the mount logs and how long the operation took)"
        ]
        by_op: dict[int, list[Ack]] = {}
        for a in self.acks:
            by_op.setdefault(a.op, []).append(a)
        for op, out in self.log:
            status = "ok" if out.ok else "ERR"
            acks = " ".join(
                f"ACK {a.sha[:12]} ino {a.ino}"
                + (f" superseded@{a.superseded_by}" if a.superseded_by is not None else "")
                + (f" found: {a.where[0]}" if a.where else "")
                for a in by_op.get(op.i, [])
            )
            clock = (
                time.strftime("%H:%M:%S", time.localtime(out.wall))
                + f".{int(out.wall * 1000) % 1000:03d}"
            )
            lines.append(
                f"{op.i:4d} t={out.t:7.2f} {clock} +{out.seconds:.3f}s {op.describe():55s} "
                f"{status}{out.note} {acks}"
            )
        return "\n".join(lines)

    def _report(self) -> str:
        excluded = f" (--exclude {','.join(sorted(self.exclude))})" if self.exclude else ""
        lines = [
            f"=== convergence seed {self.seed}, {len(self.plan)} ops{excluded}: FAIL",
            *self.result.failures,
            "",
        ]
        lines.append(self.op_log())
        try:
            statuses, trees, srv = self._snapshot()
        except Exception as exc:  # noqa: BLE001 - the report must always be written
            lines.append(f"(could not take the final snapshot: {exc})")
        else:
            lines.append("--- server tree")
            lines.append(_fmt_tree(srv))
            for d in self.devices:
                lines.append(
                    f"--- {d.name} tree (status: pending {statuses[d.name].get('pending')}"
                    f", parked {statuses[d.name].get('parked')}, online "
                    f"{statuses[d.name].get('online')}, conflicts "
                    f"{statuses[d.name].get('conflicts')})"
                )
                lines.append(_fmt_tree(trees[d.name]))
        for d in self.devices:
            lines.append(f"--- {d.name} mount log tail ({d.mount.log_path})")
            lines.append(d.mount.log_text()[-LOG_TAIL_CHARS:])
        return "\n".join(lines)


def run_seed(
    server: ServerProcess,
    root: Path,
    seed: int,
    n_ops: int,
    user: str,
    password: str,
    *,
    converge_seconds: float = 120.0,
    progress: Callable[[str], None] | None = None,
    exclude: frozenset[str] = frozenset(),
) -> Result:
    """Run one seed (see the module docstring) and return its verdict."""
    return Run(
        server,
        root,
        seed,
        n_ops,
        user,
        password,
        converge_seconds=converge_seconds,
        progress=progress,
        exclude=exclude,
    ).execute()


# -- the long-run command (scripts/convergence) ---------------------------------------------


@contextlib.contextmanager
def _server(data: Path) -> Iterator[ServerProcess]:
    with ServerProcess(data, config={"revisions_kept": 100_000}) as srv:
        yield srv


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/convergence", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=1, help="first seed (default 1)")
    p.add_argument("--ops", type=int, default=500, help="operations per seed (default 500)")
    p.add_argument("--seeds", type=int, default=1, help="how many seeds: SEED, SEED+1, ...")
    p.add_argument(
        "--converge-seconds",
        type=float,
        default=180.0,
        help="deadline for convergence after the last operation (default 180)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where homes, logs and reports go (default: a new /tmp directory)",
    )
    p.add_argument("--keep", action="store_true", help="keep the homes of passing seeds too")
    p.add_argument("--verbose", action="store_true", help="print every seed's operation log")
    p.add_argument(
        "--exclude",
        default="",
        help="comma-separated kinds of operations to leave out, e.g. rm_r,rmdir (another plan;"
        f" kinds: {', '.join(WEIGHTS)})",
    )
    args = p.parse_args(argv)
    exclude = frozenset(k for k in args.exclude.split(",") if k)
    if exclude - set(WEIGHTS):
        p.error(f"unknown kinds: {', '.join(sorted(exclude - set(WEIGHTS)))}")
    out = args.out or Path(tempfile.mkdtemp(prefix="drive-convergence-"))
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"convergence: {args.seeds} seed(s) from {args.seed}, {args.ops} ops each; output in {out}",
        flush=True,
    )
    failed = 0
    results: list[Result] = []
    with _server(out / "server-data") as srv:
        for seed in range(args.seed, args.seed + args.seeds):
            user = f"conv{seed}x{os.getpid()}x{int(time.time()) % 100000}"
            srv.add_user(user, "pw-" + user)
            root = out / f"seed-{seed}"
            res = run_seed(
                srv,
                root,
                seed,
                args.ops,
                user,
                "pw-" + user,
                converge_seconds=args.converge_seconds,
                progress=lambda s: print(f"  {s}", flush=True),
                exclude=exclude,
            )
            results.append(res)
            print(res.summary(), flush=True)
            if args.verbose:
                print(res.log, flush=True)
            if res.ok:
                if not args.keep:
                    shutil.rmtree(root, ignore_errors=True)
            else:
                failed += 1
                report = out / f"seed-{seed}-report.txt"
                report.write_text(res.report)
                for f in res.failures[:10]:
                    print(f"  failure: {f[:2000]}", flush=True)
                print(f"  full report: {report} (homes and mount logs in {root})", flush=True)
    total = sum(r.seconds for r in results)
    print(
        f"convergence: {len(results) - failed}/{len(results)} seeds OK, "
        f"{sum(r.ops_done for r in results)} ops, {sum(r.acked for r in results)} "
        f"acknowledged writes, {total:.0f}s",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
