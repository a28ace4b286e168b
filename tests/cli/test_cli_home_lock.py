"""One mount per home: `syncd.home.HomeLock` and `drive mount`'s refusal, without FUSE.

The end-to-end half (real mounts, SIGKILL, remount) is tests/mount/test_mount_home_lock.py.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from drive.mount_cmds import LOCK_FD_ENV
from syncd import home as home_mod
from syncd.config import ClientConfig
from syncd.home import Home, HomeInUse, HomeLock
from tests.helpers.server_proc import drive_command

WAIT_S = 30.0

# A child that takes (or adopts, through DRIVE_MOUNT_LOCK_FD) the lock, says so, and waits.
HOLDER = """
import os, sys, time
from pathlib import Path
from syncd.home import Home, HomeLock
fd = os.environ.get("DRIVE_MOUNT_LOCK_FD")
lock = HomeLock.acquire(Home(Path(sys.argv[1])), Path(sys.argv[2]),
                        inherited_fd=int(fd) if fd else None)
print("locked", flush=True)
time.sleep(600)
"""


def refusal(mp: Path | str, pid: int) -> str:
    return (f"this home is already mounted at {mp} (pid {pid}); "
            "unmount it first or use another --home")  # fmt: skip


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "home").ensure()


def start_holder(home: Home, mp: str, **kw):
    """A process holding the lock of `home` (for a mount at `mp`) until stopped."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(home.root), mp],
                            stdout=subprocess.PIPE, text=True, **kw)  # fmt: skip
    assert proc.stdout.readline() == "locked\n"
    return proc


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(WAIT_S)
    if proc.stdout is not None:
        proc.stdout.close()


def test_lock_records_the_holder_with_mode_0600_and_release_empties_it(home: Home) -> None:
    with HomeLock.acquire(home, Path("/m/nt")) as lock:
        assert lock.path == home.lock_path == home.root / "mount.lock"
        assert stat.S_IMODE(home.lock_path.stat().st_mode) == 0o600
        body = json.loads(home.lock_path.read_text())
        assert body == {"pid": os.getpid(), "mountpoint": "/m/nt"}
        assert os.get_inheritable(lock.fd) is False
    assert home.lock_path.read_text() == ""  # released: no stale name left behind
    HomeLock.acquire(home, Path("/again")).release()


def test_a_second_lock_is_refused_and_names_the_holder(home: Home) -> None:
    holder = start_holder(home, "/mnt/first")
    try:
        with pytest.raises(HomeInUse) as info:
            HomeLock.acquire(home, Path("/mnt/second"))
        assert str(info.value) == refusal("/mnt/first", holder.pid)
        assert info.value.holder.pid == holder.pid
        # The refused attempt left the holder's record alone.
        assert json.loads(home.lock_path.read_text())["mountpoint"] == "/mnt/first"
    finally:
        stop(holder)


def test_a_holder_killed_with_sigkill_does_not_block(home: Home) -> None:
    holder = start_holder(home, "/mnt/killed")
    stop(holder, signal.SIGKILL)
    # The file still names the dead holder; only the (kernel-released) flock decides.
    assert json.loads(home.lock_path.read_text())["pid"] == holder.pid
    with HomeLock.acquire(home, Path("/mnt/next")):
        assert json.loads(home.lock_path.read_text())["pid"] == os.getpid()


def test_a_stale_file_naming_a_live_pid_does_not_block(home: Home) -> None:
    # Even a pid that is alive (ours) is not trusted: no flock held means free.
    home.lock_path.write_text(json.dumps({"pid": os.getpid(), "mountpoint": "/old"}) + "x" * 50)
    with HomeLock.acquire(home, Path("/new")):
        assert json.loads(home.lock_path.read_text()) == {"pid": os.getpid(), "mountpoint": "/new"}


def test_an_unreadable_record_still_refuses(home: Home,
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(home_mod, "HOLDER_READ_S", 0.05)
    with HomeLock.acquire(home, Path("/mnt")):
        home.lock_path.write_text("not json")
        with pytest.raises(HomeInUse, match="already mounted by another process; unmount"):
            HomeLock.acquire(home, Path("/mnt2"))


def test_the_lock_is_handed_to_a_child_without_a_gap(home: Home) -> None:
    lock = HomeLock.acquire(home, Path("/mnt/bg"))
    child = start_holder(home, "/mnt/bg", pass_fds=(lock.fd,),
                         env={**os.environ, LOCK_FD_ENV: str(lock.fd)})  # fmt: skip
    try:
        lock.close()  # what `drive mount` does once the detached child runs
        lock.release()  # a no-op now: must not empty the child's record
        with pytest.raises(HomeInUse) as info:
            HomeLock.acquire(home, Path("/mnt/other"))
        assert str(info.value) == refusal("/mnt/bg", child.pid)
    finally:
        stop(child)
    HomeLock.acquire(home, Path("/mnt/after")).release()


def test_an_inherited_descriptor_of_another_file_is_ignored(home: Home, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_text("keep")
    fd = os.open(other, os.O_RDONLY)
    try:
        with HomeLock.acquire(home, Path("/mnt"), inherited_fd=fd) as lock:
            assert lock.fd != fd
        os.fstat(fd)  # still open: not ours to close
    finally:
        os.close(fd)
    assert other.read_text() == "keep"


# -- `drive mount` refuses before touching the state (a fake login: nothing goes online) ---------


def fake_login(home: Home) -> None:
    cfg = ClientConfig(server_url="https://127.0.0.1:9", user="u", device="d", device_id=1,
                       token="t", fingerprint="0" * 64, cert_pem="")  # fmt: skip
    home.config_path.write_text(json.dumps(asdict(cfg)))


@pytest.mark.parametrize("foreground", [True, False], ids=["foreground", "background"])
def test_drive_mount_refuses_a_locked_home_in_one_line(tmp_path: Path, foreground: bool) -> None:
    home = Home(tmp_path / "home")
    home.root.mkdir(mode=0o700)
    fake_login(home)
    mp = tmp_path / "mnt"
    mp.mkdir()
    holder = start_holder(home, "/mnt/first")
    try:
        argv = ["--home", str(home.root), "mount", str(mp)]
        done = subprocess.run(drive_command(*argv, *(["--foreground"] if foreground else [])),
                              capture_output=True, text=True, timeout=WAIT_S,
                              check=False)  # fmt: skip
    finally:
        stop(holder)
    assert done.returncode == 1, done.stderr
    assert done.stderr == f"drive: {refusal('/mnt/first', holder.pid)}\n"
    assert sorted(p.name for p in home.root.iterdir()) == ["config.json", "mount.lock"]
    assert not os.path.ismount(mp)


def test_drive_mount_reports_a_lock_file_it_cannot_open(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.root.mkdir(mode=0o700)
    fake_login(home)
    home.lock_path.mkdir()  # a directory where the lock file belongs
    (tmp_path / "mnt").mkdir()
    done = subprocess.run(drive_command("--home", str(home.root), "mount", str(tmp_path / "mnt")),
                          capture_output=True, text=True, timeout=WAIT_S, check=False)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith(f"drive: cannot lock {home.lock_path}: "), done.stderr
    assert done.stderr.count("\n") == 1
