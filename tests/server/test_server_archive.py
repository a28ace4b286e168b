"""The archive tier through a real server: a server killed (-9) in the middle of a block's
move to the archive leaves every block readable, and a later pass repairs the half-done move
(each block then in exactly one tier); reads from the archive are counted in /metrics; a
local archive directory and an S3 archive bucket (moto) both work."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from blockstore.store import LocalDirStore
from tests.helpers.moto_s3 import CREDENTIALS, REGION, MotoS3, blocks_lines
from tests.helpers.pg_cluster import database_line
from tests.helpers.server_proc import ServerProcess
from tests.server.test_server_lifecycle import upload

pytestmark = pytest.mark.e2e

COLD_AT_ONCE = {"archive_after_seconds": 0.0, "archive_idle_seconds": 0.0}
NEVER = {"archive_after_seconds": 1e9, "archive_idle_seconds": 1e9}


def _write_config(data: Path, **config: Any) -> None:
    """DATA/server.toml (keeping the test database's and test bucket's lines, if any)."""
    keep = database_line(data) + blocks_lines(data, config)
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items())
    (data / "server.toml").write_text(lines + keep)


def _tiers(srv: ServerProcess) -> tuple[set[str], set[str]]:
    """The keys in the hot store (a directory or the test bucket) and in DATA/archive/."""
    hot, archive = srv.block_store(), LocalDirStore(srv.data_dir / "archive")
    return set(hot.keys()), set(archive.keys())  # stores


def _wait_dead(srv: ServerProcess, seconds: float = 60.0) -> None:
    assert srv.proc is not None
    deadline = time.monotonic() + seconds
    while srv.proc.poll() is None:
        assert time.monotonic() < deadline, "the server did not die at the crash point"
        time.sleep(0.1)


def _metric(text: str, name: str) -> int:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    raise AssertionError(f"no metric {name}")


@pytest.mark.parametrize("step", ["copied", "flipped"])
def test_a_server_killed_mid_move_loses_no_block(tmp_path: Path, step: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _write_config(data, archive="archive", maintenance_interval_seconds=0.2, **NEVER)
    files = {f"/f{i}.bin": os.urandom(50_000 + i) for i in range(4)}
    srv = ServerProcess(data)
    with srv:
        srv.add_user("c", "pw")
        token = srv.login("c", "pw")
        with srv.client(token) as http:
            for path, content in files.items():
                upload(http, path, content)
        # Now every block is cold, and the server dies at `step` of its first move.
        _write_config(data, archive="archive", maintenance_interval_seconds=0.2,
                      **COLD_AT_ONCE)  # fmt: skip
        srv.env = {"DRIVE_TEST_CRASH_AT": step}
        srv.restart()
        _wait_dead(srv)
        hot, archived = _tiers(srv)
        assert len(hot | archived) == len(files)
        assert hot & archived  # the one block caught in the middle is in both tiers
        # Back up without moving anything: every block reads as it should.
        _write_config(data, archive="archive", **NEVER)
        srv.env = None
        srv.restart()
        with srv.client(token) as http:
            for path, content in files.items():
                assert http.get("/files/download", params={"path": path}).content == content
        # A pass that sees the move as stale repairs it, and the rest move.
        _write_config(data, archive="archive", archive_move_stale_seconds=0.0,
                      **COLD_AT_ONCE)  # fmt: skip
        report = json.loads(srv.admin("maintenance", "--json").stdout)
        assert report["repaired"] == 1
        hot, archived = _tiers(srv)
        assert not hot
        assert len(archived) == len(files)
        with srv.client(token) as http:
            for path, content in files.items():
                assert http.get("/files/download", params={"path": path}).content == content
            metrics = http.get("/metrics").text
        assert _metric(metrics, "drive_archive_reads_total") == len(files)


def test_an_s3_archive_bucket(
    tmp_path: Path, moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = moto_s3.new_bucket()
    data = tmp_path / "data"
    data.mkdir()
    _write_config(data, archive=f"s3://{bucket}/cold", s3_endpoint=moto_s3.endpoint,
                  s3_region=REGION, **COLD_AT_ONCE)  # fmt: skip
    env = {"AWS_ACCESS_KEY_ID": CREDENTIALS["access_key_id"],
           "AWS_SECRET_ACCESS_KEY": CREDENTIALS["secret_access_key"]}  # fmt: skip
    for name, value in env.items():  # the maintenance command reads them too
        monkeypatch.setenv(name, value)
    content = os.urandom(70_000)
    with ServerProcess(data, env=env) as srv:
        srv.add_user("s", "pw")
        with srv.client(srv.login("s", "pw")) as http:
            upload(http, "/cold.bin", content)
            report = json.loads(srv.admin("maintenance", "--json").stdout)
            assert report["archived"]["blocks"] == 1
            listed = moto_s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])
            assert [o["Key"].split("/")[0] for o in listed] == ["cold"]
            assert not any(srv.block_store().keys())
            assert http.get("/files/download", params={"path": "/cold.bin"}).content == content
            assert _metric(http.get("/metrics").text, "drive_archive_reads_total") == 1
            assert http.get("/api/v1/whoami").json()["archived_bytes"] == len(content)


def test_an_s3_storage_class_archive_keeps_blocks_in_the_same_bucket(
    tmp_path: Path, moto_s3: MotoS3
) -> None:
    """`archive = "GLACIER_IR"` with blocks on S3: archived objects move to the sibling
    prefix `PREFIX.archive/` of the same bucket, written with that storage class; the
    credentials come from server.toml alone (no AWS_* variables)."""
    bucket = moto_s3.new_bucket()
    data = tmp_path / "data"
    data.mkdir()
    _write_config(data, blocks=f"s3://{bucket}/hot", archive="GLACIER_IR",
                  s3_endpoint=moto_s3.endpoint, s3_region=REGION,
                  s3_access_key_id=CREDENTIALS["access_key_id"],
                  s3_secret_access_key=CREDENTIALS["secret_access_key"],
                  **COLD_AT_ONCE)  # fmt: skip
    content = os.urandom(70_000)
    with ServerProcess(data) as srv:
        srv.add_user("g", "pw")
        with srv.client(srv.login("g", "pw")) as http:
            upload(http, "/cold.bin", content)
            report = json.loads(srv.admin("maintenance", "--json").stdout)
            assert report["archived"]["blocks"] == 1
            listed = moto_s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])
            blocks = [o for o in listed if "/.check/" not in o["Key"]]  # not start probes
            assert [o["Key"].split("/")[0] for o in blocks] == ["hot.archive"]
            assert [o.get("StorageClass") for o in blocks] == ["GLACIER_IR"]
            assert http.get("/files/download", params={"path": "/cold.bin"}).content == content
            assert _metric(http.get("/metrics").text, "drive_archive_reads_total") == 1
