"""The mount helper: `mount -t fuse.drive HOME MOUNTPOINT -o OPTIONS` through the real mount(8).

mount(8) hands `fuse.drive` to mount.fuse3, which runs `drive SOURCE MOUNTPOINT -o OPTIONS`
from mount's own fixed PATH (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin,
whatever the caller's PATH). So the e2e test links `drive` into /usr/local/bin with `drive
service helper` and removes the link afterwards if it made it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from drive.errors import UserError
from drive.mount_helper import is_helper_call, parse_helper_args
from tests.helpers.mount_proc import drive, login_home
from tests.helpers.server_proc import ServerProcess

COMMANDS = {"mount", "up", "status", "server"}


@pytest.mark.parametrize(
    ("argv", "helper"),
    [
        (["/home/a/.config/drive", "/home/a/Drive", "-o", "rw"], True),
        (["drive", "/mnt/d"], True),
        (["~/h", "/mnt/d"], True),
        (["mount", "/mnt/d"], False),
        (["--home", "/h", "mount", "/mnt/d"], False),
        (["revisons", "/x"], False),  # a typo stays a usage error
        (["status"], False),
    ],
)
def test_helper_calls_are_recognised(argv, helper):
    assert is_helper_call(argv, COMMANDS) is helper


def test_options_map_to_drive_mount(tmp_path):
    opts = "rw,noatime,nodev,nosuid,_netdev,x-systemd.automount,cache_size=1G,allow_other"
    call = parse_helper_args([str(tmp_path), "/mnt/d", "-o", opts + ",log_level=info",
                              "-t", "fuse.drive"])  # fmt: skip
    assert call.argv == ["--home", str(tmp_path), "--log-level", "info", "mount", "/mnt/d",
                         "--cache-size", "1G", "--allow-other"]  # fmt: skip


def test_default_source_uses_the_default_home():
    assert parse_helper_args(["drive", "/mnt/d"]).argv == ["mount", "/mnt/d"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["drive", "/mnt/d", "-o", "ro"], "read-only"),
        (["drive", "/mnt/d", "-o", "colour=blue"], "unknown mount option 'colour=blue'"),
        (["/no/such/home", "/mnt/d"], "no such client home"),
        (["drive"], "usage"),
    ],
)
def test_bad_helper_calls(argv, needle):
    with pytest.raises(UserError, match=needle):
        parse_helper_args(argv)


@pytest.mark.e2e
@pytest.mark.skipif(os.geteuid() != 0, reason="mount(8) of a fuse type needs root here")
def test_mount_t_fuse_drive(tmp_path):
    assert shutil.which("mount"), "needs util-linux"
    assert Path("/sbin/mount.fuse3").exists(), "needs fuse3"
    bindir = Path("/usr/local/bin")
    link = bindir / "drive"
    made_link = not (link.exists() or link.is_symlink())
    with ServerProcess(tmp_path / "data") as srv:
        srv.add_user("alice", "pw")
        home = login_home(srv, tmp_path / "home", "alice", "pw")
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "DRIVE_HOME"}
        try:
            installed = drive(home, "service", "helper")
            assert installed.returncode == 0, installed.stderr
            assert link.resolve().is_file()
            again = drive(home, "service", "helper", "--bindir", str(bindir))
            assert again.returncode == 0
            assert "already" in again.stdout
            done = subprocess.run(
                ["mount", "-t", "fuse.drive", str(home), str(mnt), "-o", "noatime,cache_size=1G"],
                capture_output=True, text=True, timeout=90, env=env, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert os.path.ismount(mnt)  # the helper returned once the mount was up
            (mnt / "via-mount-t.txt").write_text("hello\n")
            with open("/proc/self/mountinfo") as f:
                line = next(ln for ln in f if f" {mnt} " in ln)
            assert " - fuse.drive " in line

            refused = subprocess.run(
                ["mount", "-t", "fuse.drive", str(home), str(mnt)],
                capture_output=True, text=True, timeout=60, env=env, check=False,
            )  # fmt: skip
            assert refused.returncode != 0
            assert "already mounted" in refused.stderr

            off = drive(home, "unmount", str(mnt), "--wait")
            assert off.returncode == 0, off.stderr
            assert not os.path.ismount(mnt)
            revs = drive(home, "revisions", "/via-mount-t.txt", "--json")
            assert revs.returncode == 0, revs.stderr
        finally:
            deadline = time.monotonic() + 15
            while os.path.ismount(mnt) and time.monotonic() < deadline:
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
                time.sleep(0.1)
            if made_link:
                link.unlink(missing_ok=True)
