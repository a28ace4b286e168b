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
"""

from __future__ import annotations

import contextlib
import json
import socket
import uuid
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import boto3
import moto.settings
from moto.core.authorization import ActionAuthenticatorMixin
from moto.server import ThreadedMotoServer

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
