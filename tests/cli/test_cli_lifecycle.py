"""`drive keep`, `drive revisions` showing kept versions, `drive trash` with id,
time, size and device, `drive undelete PATH` and `--id` (under a "(restored ...)" name when
the name is taken), and `drive status` showing usage and quota, against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_cli_errors import PASSWORD, drive
from tests.helpers.server_proc import ServerProcess
from tests.server.test_server_lifecycle import upload

pytestmark = pytest.mark.e2e


def test_keep_trash_undelete_and_usage_from_the_command_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with ServerProcess(tmp_path / "data") as srv:
        srv.add_user("carol", PASSWORD, quota="10M")
        done = drive(home, "login", srv.url, "--user", "carol", "--password-stdin",
                     "--device", "laptop", "--trust-fingerprint", srv.fingerprint,
                     stdin=PASSWORD + "\n")  # fmt: skip
        assert done.returncode == 0, done.stderr
        with srv.client(srv.login("carol", PASSWORD)) as http:
            for i in range(3):
                upload(http, "/r.txt", b"revision %d" % i)
            upload(http, "/same.txt", b"revision 0")  # the same block as revision 1
        kept = drive(home, "keep", "/r.txt", "2")
        assert kept.returncode == 0, kept.stderr
        assert "/r.txt revision 2: kept" in kept.stdout
        revs = json.loads(drive(home, "revisions", "/r.txt", "--json").stdout)
        assert [r["kept"] for r in revs] == [False, True, False]
        table = drive(home, "revisions", "/r.txt").stdout
        assert "KEPT" in table
        assert table.count("kept") >= 1
        missing = drive(home, "keep", "/r.txt", "7")
        assert missing.returncode != 0
        assert missing.stderr.count("\n") == 1

        usage = json.loads(drive(home, "status", "--json").stdout)["usage"]
        assert usage["quota_bytes"] == 10 << 20
        assert usage["used_bytes"] == 30  # three 10-byte revisions; /same.txt dedupes
        assert usage["dedupe_saved_bytes"] == 10
        status = drive(home, "status").stdout
        assert "storage: 30 B used, quota 10.0 MiB (dedupe saved 10 B)" in status, status

        with srv.client(srv.login("carol", PASSWORD)) as http:
            http.post("/api/v1/delete", json={"path": "/r.txt"}).raise_for_status()
            upload(http, "/r.txt", b"new one")
        listing = drive(home, "trash").stdout.splitlines()
        assert listing[0].split() == ["ID", "DELETED", "SIZE", "KIND", "DEVICE", "PATH"]
        assert listing[1].split()[-3:] == ["file", "test-device", "/r.txt"]
        item = json.loads(drive(home, "trash", "--json").stdout)[0]
        back = drive(home, "undelete", "--id", str(item["id"]))
        assert back.returncode == 0, back.stderr
        assert back.stdout.startswith("undeleted /r (restored ")
        assert back.stdout.rstrip().endswith(").txt")
        both = drive(home, "undelete", "/r.txt", "--id", "1")
        assert both.returncode != 0
        assert "either PATH or --id" in both.stderr
