"""Conflicts and offline work (R13, R14): every device converges and nothing is lost."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator

import pytest

from syncd.conflicts import conflicted_name
from tests.helpers.mount_proc import MountProcess, requires_fuse
from tests.helpers.tcp_proxy import TcpProxy
from tests.sync.conftest import Account, device_pair, read_or_none, tree, wait_for

pytestmark = [pytest.mark.e2e, requires_fuse]


@pytest.fixture
def a_b_offline_capable(account: Account) -> Iterator[tuple[MountProcess, MountProcess, TcpProxy]]:
    """A (normal) and B (through a proxy the test can cut)."""
    with TcpProxy(account.server.port) as proxy, device_pair(account, url_b=proxy.url) as (a, b):
        try:
            yield a, b, proxy
        finally:
            proxy.restore()


_last: list[object] = []


def converged(a: MountProcess, b: MountProcess) -> dict[str, str] | None:
    ta, tb = tree(a.mnt), tree(b.mnt)
    _last[:] = [ta, tb, a.pending(), b.pending()]
    if ta != tb or a.pending() or b.pending():
        return None
    return ta


def describe() -> str:
    if not _last:
        return "nothing probed"
    ta, tb, pa, pb = _last
    assert isinstance(ta, dict)
    assert isinstance(tb, dict)
    only_a = {k: v for k, v in ta.items() if tb.get(k) != v}
    only_b = {k: v for k, v in tb.items() if ta.get(k) != v}
    return f"A pending {pa}, B pending {pb}; differs on A: {only_a}; on B: {only_b}"


def test_concurrent_edits_keep_both_versions(
    a_b_offline_capable: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    a, b, proxy = a_b_offline_capable
    (a.mnt / "report.txt").write_bytes(b"original\n")
    (a.mnt / "gone.txt").write_bytes(b"will be deleted on A\n")
    (a.mnt / "moved.txt").write_bytes(b"will be renamed on A\n")
    wait_for(lambda: read_or_none(b.mnt / "moved.txt") == b"will be renamed on A\n", "files on B")
    assert read_or_none(b.mnt / "report.txt") == b"original\n"
    assert read_or_none(b.mnt / "gone.txt") is not None
    proxy.cut()
    (a.mnt / "report.txt").write_bytes(b"A's version\n")
    (a.mnt / "gone.txt").unlink()
    os.rename(a.mnt / "moved.txt", a.mnt / "renamed.txt")
    a.wait_synced()
    (b.mnt / "report.txt").write_bytes(b"B's version\n")
    (b.mnt / "gone.txt").write_bytes(b"B edited the file A deleted\n")
    (b.mnt / "moved.txt").write_bytes(b"B edited the file A renamed\n")
    wait_for(lambda: b.status().get("online") is False, "B noticing it is offline")
    proxy.restore()
    try:
        final = wait_for(lambda: converged(a, b), "A and B to converge", timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {describe()}\n{b.log_text()[-3000:]}") from None
    names = sorted(k for k in final if not k.endswith("/"))
    copies = [n for n in names if "conflicted copy from devB" in n]
    assert len(copies) == 1, names
    assert copies[0].startswith("report (conflicted copy from devB ")
    assert copies[0].endswith(").txt")
    assert (a.mnt / "report.txt").read_bytes() == b"A's version\n"  # first writer keeps the name
    assert (a.mnt / copies[0]).read_bytes() == b"B's version\n"
    assert (a.mnt / "gone.txt").read_bytes() == b"B edited the file A deleted\n"  # modify wins
    assert (a.mnt / "renamed.txt").read_bytes() == b"B edited the file A renamed\n"  # both apply
    assert not (a.mnt / "moved.txt").exists()
    assert sorted(names) == sorted(["gone.txt", "renamed.txt", "report.txt", copies[0]])


def test_offline_work_on_both_sides_converges(
    a_b_offline_capable: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    a, b, proxy = a_b_offline_capable
    (a.mnt / "keep.txt").write_bytes(b"cached on B\n")
    (a.mnt / "old").mkdir()
    (a.mnt / "old" / "inner.txt").write_bytes(b"inner\n")
    wait_for(lambda: read_or_none(b.mnt / "old" / "inner.txt") == b"inner\n", "files on B")
    assert (b.mnt / "keep.txt").read_bytes() == b"cached on B\n"
    proxy.cut()
    # B works offline: reads of cached data and all writes go on
    assert (b.mnt / "keep.txt").read_bytes() == b"cached on B\n"
    (b.mnt / "newdir" / "sub").mkdir(parents=True)
    for i in range(5):
        (b.mnt / "newdir" / "sub" / f"f{i}.txt").write_bytes(f"offline {i}\n".encode() * 100)
    os.rename(b.mnt / "newdir", b.mnt / "newdir2")
    os.rename(b.mnt / "newdir2" / "sub" / "f0.txt", b.mnt / "newdir2" / "f0-moved.txt")
    (b.mnt / "old" / "inner.txt").write_bytes(b"inner, edited offline on B\n")
    # meanwhile A goes on
    (a.mnt / "from-a.txt").write_bytes(b"A while B was away\n")
    (a.mnt / "keep.txt").write_bytes(b"changed by A\n")
    a.wait_synced()
    assert b.pending() > 0
    proxy.restore()
    try:
        final = wait_for(lambda: converged(a, b), "A and B to converge", timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {describe()}\n{b.log_text()[-3000:]}") from None
    assert final["newdir2/f0-moved.txt"] == hashlib.sha256(b"offline 0\n" * 100).hexdigest()
    assert "newdir2/sub/f4.txt" in final
    assert "newdir/" not in final
    assert (a.mnt / "old" / "inner.txt").read_bytes() == b"inner, edited offline on B\n"
    assert (b.mnt / "keep.txt").read_bytes() == b"changed by A\n"
    assert (b.mnt / "from-a.txt").read_bytes() == b"A while B was away\n"


def test_a_taken_conflicted_copy_name_gets_a_number(
    a_b_offline_capable: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    a, b, proxy = a_b_offline_capable
    (a.mnt / "plan.txt").write_bytes(b"original\n")
    wait_for(lambda: read_or_none(b.mnt / "plan.txt") == b"original\n", "plan.txt on B")
    proxy.cut()
    (b.mnt / "plan.txt").write_bytes(b"B's plan\n")
    wait_for(lambda: b.status().get("online") is False, "B noticing it is offline")
    (a.mnt / "plan.txt").write_bytes(b"A's plan\n")
    # Every name B's conflicted copy could get in the next minute is already taken on A.
    now = time.time()
    for second in range(-2, 60):
        name = conflicted_name("plan.txt", "devB", now + second)
        (a.mnt / name).write_bytes(b"squatter\n")
    a.wait_synced()
    proxy.restore()
    b.wait_synced(timeout=60)
    numbered = wait_for(
        lambda: (
            [
                n
                for n in os.listdir(a.mnt)
                if n.startswith("plan (conflicted copy from devB") and n.endswith(") (2).txt")
            ]
            or None
        ),
        "B's copy under a numbered name on A",
    )
    assert len(numbered) == 1
    assert (a.mnt / numbered[0]).read_bytes() == b"B's plan\n"
    assert (a.mnt / "plan.txt").read_bytes() == b"A's plan\n"
