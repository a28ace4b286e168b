"""Fixtures for the mount tests: one server user and one mount per module."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.mount_proc import MountProcess, login_home
from tests.helpers.server_proc import ServerProcess

_numbers = itertools.count(1)


def new_account(server: ServerProcess, root: Path, device: str = "dev1") -> Path:
    """A fresh user on `server`, logged in with its own home under `root`."""
    name = f"m{next(_numbers)}x{uuid.uuid4().hex[:8]}"
    server.add_user(name, "pw-" + name)
    return login_home(server, root / f"home-{name}-{device}", name, "pw-" + name, device)


@pytest.fixture(scope="module")
def account(shared_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_account(shared_server, tmp_path_factory.mktemp("acct"))


@pytest.fixture(scope="module")
def mounted(account: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MountProcess]:
    with MountProcess(account, tmp_path_factory.mktemp("mnt") / "mnt") as m:
        yield m


@pytest.fixture
def workdir(mounted: MountProcess, request: pytest.FixtureRequest) -> Path:
    d = mounted.mnt / request.node.name.replace("[", "_").replace("]", "_")
    d.mkdir()
    return d
