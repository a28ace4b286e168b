"""Files at rest are private: after real use, every file under the server's data directory
and under a client's home is 0600 and every directory 0700; a data directory left readable
by an older version is fixed when the server starts."""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from tests.helpers import pg_cluster
from tests.helpers.mount_proc import drive, login_home, requires_fuse
from tests.helpers.server_proc import ServerProcess
from tests.server.test_server_tree import commit, put

pytestmark = pytest.mark.e2e


def loose_modes(root: Path) -> list[str]:
    """Every entry under `root` (and root) whose mode is not 0600 (files) / 0700 (dirs)."""
    bad = []
    for entry in [root, *root.rglob("*")]:
        st = entry.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            if mode != 0o700:
                bad.append(f"{entry} {mode:o}")
        elif stat.S_ISREG(st.st_mode) and mode != 0o600:
            bad.append(f"{entry} {mode:o}")
    return bad


def _use_server(srv: ServerProcess) -> str:
    """Blocks, a commit, a simple upload and an unfinished resumable upload; the token."""
    srv.add_user("priv", "pw")
    token = srv.login("priv", "pw")
    with srv.client(token) as http:
        assert commit(http, "/a.txt", None, [put(http, os.urandom(5000))], "a").status_code == 200
        simple = http.post("/files/upload?path=/s.bin&uploadType=media", content=b"s" * 9000)
        assert simple.status_code == 201
        loc = http.post("/files/upload?path=/r.bin&uploadType=resumable").headers["location"]
        part = http.put(loc, content=b"r" * 100, headers={"Content-Range": "bytes 0-99/*"})
        assert part.status_code == 308
    return token


def test_server_data_directory_is_private_after_use_and_fixed_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServerProcess(data) as srv:
        _use_server(srv)
        kinds = {p.name for p in data.rglob("*")}
        sqlite = {"drive.db", "drive.db-wal", "drive.db-shm"}
        sqlite_files = set() if pg_cluster.wanted() else sqlite
        assert {"master.key", "key.pem", "cert.pem", "server.json"} | sqlite_files <= kinds
        if not pg_cluster.wanted():  # else the part is pieces in blocks/ (server.upload_parts)
            assert any(p.suffix == ".part" for p in (data / "uploads").iterdir())
        assert any(srv.block_store().keys())  # DATA/blocks/ (checked below), or a bucket
        assert loose_modes(data) == []
        # An older version's modes: readable directories and files everywhere.
        srv.stop()
    for entry in [data, *data.rglob("*")]:
        os.chmod(entry, 0o755 if entry.is_dir() else 0o644)
    with ServerProcess(data) as srv:
        assert loose_modes(data) == []
        with srv.client(srv.login("priv", "pw")) as http:  # and it all still works
            assert http.get("/files/download", params={"path": "/s.bin"}).content == b"s" * 9000


def test_admin_commands_create_a_private_data_directory(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "fresh")
    shutil.rmtree(srv.data_dir)  # the command creates it (on SQLite: no server.toml left)
    srv.add_user("first", "pw")
    assert loose_modes(srv.data_dir) == []


@requires_fuse
def test_client_home_is_private_after_a_mount(tmp_path: Path) -> None:
    home, mnt = tmp_path / "home", tmp_path / "mnt"
    mnt.mkdir()
    with ServerProcess(tmp_path / "data") as srv:
        srv.add_user("cli", "pw")
        login_home(srv, home, "cli", "pw")
        mounted = drive(home, "--log-file", "cli.log", "mount", str(mnt))
        assert mounted.returncode == 0, mounted.stderr
        try:
            (mnt / "f.txt").write_bytes(b"private " * 1000)
            assert drive(home, "status").returncode == 0
        finally:
            done = drive(home, "unmount", str(mnt), "--wait", timeout=120)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 10
        while not (home / "status.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    names = {p.name for p in home.rglob("*")}
    assert {"config.json", "data.mdb", "mount.log", "cli.log", "mount.lock"} <= names
    assert loose_modes(home) == []
