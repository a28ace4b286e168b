"""Crash safety (N1): kill -9 the client in the middle of uploads, start it again: every
closed file reaches the server exactly once."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from syncd.state import StateDB
from tests.helpers.mount_proc import MountProcess, requires_fuse
from tests.helpers.tcp_proxy import TcpProxy
from tests.sync.conftest import Account

pytestmark = [pytest.mark.e2e, requires_fuse]

MIB = 1 << 20


def _token(home: Path) -> str:
    return str(json.loads((home / "config.json").read_text())["token"])


@pytest.mark.parametrize("delay", [0.0, 0.3, 1.0])
def test_kill_9_during_uploads_loses_nothing_and_commits_once(
    account: Account, delay: float
) -> None:
    home = account.device("crashy")
    m = account.mount(home, "a")
    files: dict[str, bytes] = {}
    try:
        (m.mnt / "d").mkdir()
        for i in range(30):
            files[f"/d/small{i}.bin"] = os.urandom(1000 + i * 3000)
        files["/big.bin"] = os.urandom(40 * MIB)
        files["/d/edited.bin"] = b"first\n"
        for path, data in files.items():
            (m.mnt / path.lstrip("/")).write_bytes(data)
        files["/d/edited.bin"] = b"second, after close\n"
        (m.mnt / "d" / "edited.bin").write_bytes(files["/d/edited.bin"])
        time.sleep(delay)
    finally:
        assert m.proc is not None
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(10)
        subprocess.run(["fusermount3", "-u", "-z", str(m.mnt)], capture_output=True, check=False)
    with MountProcess(home, m.mnt, env={"DRIVE_FETCH_TIMEOUT": "3"}) as again:
        again.wait_synced(timeout=60)
    with account.server.client(_token(home), timeout=60) as http:
        for path, data in files.items():
            r = http.get("/files/download", params={"path": path})
            assert r.status_code == 200, (path, r.text)
            assert hashlib.sha256(r.content).digest() == hashlib.sha256(data).digest(), path
            revs = http.get("/api/v1/revisions", params={"path": path}).json()["revisions"]
            sizes = [rv["size"] for rv in revs]
            if path == "/d/edited.bin":
                assert sizes[0] == len(data)
                assert len(revs) <= 2
            else:
                assert sizes == [len(data)], (path, sizes)  # exactly one version
        listing = http.get("/api/v1/list", params={"path": "/d"}).json()["entries"]
        assert sorted(e["name"] for e in listing) == sorted(
            p.rsplit("/", 1)[1] for p in files if p.startswith("/d/")
        )


def test_a_shell_redirect_makes_one_revision_and_a_lost_queue_entry_is_rebuilt(
    account: Account,
) -> None:
    with TcpProxy(account.server.port) as proxy:
        home = account.device("redirects", url=proxy.url)
        m = account.mount(home, "r")
        try:
            for i in range(6):  # `>` closes the file twice: after dup2, when the shell exits
                subprocess.run(["sh", "-c", f"echo line{i} > '{m.mnt}/r{i}.txt'"], check=True)
                time.sleep(0.2)  # an idle uploader is the case that split one save in two
            m.wait_synced()
            # Offline, a file is written and closed; then the client dies and its queue
            # entry is lost (as if the crash hit between the content and the queue entry).
            proxy.cut()
            (m.mnt / "orphan.txt").write_bytes(b"closed before the crash\n")
        finally:
            assert m.proc is not None
            m.proc.send_signal(signal.SIGKILL)
            m.proc.wait(10)
            subprocess.run(["fusermount3", "-u", "-z", str(m.mnt)], capture_output=True,
                           check=False)  # fmt: skip
        state = StateDB(home / "state")
        try:
            assert state.ops(), "the orphan should still be queued before we drop its entry"
            with state.write() as w:
                for seq, _ in state.ops():
                    w.delete_op(seq)
        finally:
            state.close()
        proxy.restore()
        with MountProcess(home, m.mnt, env={"DRIVE_FETCH_TIMEOUT": "3"}) as again:
            again.wait_synced(timeout=60)
    with account.server.client(_token(home), timeout=60) as http:
        for i in range(6):
            revs = http.get("/api/v1/revisions", params={"path": f"/r{i}.txt"}).json()
            assert [rv["size"] for rv in revs["revisions"]] == [6], revs  # no empty revision
        r = http.get("/files/download", params={"path": "/orphan.txt"})
        assert r.status_code == 200
        assert r.content == b"closed before the crash\n"
