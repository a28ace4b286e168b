"""One mount per home, end to end: a second mount of a mounted home is refused at once.

Two mounts of one home would share one upload queue and race each other into conflicted
copies. The first mount keeps working, a SIGKILLed mount's stale lock file does not block
the next one, and readers of the state (`drive status`, `drive unmount --wait`) still work.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.mount_proc import MountProcess, drive, requires_fuse
from tests.helpers.server_proc import ServerProcess, drive_command
from tests.mount.conftest import new_account

pytestmark = [pytest.mark.e2e, requires_fuse]

REFUSE_S = 5.0
"""A refusal takes a process start and a flock: seconds at most, never the mount timeout."""


def refusal(mp: Path, pid: int) -> str:
    return (f"drive: this home is already mounted at {mp} (pid {pid}); "
            "unmount it first or use another --home\n")  # fmt: skip


def lock_record(home: Path) -> dict[str, object]:
    text = (home / "mount.lock").read_text()
    return json.loads(text) if text else {}


def assert_refused(home: Path, other: Path, holder_mp: Path, holder_pid: int,
                   *extra: str) -> None:  # fmt: skip
    t0 = time.monotonic()
    done = drive(home, "mount", str(other), *extra, timeout=60)
    took = time.monotonic() - t0
    assert done.returncode != 0, done.stdout
    assert done.stderr == refusal(holder_mp, holder_pid)
    assert took < REFUSE_S, f"the refusal took {took:.1f}s"
    assert not os.path.ismount(other)
    assert list(other.iterdir()) == []


def test_second_mount_of_a_home_is_refused_and_sigkill_does_not_block(
    shared_server: ServerProcess, tmp_path: Path
) -> None:
    home = new_account(shared_server, tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    with MountProcess(home, tmp_path / "mnt") as m:
        assert m.proc is not None
        assert lock_record(home) == {"pid": m.proc.pid, "mountpoint": str(m.mnt)}
        assert (home / "mount.lock").stat().st_mode & 0o777 == 0o600
        assert_refused(home, other, m.mnt, m.proc.pid, "--foreground")
        assert_refused(home, other, m.mnt, m.proc.pid)  # the background form too
        # The first mount is untouched and still works; status reads the state beside it.
        (m.mnt / "a.txt").write_text("still mine")
        assert (m.mnt / "a.txt").read_text() == "still mine"
        m.wait_synced()
        status = drive(home, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["mounted"] is True
        assert m.status().get("pid") == m.proc.pid
    assert lock_record(home) == {}  # a clean exit leaves no name behind

    killed = MountProcess(home, tmp_path / "mnt").start()
    assert killed.proc is not None
    try:
        killed.proc.send_signal(signal.SIGKILL)
        killed.proc.wait(30)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(killed.mnt)], capture_output=True,
                       check=False)  # fmt: skip
    assert lock_record(home)["pid"] == killed.proc.pid  # stale: only the flock decides
    with MountProcess(home, tmp_path / "mnt") as m:
        assert m.proc is not None
        assert lock_record(home)["pid"] == m.proc.pid
        assert (m.mnt / "a.txt").read_text() == "still mine"
        assert_refused(home, other, m.mnt, m.proc.pid, "--foreground")


def test_background_mount_holds_the_lock_in_the_daemon(shared_server: ServerProcess,
                                                       tmp_path: Path) -> None:  # fmt: skip
    home = new_account(shared_server, tmp_path)
    mp, other = tmp_path / "mnt", tmp_path / "other"
    mp.mkdir()
    other.mkdir()
    done = drive(home, "mount", str(mp))
    assert done.returncode == 0, done.stderr
    try:
        daemon = json.loads((home / "status.json").read_text())["pid"]
        # The command that started it has exited; the detached process holds the lock.
        assert lock_record(home) == {"pid": daemon, "mountpoint": str(mp)}
        assert_refused(home, other, mp, daemon, "--foreground")
        assert_refused(home, other, mp, daemon)
        (mp / "b.txt").write_text("daemon")
        done = drive(home, "unmount", "--wait", str(mp))
        assert done.returncode == 0, done.stderr
        assert not os.path.ismount(mp)
        assert lock_record(home) == {}
    finally:
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], check=False)


def test_two_mounts_started_together_one_wins(shared_server: ServerProcess,
                                              tmp_path: Path) -> None:  # fmt: skip
    home = new_account(shared_server, tmp_path)
    mps = [tmp_path / "a", tmp_path / "b"]
    for mp in mps:
        mp.mkdir()
    procs = [subprocess.Popen(drive_command("--home", str(home), "mount", str(mp)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for mp in mps]  # fmt: skip
    try:
        outs = [p.communicate(timeout=60) for p in procs]
        codes = [p.returncode for p in procs]
        assert sorted(codes) == [0, 1], outs
        winner = mps[codes.index(0)]
        loser_err = outs[codes.index(1)][1]
        assert os.path.ismount(winner)
        assert not os.path.ismount(mps[codes.index(1)])
        assert loser_err.startswith(f"drive: this home is already mounted at {winner} (pid ")
        assert loser_err.count("\n") == 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(15)
        for mp in mps:
            if os.path.ismount(mp):
                done = drive(home, "unmount", str(mp))
                if done.returncode != 0:
                    subprocess.run(["fusermount3", "-u", "-z", str(mp)], check=False)
