"""A real `drive mount --foreground` in a subprocess, for end-to-end tests of the mount.

Usage::

    home = login_home(server, tmp_path / "home", "alice", "pw")   # `drive login`
    with MountProcess(home, tmp_path / "mnt") as m:                # waits until mounted
        (m.mnt / "a").write_text("x")
        m.wait_synced()                                            # upload queue empty

Teardown always unmounts: `fusermount3 -u`, then `-uz` plus SIGTERM when busy, then SIGKILL.
Every wait has a deadline. The mount's log goes to `HOME/mount-test.log`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import pytest

from tests.helpers.server_proc import ServerProcess, drive_command

MOUNT_SECONDS = 30.0
SKIP_WITHOUT_FUSE_ENV = "DRIVE_TESTS_SKIP_WITHOUT_FUSE"


def fuse_missing() -> str | None:
    """Why FUSE mounts cannot work here, or None."""
    if shutil.which("fusermount3") is None:
        return "fusermount3 not installed"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"/dev/fuse unusable: {exc}"
    return None


# Mount tests run (and fail loudly) unless FUSE is missing AND the caller explicitly asked to
# skip them: a CI machine that lost FUSE must not turn the mount suite silently green.
requires_fuse = pytest.mark.skipif(
    fuse_missing() is not None and os.environ.get(SKIP_WITHOUT_FUSE_ENV) == "1",
    reason=f"{fuse_missing()} (and {SKIP_WITHOUT_FUSE_ENV}=1)",
)
STOP_SECONDS = 15.0
SYNC_SECONDS = 60.0


def login_home(server: ServerProcess, home: Path, user: str, password: str,
               device: str | None = None) -> Path:  # fmt: skip
    """Run `drive --home HOME login` against `server`; returns HOME."""
    args = ["--home", str(home), "login", server.url, "--user", user, "--password-stdin",
            "--trust-fingerprint", server.fingerprint]  # fmt: skip
    if device:
        args += ["--device", device]
    done = subprocess.run(drive_command(*args), input=password + "\n", capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"drive login failed: {done.stderr.strip()}")
    return home


def drive(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `drive --home HOME ARGS` and return the finished process."""
    return subprocess.run(drive_command("--home", str(home), *args), capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


class MountProcess:
    """One foreground mount process (see the module docstring)."""

    def __init__(self, home: Path, mnt: Path, *, cache_size: str | None = None,
                 env: dict[str, str] | None = None, extra: Sequence[str] = ()) -> None:  # fmt: skip
        self.extra = list(extra)
        """More `drive mount` options (e.g. `--allow-other`)."""
        self.home = Path(home)
        self.mnt = Path(mnt)
        self.cache_size = cache_size
        self.env = env
        self.log_path = self.home / "mount-test.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = MOUNT_SECONDS) -> MountProcess:
        self.mnt.mkdir(parents=True, exist_ok=True)
        level = os.environ.get("DRIVE_TEST_LOG_LEVEL", "info")  # debug: to replay a seed
        args = ["--home", str(self.home), "--log-level", level, "mount", str(self.mnt),
                "--foreground"]  # fmt: skip
        if self.cache_size:
            args += ["--cache-size", self.cache_size]
        args += self.extra
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                drive_command(*args), stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None:
                raise RuntimeError(f"mount exited early (rc={self.proc.returncode}):\n"
                                   f"{self.log_text()[-3000:]}")  # fmt: skip
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.mnt} not mounted after {timeout}s")
            time.sleep(0.05)
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def status(self) -> dict[str, object]:
        try:
            body = json.loads((self.home / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return body if isinstance(body, dict) else {}

    def pending(self) -> int:
        done = drive(self.home, "status", "--json")
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        return int(json.loads(done.stdout)["pending"])

    def wait_synced(self, timeout: float = SYNC_SECONDS) -> None:
        """Wait until every queued change reached the server."""
        from syncd.state import StateDB

        deadline = time.monotonic() + timeout
        state = StateDB(self.home / "state")
        try:
            while state.op_count():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"upload queue not empty after {timeout}s:\n"
                                       f"{self.log_text()[-3000:]}")  # fmt: skip
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError("mount process died:\n" + self.log_text()[-3000:])
                time.sleep(0.05)
        finally:
            state.close()

    def stop(self, timeout: float = STOP_SECONDS) -> int | None:
        """Unmount and reap; never hangs. Returns the exit status."""
        busy = False
        if os.path.ismount(self.mnt):
            busy = subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True,
                                  check=False).returncode != 0  # fmt: skip
            if busy:
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True,
                               check=False)  # fmt: skip
                if self.proc is not None and self.proc.poll() is None:
                    self.proc.terminate()
        if self.proc is None:
            return None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        if busy:
            raise RuntimeError(f"{self.mnt} was busy at unmount: a test leaked an open file")
        return self.proc.returncode

    def __enter__(self) -> MountProcess:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        rc = self.stop()
        if et is None and rc not in (0, None):
            raise RuntimeError(f"mount exited with {rc}:\n{self.log_text()[-3000:]}")
