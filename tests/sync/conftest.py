"""Fixtures for the sync tests: one account on the shared server, several devices (homes),
each mounted in its own subprocess; waits with deadlines for convergence."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from syncd.state import ROOT_INO, Node, StateDB
from tests.helpers.mount_proc import MountProcess, drive, login_home
from tests.helpers.server_proc import ServerProcess
from tests.helpers.tcp_proxy import TcpProxy

T = TypeVar("T")
_numbers = itertools.count(1)

CONVERGE_SECONDS = 30.0
SYNC_ENV = {"DRIVE_FETCH_TIMEOUT": "3"}


class Account:
    """One user on a server; `device(name)` logs a new home in (optionally via `url`)."""

    def __init__(self, server: ServerProcess, root: Path) -> None:
        self.server = server
        self.root = root
        self.name = f"s{next(_numbers)}x{uuid.uuid4().hex[:6]}"
        self.password = "pw-" + self.name
        server.add_user(self.name, self.password)

    def device(self, device: str, url: str | None = None) -> Path:
        home = self.root / f"home-{device}"
        if url is None:
            return login_home(self.server, home, self.name, self.password, device)
        real = self.server.url
        self.server.url = url
        try:
            return login_home(self.server, home, self.name, self.password, device)
        finally:
            self.server.url = real

    def mount(self, home: Path, name: str) -> MountProcess:
        return MountProcess(home, self.root / f"mnt-{name}", env=SYNC_ENV).start()


@pytest.fixture
def account(shared_server: ServerProcess, tmp_path: Path) -> Account:
    return Account(shared_server, tmp_path)


@contextlib.contextmanager
def device_pair(
    account: Account, *, url_a: str | None = None, url_b: str | None = None
) -> Iterator[tuple[MountProcess, MountProcess]]:
    """devA and devB of `account` mounted (each optionally through another URL, e.g. a
    proxy the test can cut); both unmounted at the end whatever happened."""
    a = account.mount(account.device("devA", url=url_a), "a")
    try:
        b = account.mount(account.device("devB", url=url_b), "b")
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()


@pytest.fixture
def two_mounts(account: Account) -> Iterator[tuple[MountProcess, MountProcess]]:
    with device_pair(account) as pair:
        yield pair


def wait_for(probe: Callable[[], T | None], what: str,
             timeout: float = CONVERGE_SECONDS) -> T:  # fmt: skip
    """Call `probe` until it returns something other than None/False; fail at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = probe()
            if value is not None and value is not False:
                return value
        except OSError as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} ({last_exc})")
        time.sleep(0.05)


def read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def metric(server: ServerProcess, name: str) -> float:
    with server.client() as http:
        text = http.get("/metrics").text
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.MULTILINE)
    assert m, f"metric {name} not found"
    return float(m.group(1))


def tree(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file (folders: "dir") below `root`."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        for d in dirnames:
            out[(rel / d).as_posix() + "/"] = "dir"
        for name in filenames:
            out[(rel / name).as_posix()] = hashlib.sha256(
                (Path(dirpath) / name).read_bytes()
            ).hexdigest()
    return out


@pytest.fixture
def a_offline_b(account: Account) -> Iterator[tuple[MountProcess, MountProcess, TcpProxy]]:
    """A (through a proxy the test can cut) and B (always online)."""
    with TcpProxy(account.server.port) as proxy, device_pair(account, url_a=proxy.url) as (a, b):
        try:
            yield a, b, proxy
        finally:
            proxy.restore()


def synced(m: MountProcess) -> bool:
    """Nothing pending and nothing parked (refused by the server and kept)."""
    body = json.loads(drive(m.home, "status", "--json").stdout)
    return body["pending"] == 0 and not body["parked"]


def converge(a: MountProcess, b: MountProcess, timeout: float = 40) -> dict[str, str]:
    """Wait until A and B show the same tree with nothing pending or parked; return it."""

    def probe() -> dict[str, str] | None:
        ta, tb = tree(a.mnt), tree(b.mnt)
        return ta if ta == tb and synced(a) and synced(b) else None

    try:
        return wait_for(probe, "A and B to converge", timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\nA: {tree(a.mnt)}\nB: {tree(b.mnt)}\nA log:\n{a.log_text()[-4000:]}"
        ) from None


def go_offline(a: MountProcess, proxy: TcpProxy) -> None:
    """Cut A's proxy and wait until A says it is offline."""
    proxy.cut()
    wait_for(lambda: a.status().get("online") is False or None, "A noticing it is offline")


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateDB]:
    """A client state database holding only the root folder (listed)."""
    st = StateDB(tmp_path / "state")
    with st.write() as w:
        w.put_node(Node(ino=ROOT_INO, parent=ROOT_INO, name="", kind="dir", mode=0o755,
                        server_id=1, rev=1, listed=True))  # fmt: skip
    yield st
    st.close()
