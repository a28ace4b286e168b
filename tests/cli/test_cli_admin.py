"""`drive server adduser/passwd/deluser/list-users` while the server runs, and server.toml."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers.server_proc import ServerProcess, drive_command

pytestmark = pytest.mark.e2e


def test_admin_commands_and_default_quota(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "server.toml").write_text("default_quota_bytes = 1048576\nrevisions_kept = 5\n")
    with ServerProcess(data) as srv:
        srv.add_user("alice", "first")
        srv.add_user("bob", "pw", quota="2G")
        users = {u["name"]: u for u in json.loads(srv.admin("list-users", "--json").stdout)}
        assert users["alice"]["quota_bytes"] == 1 << 20  # from server.toml
        assert users["bob"]["quota_bytes"] == 2 << 30
        assert "alice" in srv.admin("list-users").stdout

        changed = srv.admin("passwd", "alice", "--password-stdin", stdin="second\n")
        assert changed.returncode == 0, changed.stderr
        srv.login("alice", "second")

        asked = srv.admin("deluser", "bob")  # stdin is not a terminal: never deletes unasked
        assert asked.returncode != 0
        assert asked.stderr.count("\n") == 1
        assert "--yes" in asked.stderr
        assert srv.admin("deluser", "bob", "--yes").returncode == 0
        missing = srv.admin("passwd", "bob", "--password-stdin", stdin="x\n")
        assert missing.returncode != 0
        assert missing.stderr.startswith("drive: ")
        assert missing.stderr.count("\n") == 1


def test_bad_listen_in_server_toml_is_one_line(tmp_path):
    """(A good `listen` there is used by test_cli_service's readiness test, without --listen.)"""
    data = tmp_path / "data"
    data.mkdir()
    (data / "server.toml").write_text('listen = "nowhere"\n')
    done = subprocess.run(drive_command("server", "serve", "--data", str(data)),
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode != 0
    assert done.stderr == "drive: --listen must be HOST:PORT, not 'nowhere'\n"
