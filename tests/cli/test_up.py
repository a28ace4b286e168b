"""`drive up` on a clean home, twice: a server, a user, a login, a mount; then nothing new."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.server_proc import drive_command

pytestmark = pytest.mark.e2e


def drive(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        drive_command("--home", str(home), *args),
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.fixture
def up_home(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A clean home and mount point; afterwards unmount and stop the server `drive up` made."""
    home, mnt = tmp_path / "home", tmp_path / "Drive"
    yield home, mnt
    unmounted = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, check=False)
    if os.path.ismount(mnt) and unmounted.returncode != 0:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    info = home / "server" / "server.json"
    if info.exists():
        pid = int(json.loads(info.read_text())["pid"])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while info.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def test_up_twice_on_a_clean_home(up_home):
    home, mnt = up_home
    first = drive(home, "up", str(mnt))
    assert first.returncode == 0, first.stderr
    assert "server: started at https://127.0.0.1:" in first.stdout
    assert "login: created user" in first.stdout
    assert "password for" in first.stdout
    assert f"mount: mounted at {mnt}" in first.stdout
    steps = first.stdout.split("Next:\n", 1)[1].splitlines()[:3]
    wants = ("put files", "what is", "stop,")
    columns = {line.index(what) for line, what in zip(steps, wants, strict=True)}
    assert len(columns) == 1, steps  # the explanations line up whatever the path's length
    assert os.path.ismount(mnt)

    (mnt / "hello.txt").write_text("hello from drive up\n")
    second = drive(home, "up", str(mnt))
    assert second.returncode == 0, second.stderr
    assert "server: already running" in second.stdout
    assert "login: already logged in" in second.stdout
    assert f"mount: already mounted at {mnt}" in second.stdout
    assert "password" not in second.stdout  # shown once only
    assert (mnt / "hello.txt").read_text() == "hello from drive up\n"

    done = drive(home, "unmount", str(mnt), "--wait")
    assert done.returncode == 0, done.stderr
    assert not os.path.ismount(mnt)
    status = json.loads(drive(home, "status", "--json").stdout)
    assert status["online"] is True
    assert status["pending"] == 0
    revs = json.loads(drive(home, "revisions", "/hello.txt", "--json").stdout)
    assert revs[0]["size"] == len("hello from drive up\n")


def test_up_on_a_busy_mount_point_says_so_and_changes_nothing(up_home):
    home, mnt = up_home
    mnt.mkdir()
    (mnt / "mine.txt").write_text("keep me")
    done = drive(home, "up", str(mnt))
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1, done.stderr
    assert "not empty" in done.stderr
    assert not os.path.ismount(mnt)
    assert (mnt / "mine.txt").read_text() == "keep me"
    assert not (home / "server").exists()  # nothing was started or created
