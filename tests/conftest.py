"""Fixtures shared by the whole suite. Keep it small and generic; helpers live in helpers/."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.helpers import moto_s3, pg_cluster
from tests.helpers.server_proc import ServerProcess

if TYPE_CHECKING:
    from tests.helpers.moto_s3 import MotoS3

_user_numbers = itertools.count(1)


@pytest.fixture(scope="session", autouse=True)
def _stop_test_services() -> Iterator[None]:
    """Stop the test PostgreSQL cluster and moto server (if a test started them) when the
    session ends."""
    yield
    pg_cluster.stop_cluster()
    moto_s3.stop_shared()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A fresh server process with its own data directory (stopped after the test)."""
    with ServerProcess(tmp_path / "server-data") as srv:
        yield srv


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server process for the whole session: give each test its own user (`new_user`)."""
    with ServerProcess(tmp_path_factory.mktemp("shared") / "server-data") as srv:
        yield srv


@pytest.fixture
def new_user(shared_server: ServerProcess) -> tuple[str, str]:
    """A fresh user on the shared server: returns (name, token)."""
    name = f"user{next(_user_numbers)}"
    shared_server.add_user(name, "pw-" + name)
    return name, shared_server.login(name, "pw-" + name)


@pytest.fixture(scope="session", name="moto_s3")
def moto_s3_fixture() -> MotoS3:
    """moto's S3 server on a free loopback port for the whole session, the one
    `DRIVE_TEST_BLOCKS=s3` servers use too (tests use their own buckets:
    `moto_s3.new_bucket()`). moto is imported on first use: half a second that only the
    tests using it pay."""
    return moto_s3.shared()
