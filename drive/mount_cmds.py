"""`drive mount` and `drive unmount`: checks that give one clear line, then the mount.

`drive mount MP` (without `--foreground`) starts `drive mount MP --foreground` as a detached
process logging to HOME/mount.log and returns only once MP is mounted, or exits non-zero
with the reason from that log.

One mount per home: before anything else `drive mount` takes the home's exclusive lock
(`syncd.home.HomeLock`) and refuses in one line, naming the mount that holds it. In the
background case the command hands its locked descriptor to the detached process (which
finds it through `DRIVE_MOUNT_LOCK_FD`), so the lock passes to the process that runs the
mount without a moment where a second `drive mount` could slip in.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from blockstore.fsutil import open_private_append
from drive import sdnotify, sizes
from drive.errors import UserError
from drive.logtail import last_log_line
from drive.procs import pid_alive
from drive.progress import Progress
from drive.settings import load_settings

if TYPE_CHECKING:
    from syncd.home import HomeLock

__all__ = ["check_mountpoint", "is_mounted", "mount", "parse_cache_size", "unmount"]

MOUNT_WAIT_S = 30.0
UNMOUNT_WAIT_S = 30.0
LOCK_FD_ENV = "DRIVE_MOUNT_LOCK_FD"
"""Names the home-lock descriptor a background `drive mount` hands to its detached child."""


def parse_cache_size(text: str) -> int:
    """`10G`, `512M`, `1.5GiB`, `4096` -> bytes (binary units)."""
    try:
        value = sizes.parse_size(text)
    except ValueError as exc:
        raise UserError(f"--cache-size: {exc}") from None
    if value < 64 << 20:
        raise UserError(f"--cache-size {text} is too small (at least 64M)")
    return value


def check_mountpoint(path: Path) -> None:
    """One clear `UserError` if `path` cannot be mounted on."""
    if os.path.ismount(path):
        raise UserError(f"{path} is already mounted")
    if not path.exists():
        raise UserError(f"mount point {path} does not exist")
    if not path.is_dir():
        raise UserError(f"mount point {path} is not a directory")
    try:
        if any(path.iterdir()):
            raise UserError(f"mount point {path} is not empty")
    except PermissionError as exc:
        raise UserError(f"cannot read mount point {path}: {exc.strerror}") from None


def _home_and_config() -> tuple[object, object]:
    from syncd.config import load_config
    from syncd.errors import NotLoggedIn
    from syncd.home import resolve_home

    home = resolve_home()
    try:
        cfg = load_config(home)
    except NotLoggedIn as exc:
        raise UserError(str(exc)) from None
    return home, cfg


def mount(args: argparse.Namespace) -> int:
    from mountfs.main import DEFAULT_CACHE_BYTES
    from syncd.home import Home

    home, _ = _home_and_config()
    assert isinstance(home, Home)
    mp = Path(args.mountpoint).expanduser().absolute()
    with _lock_home(home, mp) as lock:  # before the state is touched; held till we exit
        check_mountpoint(mp)
        settings = load_settings(home.root)
        args.cache_size = args.cache_size or settings.cache_size or None
        args.allow_other = args.allow_other or settings.allow_other
        cache_bytes = parse_cache_size(args.cache_size) if args.cache_size else DEFAULT_CACHE_BYTES
        if args.foreground:
            return _foreground(home, mp, cache_bytes, args.allow_other)
        return _background(home, mp, args, lock)


def _lock_home(home: object, mp: Path) -> HomeLock:
    """This home's mount lock (handed over by our parent, or taken now), else one line."""
    from syncd.home import Home, HomeInUse, HomeLock

    assert isinstance(home, Home)
    try:
        return HomeLock.acquire(home, mp, inherited_fd=_inherited_lock_fd())
    except HomeInUse as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot lock {home.lock_path}: {exc.strerror or exc}") from None


def _inherited_lock_fd() -> int | None:
    """The descriptor named by `DRIVE_MOUNT_LOCK_FD`, removed so our children do not see it."""
    text = os.environ.pop(LOCK_FD_ENV, "")
    try:
        fd = int(text)
    except ValueError:
        return None
    return fd if fd > 2 else None


def _notify_when_mounted(mp: Path, done: threading.Event) -> None:
    """Tell systemd READY=1 once `mp` is in our mount table (read, never stat: no FUSE call)."""
    while not done.wait(0.05):
        if is_mounted(mp):
            sdnotify.ready(f"mounted at {mp}")
            return


