"""A server whose blocks are in S3 (moto's server on loopback): files go in as objects of
the bucket and come back byte for byte; a bucket that is missing stops the server at start
with one line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.helpers.moto_s3 import CREDENTIALS, REGION, MotoS3
from tests.helpers.server_proc import ServerProcess, drive_command

_ENV = {"AWS_ACCESS_KEY_ID": CREDENTIALS["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS["secret_access_key"]}  # fmt: skip


def test_files_are_stored_in_the_bucket_and_read_back(tmp_path: Path, moto_s3: MotoS3) -> None:
    bucket = moto_s3.new_bucket()
    config = {"blocks": f"s3://{bucket}/drive", "s3_endpoint": moto_s3.endpoint,
              "s3_region": REGION}  # fmt: skip
    data = os.urandom(3 << 20)
    with ServerProcess(tmp_path / "data", config=config, env=_ENV) as srv:
        srv.add_user("ann", "pw-ann")
        token = srv.login("ann", "pw-ann")
        with srv.client(token) as http:
            r = http.post("/files/upload", params={"path": "/d/big.bin", "uploadType": "media"},
                          content=data)  # fmt: skip
            assert r.status_code in (200, 201), r.text
            got = http.get("/files/download", params={"path": "/d/big.bin"})
            assert got.status_code == 200
            assert got.content == data
    keys = [o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys, "no block reached the bucket"
    assert all(k.startswith("drive/") for k in keys), keys
    assert not (tmp_path / "data" / "blocks").exists() or not any(
        (tmp_path / "data" / "blocks").rglob("*.*")
    )


def test_a_missing_bucket_stops_the_server_with_one_line(tmp_path: Path, moto_s3: MotoS3) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "server.toml").write_text(
        f'blocks = "s3://no-such-bucket-here/drive"\ns3_endpoint = "{moto_s3.endpoint}"\n'
        f's3_region = "{REGION}"\n'
    )
    done = subprocess.run(
        drive_command("server", "serve", "--data", str(data), "--listen", "127.0.0.1:0"),
        capture_output=True, text=True, timeout=120, check=False, env={**os.environ, **_ENV},
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1, done.stderr
    assert "no-such-bucket-here" in done.stderr
    assert "Traceback" not in done.stderr


def _serve_once(data: Path, toml: str) -> subprocess.CompletedProcess[str]:
    """Start a server on `toml` without the AWS_* variables (it must stop at once)."""
    data.mkdir()
    (data / "server.toml").write_text(toml)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run(
        drive_command("server", "serve", "--data", str(data), "--listen", "127.0.0.1:0"),
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip


def test_credentials_in_server_toml_are_used_and_wrong_ones_stop_the_server(
    tmp_path: Path, moto_s3: MotoS3
) -> None:
    bucket = moto_s3.new_bucket()
    where = (f'blocks = "s3://{bucket}/drive"\ns3_endpoint = "{moto_s3.endpoint}"\n'
             f's3_region = "{REGION}"\n')  # fmt: skip
    with moto_s3.auth() as (key_id, secret):
        done = _serve_once(
            tmp_path / "bad",
            where + f's3_access_key_id = "{key_id}"\ns3_secret_access_key = "not-the-secret"\n',
        )
        assert done.returncode != 0
        assert done.stderr.count("\n") == 1, done.stderr
        assert "credentials" in done.stderr
        assert "not-the-secret" not in done.stderr
        (tmp_path / "good").mkdir()
        (tmp_path / "good" / "server.toml").write_text(
            where + f's3_access_key_id = "{key_id}"\ns3_secret_access_key = "{secret}"\n'
        )
        env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
        with ServerProcess(tmp_path / "good", env=env) as srv:
            srv.add_user("ann", "pw-ann")
            with srv.client(srv.login("ann", "pw-ann")) as http:
                r = http.post("/files/upload", params={"path": "/a", "uploadType": "media"},
                              content=b"x" * 5000)  # fmt: skip
                assert r.status_code == 201, r.text


def test_half_a_key_pair_is_refused_with_one_line(tmp_path: Path, moto_s3: MotoS3) -> None:
    done = _serve_once(
        tmp_path / "data",
        f'blocks = "s3://any-bucket/drive"\ns3_endpoint = "{moto_s3.endpoint}"\n'
        's3_access_key_id = "AKIDONLY"\n',
    )
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1, done.stderr
    assert "s3_secret_access_key" in done.stderr
