"""pid_alive: a finished child that nobody reaped yet is not a running server or mount."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from drive.procs import pid_alive


def test_live_dead_zombie_and_junk():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert pid_alive(child.pid)
    finally:
        child.kill()
    deadline = time.monotonic() + 10
    while pid_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not pid_alive(child.pid)  # a zombie until we wait() below
    child.wait()
    assert not pid_alive(child.pid)
    assert pid_alive(os.getpid())
    for junk in (None, "12", 0, -1, True):
        assert not pid_alive(junk)
