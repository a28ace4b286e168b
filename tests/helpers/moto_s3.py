"""moto's S3 server in this process, on a free loopback port: an S3 endpoint for tests.

Usage::

    with MotoS3() as s3:                        # listening on s3.endpoint
        bucket = s3.new_bucket()                # a fresh, uniquely named bucket
        store = S3BlockStore(bucket, "", S3Settings(endpoint=s3.endpoint, **CREDENTIALS))
        s3.stop(); s3.start()                   # down, then up again on the same port
        with s3.auth() as (key_id, secret):     # credentials now checked; these pass
            ...

Every server in one process shares moto's state (buckets survive a restart); tests keep
apart by using their own buckets. Credentials are not checked outside `auth()`.

`DRIVE_TEST_BLOCKS=s3` keeps the blocks of every server the tests start (`ServerProcess`,
and the in-process tests that call `use_test_blocks`) in S3 instead of `DATA/blocks/`: each
data directory gets a fresh bucket of this process's moto server (`shared()`, started on
first use like the PostgreSQL cluster of tests/helpers/pg_cluster.py), named in its
`server.toml`. moto and boto3 are imported on first use: the tests that never touch S3 do
not pay for them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moto.server import ThreadedMotoServer

ENV = "DRIVE_TEST_BLOCKS"
BLOCK_KEYS = ("blocks", "s3_endpoint", "s3_region", "s3_access_key_id", "s3_secret_access_key")
"""The server.toml keys that say where blocks live: `use_test_blocks` writes them all, and
leaves alone a test that sets any of them itself."""
CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}
"""Explicit credentials for stores in tests: nothing is looked up in the environment or
an instance metadata service."""
REGION = "us-east-1"
_ALLOW_S3 = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoS3:
    """One ThreadedMotoServer on 127.0.0.1 (see the module docstring)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None

    def start(self) -> MotoS3:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def client(self, service: str = "s3") -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["access_key_id"],
            aws_secret_access_key=CREDENTIALS["secret_access_key"],
        )

    def new_bucket(self) -> str:
        name = f"test-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    @contextlib.contextmanager
    def auth(self) -> Iterator[tuple[str, str]]:
        """Check credentials from now on (moto's IAM); yields a key allowed `s3:*`."""
        import moto.settings
        from moto.core.authorization import ActionAuthenticatorMixin

        iam = self.client("iam")
        user = f"u{uuid.uuid4().hex[:12]}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=_ALLOW_S3)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        before = moto.settings.INITIAL_NO_AUTH_ACTION_COUNT
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
        ActionAuthenticatorMixin.request_count = 0
        try:
            yield key["AccessKeyId"], key["SecretAccessKey"]
        finally:
            moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = before


_shared: MotoS3 | None = None


def wanted() -> bool:
    """True when this test run keeps its servers' blocks in S3."""
    return os.environ.get(ENV, "local") == "s3"


def shared() -> MotoS3:
    """This process's moto server, started on first use (one per pytest worker)."""
    global _shared
    if _shared is None:
        _shared = MotoS3().start()
    return _shared


def stop_shared() -> None:
    """Stop this process's moto server if one was started (end of the test session)."""
    global _shared
    if _shared is not None:
        _shared.stop()
        _shared = None


def _toml_lines(data_dir: Path) -> list[str]:
    toml = data_dir / "server.toml"
    return toml.read_text().splitlines() if toml.exists() else []


def _names_blocks(keys: Iterable[str]) -> bool:
    return any(key.split("=")[0].strip() in BLOCK_KEYS for key in keys)


def use_test_blocks(data_dir: Path, config_keys: Iterable[str] = ()) -> None:
    """Under `DRIVE_TEST_BLOCKS=s3`, point `data_dir`'s server.toml at a fresh bucket of
    `shared()`; otherwise leave `DATA/blocks/`, the default. Nothing changes when the
    server.toml or `config_keys` (a `--config` file's) already set a `BLOCK_KEYS` key: that
    test chose where its blocks or archive live."""
    if not wanted() or _names_blocks(config_keys) or _names_blocks(_toml_lines(data_dir)):
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    s3 = shared()
    settings = {
        "blocks": f"s3://{s3.new_bucket()}/blocks", "s3_endpoint": s3.endpoint,
        "s3_region": REGION, "s3_access_key_id": CREDENTIALS["access_key_id"],
        "s3_secret_access_key": CREDENTIALS["secret_access_key"],
    }  # fmt: skip
    lines = [*_toml_lines(data_dir), *(f"{k} = {json.dumps(v)}" for k, v in settings.items())]
    (data_dir / "server.toml").write_text("\n".join(lines) + "\n")


def blocks_lines(data_dir: Path, config_keys: Iterable[str] = ()) -> str:
    """The `BLOCK_KEYS` lines of `data_dir`'s server.toml: what a test that rewrites the
    file or writes a `--config` file carries over ("" if none, or if `config_keys`, the new
    file's, set blocks or S3 settings of their own)."""
    if _names_blocks(config_keys):
        return ""
    return "".join(ln + "\n" for ln in _toml_lines(data_dir) if _names_blocks([ln]))
