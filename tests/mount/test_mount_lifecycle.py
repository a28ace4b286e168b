"""Mount lifecycle: remount, a second device, offline behaviour, mount point errors, daemon."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.mount_proc import MountProcess, drive, login_home, requires_fuse
from tests.helpers.server_proc import ServerProcess
from tests.mount.conftest import new_account


def oserror(fn: object) -> int:
    """The errno `fn()` fails with (fails the test if it does not fail)."""
    try:
        fn()  # type: ignore[operator]
    except OSError as exc:
        return exc.errno or 0
    raise AssertionError("expected an OSError")


pytestmark = [pytest.mark.e2e, requires_fuse]


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_remount_and_second_device_see_everything(shared_server: ServerProcess,
                                                  tmp_path: Path) -> None:  # fmt: skip
    home = new_account(shared_server, tmp_path)
    data = random.Random(5).randbytes(2 * 1024 * 1024 + 3)
    with MountProcess(home, tmp_path / "mnt") as m:
        (m.mnt / "docs").mkdir()
        (m.mnt / "docs" / "a.bin").write_bytes(data)
        os.symlink("docs/a.bin", m.mnt / "link")
        (m.mnt / "docs" / "old").write_text("x")
        os.rename(m.mnt / "docs" / "old", m.mnt / "docs" / "new")
        m.wait_synced()
    with MountProcess(home, tmp_path / "mnt") as m:
        assert sorted(os.listdir(m.mnt / "docs")) == ["a.bin", "new"]
        assert (m.mnt / "docs" / "a.bin").read_bytes() == data
        assert os.readlink(m.mnt / "link") == "docs/a.bin"
    user = home.name.split("-")[1]
    home2 = login_home(shared_server, tmp_path / "home2", user, "pw-" + user, "dev2")
    with MountProcess(home2, tmp_path / "mnt2") as m2:
        assert sorted(os.listdir(m2.mnt)) == ["docs", "link"]
        assert sorted(os.listdir(m2.mnt / "docs")) == ["a.bin", "new"]
        assert digest(m2.mnt / "docs" / "a.bin") == hashlib.sha256(data).hexdigest()
        assert (m2.mnt / "docs" / "new").read_text() == "x"


def test_offline_cached_reads_work_and_uncached_reads_fail_with_eio(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "srv") as srv:
        home = new_account(srv, tmp_path)
        with MountProcess(home, tmp_path / "mnt") as m:
            (m.mnt / "cached.txt").write_text("cached")
            (m.mnt / "sub").mkdir()
            (m.mnt / "sub" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
            m.wait_synced()
        # Another device writes a file this one has never read.
        user = home.name.split("-")[1]
        other = login_home(srv, tmp_path / "other", user, "pw-" + user, "other")
        with MountProcess(other, tmp_path / "mnt-o") as mo:
            (mo.mnt / "remote.bin").write_bytes(os.urandom(1024 * 1024))
            mo.wait_synced()
        # Drop this device's cached blocks of big.bin? Not needed: remote.bin was never read.
        with MountProcess(home, tmp_path / "mnt", env={"DRIVE_FETCH_TIMEOUT": "1"}) as m:
            names = sorted(os.listdir(m.mnt))
            assert names == ["cached.txt", "remote.bin", "sub"]
            os.stat(m.mnt / "remote.bin")
            srv.stop()
            assert (m.mnt / "cached.txt").read_text() == "cached"
            t0 = time.monotonic()
            code = oserror(lambda: (m.mnt / "remote.bin").read_bytes())
            assert code == errno.EIO
            assert time.monotonic() - t0 < 30
            (m.mnt / "offline-edit.txt").write_text("written offline")
        assert "unreachable" in m.log_text()
        # Remount with the server down: the tree and cached contents show at once.
        with MountProcess(home, tmp_path / "mnt") as m:
            assert "offline-edit.txt" in os.listdir(m.mnt)
            assert (m.mnt / "sub" / "big.bin").stat().st_size == 3 * 1024 * 1024
            assert (m.mnt / "offline-edit.txt").read_text() == "written offline"
            srv.start()
            m.wait_synced()


def test_mount_point_errors_are_one_clear_line(account: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    f = tmp_path / "file"
    f.write_text("x")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    for mp, words in ((missing, "does not exist"), (f, "not a directory"),
                      (full, "not empty")):  # fmt: skip
        done = drive(account, "mount", str(mp))
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert words in lines[0], done.stderr


def test_daemon_mount_already_mounted_and_unmount_wait(account: Path, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    done = drive(account, "mount", str(mp))
    assert done.returncode == 0, done.stderr
    try:
        assert os.path.ismount(mp)
        again = drive(account, "mount", str(mp))
        assert again.returncode != 0
        assert "already mounted" in again.stderr
        assert len(again.stderr.strip().splitlines()) == 1
        (mp / "daemon.txt").write_text("from the daemon mount")
        done = drive(account, "unmount", "--wait", str(mp))
        assert done.returncode == 0, done.stderr
        assert not os.path.ismount(mp)
        status = drive(account, "status", "--json")
        assert status.returncode == 0
        assert '"pending": 0' in status.stdout
    finally:
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], check=False)
