"""Fixtures for the blockstore tests: child writer processes for the kill -9 tests."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

WRITER = Path(__file__).with_name("_bs_crash_writer.py")
REPO = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 30


class Writer:
    """A running `_bs_crash_writer.py`; collects its acknowledgement lines in a thread."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, str(WRITER), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.acked: list[tuple[str, int]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def _drain(self) -> None:
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return
            if not line.endswith("\n"):
                continue  # killed while printing: a torn acknowledgement is no acknowledgement
            _ok, what, flag = line.split()
            self.acked.append((what, int(flag)))

    def wait_acked(self, n: int) -> None:
        """Wait until at least `n` writes were acknowledged (deadline: WAIT_SECONDS)."""
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            self._drain()
            if len(self.acked) >= n:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"writer exited early: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise AssertionError(f"writer acknowledged only {len(self.acked)} writes")
            time.sleep(0.002)

    def kill(self) -> list[tuple[str, int]]:
        """SIGKILL the writer; return every write it acknowledged before dying."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=WAIT_SECONDS)
        self._reader.join(timeout=WAIT_SECONDS)
        self._drain()
        return self.acked

    def finish(self) -> list[tuple[str, int]]:
        """Wait for a writer that ends by itself; return its acknowledgements."""
        self.proc.wait(timeout=WAIT_SECONDS)
        self._reader.join(timeout=WAIT_SECONDS)
        self._drain()
        assert self.proc.returncode == 0, self.proc.stderr.read()  # type: ignore[union-attr]
        return self.acked

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT_SECONDS)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def spawn_writer() -> Iterator[type[Writer]]:
    """Start writer processes; every one is killed and reaped at teardown."""
    started: list[Writer] = []

    class Tracked(Writer):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Tracked
    for writer in started:
        writer.close()
