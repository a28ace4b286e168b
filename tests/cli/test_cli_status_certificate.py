"""`drive status` after the server's certificate changed: it says so, with the command that
trusts the new certificate, and that command works (a real server, then another one with a
new certificate on the same port)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.cli.test_cli_errors import PASSWORD, drive
from tests.helpers.server_proc import ServerProcess

pytestmark = pytest.mark.e2e


def test_status_names_a_changed_certificate_and_the_command_that_trusts_it(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    with ServerProcess(tmp_path / "first") as first:
        first.add_user("alice", PASSWORD)
        done = drive(home, "login", first.url, "--user", "alice", "--password-stdin",
                     "--trust-fingerprint", first.fingerprint, stdin=PASSWORD + "\n")  # fmt: skip
        assert done.returncode == 0, done.stderr
        port = first.port
    with ServerProcess(tmp_path / "second", listen=f"127.0.0.1:{port}") as second:
        second.add_user("alice", PASSWORD)
        status = drive(home, "status")
        assert status.returncode == 0, status.stderr
        assert "OFFLINE" in status.stdout
        flat = second.fingerprint.replace(":", "").lower()
        command = f"drive login {second.url} --user alice --trust-fingerprint {flat}"
        assert "certificate" in status.stdout
        assert "changed since this device logged in" in status.stdout
        assert command in status.stdout, status.stdout
        trusted = drive(home, *shlex.split(command)[1:], "--password-stdin",
                        stdin=PASSWORD + "\n")  # fmt: skip
        assert trusted.returncode == 0, trusted.stderr
        assert "online" in drive(home, "status").stdout
