"""Delta sync on the wire (R7, N3): only changed chunks travel, measured at the server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mount_proc import MountProcess, requires_fuse
from tests.helpers.server_proc import ServerProcess
from tests.sync.conftest import Account, metric

pytestmark = [pytest.mark.e2e, requires_fuse]

MIB = 1 << 20
RECEIVED = "drive_block_bytes_received_total"


def _token(home: Path) -> str:
    return str(json.loads((home / "config.json").read_text())["token"])


def _meta(server: ServerProcess, home: Path, path: str) -> dict[str, Any]:
    with server.client(_token(home)) as http:
        r = http.get("/api/v1/meta", params={"path": path})
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body


def _server_sha256(server: ServerProcess, home: Path, path: str) -> str:
    h = hashlib.sha256()
    with (
        server.client(_token(home), timeout=120) as http,
        http.stream("GET", "/files/download", params={"path": path}) as r,
    ):
        r.raise_for_status()
        for piece in r.iter_bytes(1 << 20):
            h.update(piece)
    return h.hexdigest()


def _write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    with open(path, "wb") as f:
        for i in range(0, size, 8 * MIB):
            f.write(data[i : i + 8 * MIB])
    return data


@pytest.fixture
def one_mount(account: Account) -> Any:
    with MountProcess(account.device("delta"), account.root / "mnt") as m:
        yield m


def test_one_byte_change_in_256_mib_sends_at_most_two_chunks(
    account: Account, one_mount: MountProcess
) -> None:
    server, m = account.server, one_mount
    data = bytearray(_write_random(m.mnt / "big.bin", 256 * MIB))
    m.wait_synced(timeout=120)
    before = _meta(server, m.home, "/big.bin")
    assert before["size"] == 256 * MIB
    received = metric(server, RECEIVED)
    where = 100 * MIB + 12345
    data[where] = 0 if data[where] else 1
    with open(m.mnt / "big.bin", "r+b") as f:
        f.seek(where)
        f.write(bytes([data[where]]))
    m.wait_synced(timeout=60)
    sent = metric(server, RECEIVED) - received
    after = _meta(server, m.home, "/big.bin")
    new = {tuple(b) for b in after["blocks"]} - {tuple(b) for b in before["blocks"]}
    assert after["rev"] == before["rev"] + 1
    assert 1 <= len(new) <= 2, new
    assert sent <= sum(size for _, size in new) + 4096, (sent, new)
    assert _server_sha256(server, m.home, "/big.bin") == hashlib.sha256(data).hexdigest()


def test_insert_at_start_saved_like_an_editor_sends_at_most_three_chunks(
    account: Account, one_mount: MountProcess
) -> None:
    server, m = account.server, one_mount
    data = _write_random(m.mnt / "doc.bin", 48 * MIB)
    m.wait_synced(timeout=60)
    before = _meta(server, m.home, "/doc.bin")
    received = metric(server, RECEIVED)
    edited = os.urandom(100) + data
    tmp = m.mnt / ".doc.bin.swp"
    with open(tmp, "wb") as f:
        f.write(edited)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, m.mnt / "doc.bin")
    m.wait_synced(timeout=60)
    sent = metric(server, RECEIVED) - received
    after = _meta(server, m.home, "/doc.bin")
    new = {tuple(b) for b in after["blocks"]} - {tuple(b) for b in before["blocks"]}
    assert after["size"] == len(edited)
    assert 1 <= len(new) <= 3, new
    assert sent <= sum(size for _, size in new) + 4096, (sent, new)
    assert _server_sha256(server, m.home, "/doc.bin") == hashlib.sha256(edited).hexdigest()
    assert (m.mnt / "doc.bin").read_bytes() == edited


def test_copying_a_file_already_on_the_drive_sends_no_block_data(
    account: Account, one_mount: MountProcess
) -> None:
    server, m = account.server, one_mount
    data = _write_random(m.mnt / "orig.bin", 6 * MIB)
    m.wait_synced()
    received = metric(server, RECEIVED)
    (m.mnt / "copy.bin").write_bytes((m.mnt / "orig.bin").read_bytes())
    m.wait_synced()
    assert metric(server, RECEIVED) == received
    assert _meta(server, m.home, "/copy.bin")["size"] == len(data)


def test_big_aligned_and_small_odd_writes_into_one_file_reach_the_server_exactly(
    account: Account, one_mount: MountProcess
) -> None:
    # `cp` writes 1 MiB pieces through a write-only handle: those skip both page caches
    # (the kernel's for the mount, ours for the dirty file). Small or unaligned writes
    # through a read-write handle take the page cache, over and under the direct ones.
    server, m = account.server, one_mount
    src = account.root / "src.bin"
    expected = bytearray(_write_random(src, 20 * MIB + 4097))
    subprocess.run(["cp", str(src), str(m.mnt / "mixed.bin")], check=True, timeout=60)
    edits = [
        (5 * MIB + 1, os.urandom(3)),  # tiny, unaligned: buffered
        (8 * MIB, os.urandom(MIB)),  # aligned and big: O_DIRECT, over buffered pages
        (12 * MIB + 7, os.urandom(100 * 1024)),  # big but unaligned: buffered
        (20 * MIB, os.urandom(4097)),  # the unaligned tail again
    ]
    with open(m.mnt / "mixed.bin", "r+b", buffering=0) as f:
        for where, data in edits:
            f.seek(where)
            assert f.write(data) == len(data)
            expected[where : where + len(data)] = data
        f.seek(0)
        assert f.read() == expected  # dirty data read back, before the upload
    assert (m.mnt / "mixed.bin").read_bytes() == expected
    m.wait_synced(timeout=120)
    assert _server_sha256(server, m.home, "/mixed.bin") == hashlib.sha256(expected).hexdigest()