def is_mounted(mp: Path) -> bool:
    """True when `mp` is a mount point in /proc/self/mountinfo (no filesystem call on it)."""
    target = str(mp).replace(" ", "\\040")
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == target for line in f if line.strip())
    except OSError:
        return False


def _foreground(home: object, mp: Path, cache_bytes: int, allow_other: bool) -> int:
    from mountfs.main import run_mount
    from syncd.errors import SyncError
    from syncd.home import Home

    assert isinstance(home, Home)
    home.ensure()
    done = threading.Event()
    if os.environ.get("NOTIFY_SOCKET"):
        threading.Thread(target=_notify_when_mounted, args=(mp, done), daemon=True).start()
    try:
        run_mount(home, mp, cache_bytes=cache_bytes, allow_other=allow_other)
    except SyncError as exc:
        raise UserError(str(exc)) from exc
    except RuntimeError as exc:  # pyfuse3.init: fuse device missing, permission, ...
        raise UserError(f"cannot mount {mp}: {exc}") from exc
    finally:
        done.set()
        sdnotify.stopping(f"unmounted {mp}")
    return 0


def _background(home: object, mp: Path, args: argparse.Namespace, lock: HomeLock) -> int:
    from syncd.home import Home

    assert isinstance(home, Home)
    home.ensure()
    argv = [sys.executable, "-m", "drive.cli", "--home", str(home.root)]
    argv += ["--log-level", args.log_level or "info"] if not args.debug else ["--debug"]
    argv += ["mount", str(mp), "--foreground"]
    if args.cache_size:
        argv += ["--cache-size", args.cache_size]
    if args.allow_other:
        argv.append("--allow-other")
    log = open_private_append(home.log_path)  # handed to the child
    start = log.tell()
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            pass_fds=(lock.fd,), env={**os.environ, LOCK_FD_ENV: str(lock.fd)},
        )  # fmt: skip
    finally:
        log.close()
    lock.close()  # the child holds the lock now (same open file); it goes when the child does
    deadline = time.monotonic() + MOUNT_WAIT_S
    while not os.path.ismount(mp):
        rc = proc.poll()
        if rc is not None:
            raise UserError(f"mount failed: {last_log_line(home.log_path, start) or f'exit {rc}'}")
        if time.monotonic() > deadline:
            proc.terminate()
            raise UserError(f"{mp} was not mounted after {MOUNT_WAIT_S:.0f}s; see {home.log_path}")
        time.sleep(0.05)
    print(f"mounted at {mp} (log: {home.log_path})")
    return 0


def unmount(args: argparse.Namespace) -> int:
    from syncd.home import Home

    home, _ = _home_and_config()
    assert isinstance(home, Home)
    mp = Path(args.mountpoint).expanduser().absolute()
    if not os.path.ismount(mp):
        raise UserError(f"{mp} is not mounted")
    if args.wait:
        _wait_queue_empty(home)
    pid = _mount_pid(home)
    res = subprocess.run(
        ["fusermount3", "-u", str(mp)], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        msg = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "fusermount3 failed"
        raise UserError(f"cannot unmount {mp}: {msg}")
    if pid:
        deadline = time.monotonic() + UNMOUNT_WAIT_S
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    return 0


def _mount_pid(home: object) -> int | None:
    from syncd.home import Home

    assert isinstance(home, Home)
    try:
        body = json.loads(home.status_path.read_text())
    except (OSError, ValueError):
        return None
    pid = body.get("pid")
    return pid if isinstance(pid, int) and body.get("mounted") else None


def _wait_queue_empty(home: object) -> None:
    from syncd.home import Home
    from syncd.state import StateDB

    assert isinstance(home, Home)
    state = StateDB(home.state_path)
    try:
        with Progress("uploading local changes", unit="changes") as bar:  # a bar on a TTY only
            while True:
                n = state.op_count()
                bar.remaining(n)
                if n == 0:
                    break
                time.sleep(0.1)
        parked = state.parked()
    finally:
        state.close()
    if parked:
        lines = [f"  {op.where}: {why}" for _, op, why, _ in parked]
        raise UserError(f"not unmounted: {len(parked)} changes are not synced (kept on this "
                        "device and retried every minute; `drive unmount` without --wait "
                        "unmounts anyway):\n" + "\n".join(lines))  # fmt: skip
