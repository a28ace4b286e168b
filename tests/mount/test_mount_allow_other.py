"""`drive mount --allow-other`: other local users get in, and file modes still apply.

Runs `cat`, `ls` and a shell redirect as the user `nobody` (through `runuser`), so it needs
root, which CI has.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.mount_proc import MountProcess, requires_fuse
from tests.helpers.server_proc import ServerProcess
from tests.mount.conftest import new_account

pytestmark = [
    pytest.mark.e2e,
    requires_fuse,
    pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root"),
]


def _as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "nobody", "--", *cmd], capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp dirs are private to root)."""
    d = Path(tempfile.mkdtemp(prefix="drive-allow-other-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_other_users_need_allow_other_and_still_meet_file_modes(
    shared_server: ServerProcess, tmp_path: Path, open_dir: Path
) -> None:
    home = new_account(shared_server, tmp_path)
    mnt = open_dir / "mnt"
    with MountProcess(home, mnt, extra=["--allow-other"]) as m:
        (m.mnt / "public.txt").write_bytes(b"for everyone\n")
        (m.mnt / "private.txt").write_bytes(b"root only\n")
        os.chmod(m.mnt / "private.txt", 0o600)
        assert _as_nobody("cat", str(m.mnt / "public.txt")).stdout == "for everyone\n"
        refused = _as_nobody("cat", str(m.mnt / "private.txt"))
        assert refused.returncode != 0
        assert "Permission denied" in refused.stderr
        write = _as_nobody("sh", "-c", f"echo x > '{m.mnt}/new.txt'")  # the root dir is 0755
        assert write.returncode != 0
        assert not (m.mnt / "new.txt").exists()
    with MountProcess(home, mnt) as m:  # without the option nobody else gets in at all
        refused = _as_nobody("ls", str(m.mnt))
        assert refused.returncode != 0
        assert "Permission denied" in refused.stderr
        assert (m.mnt / "public.txt").read_bytes() == b"for everyone\n"  # root still does
