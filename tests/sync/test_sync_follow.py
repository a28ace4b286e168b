"""Two devices of one account: what one does shows on the other (follower + invalidation)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers.mount_proc import MountProcess, drive, requires_fuse
from tests.sync.conftest import Account, read_or_none, wait_for

pytestmark = [pytest.mark.e2e, requires_fuse]


def test_write_on_a_shows_on_b(two_mounts: tuple[MountProcess, MountProcess]) -> None:
    a, b = two_mounts
    assert os.listdir(b.mnt) == []  # B's kernel has looked at the root before the change
    (a.mnt / "docs").mkdir()
    (a.mnt / "docs" / "note.txt").write_bytes(b"first version\n")
    wait_for(lambda: read_or_none(b.mnt / "docs" / "note.txt") == b"first version\n",
             "the new file on B")  # fmt: skip
    assert os.listdir(b.mnt) == ["docs"]
    st = (b.mnt / "docs" / "note.txt").stat()  # cached attributes on B from now on
    (a.mnt / "docs" / "note.txt").write_bytes(b"second, longer version\n")
    wait_for(lambda: (b.mnt / "docs" / "note.txt").stat().st_size == 23, "the new size on B")
    assert (b.mnt / "docs" / "note.txt").read_bytes() == b"second, longer version\n"
    assert st.st_size == 14
    os.rename(a.mnt / "docs" / "note.txt", a.mnt / "docs" / "renamed.txt")
    wait_for(lambda: os.listdir(b.mnt / "docs") == ["renamed.txt"], "the rename on B")
    (a.mnt / "docs" / "renamed.txt").unlink()
    wait_for(lambda: os.listdir(b.mnt / "docs") == [], "the delete on B")
    # and the other way round
    (b.mnt / "from-b").write_bytes(b"hello from B")
    wait_for(lambda: read_or_none(a.mnt / "from-b") == b"hello from B", "B's file on A")


def test_follower_resumes_from_its_cursor_after_a_restart(
    two_mounts: tuple[MountProcess, MountProcess],
) -> None:
    a, b = two_mounts
    (a.mnt / "x").write_bytes(b"1")
    wait_for(lambda: read_or_none(b.mnt / "x") == b"1", "x on B")
    b.stop()
    (a.mnt / "x").write_bytes(b"22")
    (a.mnt / "y").write_bytes(b"new while B was down")
    a.wait_synced()
    b.start()
    wait_for(lambda: read_or_none(b.mnt / "x") == b"22", "x's new content on B")
    assert read_or_none(b.mnt / "y") == b"new while B was down"
    assert b.status().get("cursor") not in (None, "0")


def test_status_shows_remote_changes_and_editing(
    two_mounts: tuple[MountProcess, MountProcess], tmp_path: Path
) -> None:
    a, b = two_mounts
    (a.mnt / "shared.txt").write_bytes(b"v1")
    wait_for(lambda: read_or_none(b.mnt / "shared.txt") == b"v1", "shared.txt on B")

    def editing() -> bool:
        return any(e.get("path") == "/shared.txt" for e in b.status().get("editing", []))

    def recent() -> bool:
        return any(r.get("path") == "/shared.txt" and r.get("device") == "devA"
                   for r in b.status().get("recent", []))  # fmt: skip

    with open(a.mnt / "shared.txt", "r+b") as f:  # dirty, not yet closed: A announces it
        f.write(b"v2")
        f.flush()
        wait_for(editing, "B learning that A edits shared.txt")
    wait_for(recent, "A's change in B's recent list")
    wait_for(lambda: not editing(), "the editing notice to end with the commit")
    done = drive(b.home, "status")
    assert done.returncode == 0, done.stderr
    assert "devA" in done.stdout
    assert "/shared.txt" in done.stdout


def test_unmount_wait_returns_when_nothing_is_pending(account: Account) -> None:
    home = account.device("waiter")
    m = account.mount(home, "w")
    try:
        data = os.urandom(24 << 20)
        (m.mnt / "late.bin").write_bytes(data)
        done = drive(home, "unmount", "--wait", str(m.mnt), timeout=120)
        assert done.returncode == 0, done.stderr
        token = json.loads((home / "config.json").read_text())["token"]
        with account.server.client(token) as http:
            r = http.get("/api/v1/meta", params={"path": "/late.bin"})
            assert r.status_code == 200
            assert r.json()["size"] == len(data)
    finally:
        m.stop()
