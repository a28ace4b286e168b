"""Never lose, corrupt or silently drop a write (docs/protocol.md "Rules"): one test per
way the drive used to lose or corrupt data, each with real mounts of one account on a real
server, device A behind a proxy the test can cut (offline spells)."""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.mount_proc import MountProcess, drive, requires_fuse
from tests.helpers.tcp_proxy import TcpProxy
from tests.sync.conftest import Account, converge, go_offline, read_or_none, wait_for

pytestmark = [pytest.mark.e2e, requires_fuse]


def _contents(root: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def test_truncate_then_extend_during_uploads_reads_zeros_everywhere(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Item 1: truncate + extend while the uploader works on the file never brings the
    truncated bytes back, on this device or on any other."""
    a, b, _ = a_offline_b
    rng = random.Random(12)
    expected: dict[str, bytes] = {}
    for i in range(24):
        path = a.mnt / f"t{i}.bin"
        original = rng.randbytes(200_000)
        path.write_bytes(original)
        time.sleep(rng.choice([0, 0.001, 0.01, 0.03, 0.08, 0.2]))
        fd = os.open(path, os.O_RDWR)
        try:
            os.ftruncate(fd, 10_000)
            os.pwrite(fd, b"\x01", 75_000)
            os.fsync(fd)
        finally:
            os.close(fd)
        expected[path.name] = original[:10_000] + bytes(65_000) + b"\x01"
    a.wait_synced(timeout=60)
    subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=False)
    for name, want in expected.items():
        got = (a.mnt / name).read_bytes()
        assert got == want, f"{name} on A: bytes 10000..75000 are not zeros"
    wait_for(
        lambda: all(read_or_none(b.mnt / n) == w for n, w in expected.items()),
        "every truncated file on B, exactly",
    )
    assert "giving up" not in a.log_text()


def test_a_write_during_conflict_resolution_is_kept(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Item 2: A edits offline (v1), B edits online, A reconnects and keeps writing while
    its conflict is resolved: every version A's `close()` acknowledged ends up somewhere."""
    a, b, proxy = a_offline_b
    (b.mnt / "f.txt").write_bytes(b"original\n")
    wait_for(lambda: read_or_none(a.mnt / "f.txt") == b"original\n", "f.txt on A")
    go_offline(a, proxy)
    (a.mnt / "f.txt").write_bytes(b"A v1\n")
    (b.mnt / "f.txt").write_bytes(b"B's version\n")
    b.wait_synced()
    proxy.restore()
    last = b""
    deadline = time.monotonic() + 3
    n = 2
    while time.monotonic() < deadline:
        last = f"A v{n}\n".encode()
        (a.mnt / "f.txt").write_bytes(last)  # each close() returned 0: acknowledged
        n += 1
        time.sleep(0.02)
    final = converge(a, b)
    on_b = _contents(b.mnt)
    assert last in on_b.values(), f"the last acknowledged write is on no device: {on_b}"
    copies = [name for name in final if "conflicted copy from devA" in name]
    assert copies, final
    assert all(on_b[c].startswith(b"A v") for c in copies), on_b
    listed = json.loads(drive(a.home, "status", "--json").stdout)["conflicts"]
    assert {c["saved_as"] for c in listed} == {"/" + c for c in copies}
    for c in copies:
        (a.mnt / c).unlink()
    after = json.loads(drive(a.home, "status", "--json").stdout)["conflicts"]
    assert after == []  # a conflict notice goes once its copy is deleted


def test_new_file_in_a_folder_deleted_elsewhere_recreates_the_folder(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Item 3: the edit wins over the folder's delete, the folder path is re-created."""
    a, b, proxy = a_offline_b
    (b.mnt / "B").mkdir()
    (b.mnt / "B" / "old.txt").write_bytes(b"old\n")
    wait_for(lambda: read_or_none(a.mnt / "B" / "old.txt") == b"old\n", "B/old.txt on A")
    go_offline(a, proxy)
    (a.mnt / "B" / "new.txt").write_bytes(b"written offline on A\n")
    subprocess.run(["rm", "-r", str(b.mnt / "B")], check=True)
    b.wait_synced()
    proxy.restore()
    final = converge(a, b)
    assert (b.mnt / "B" / "new.txt").read_bytes() == b"written offline on A\n"
    assert "B/old.txt" not in final, final
    assert "not synced" not in a.log_text()


def test_new_file_in_a_folder_renamed_elsewhere_follows_it(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Item 3: the file follows its folder to its new place."""
    a, b, proxy = a_offline_b
    (b.mnt / "B").mkdir()
    (b.mnt / "B" / "old.txt").write_bytes(b"old\n")
    wait_for(lambda: read_or_none(a.mnt / "B" / "old.txt") == b"old\n", "B/old.txt on A")
    go_offline(a, proxy)
    (a.mnt / "B" / "new.txt").write_bytes(b"written offline on A\n")
    os.rename(b.mnt / "B", b.mnt / "C")
    b.wait_synced()
    proxy.restore()
    final = converge(a, b)
    assert (b.mnt / "C" / "new.txt").read_bytes() == b"written offline on A\n"
    assert sorted(final) == ["C/", "C/new.txt", "C/old.txt"], final


def test_a_folder_removed_here_after_it_moved_elsewhere_comes_back_whole(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Convergence seed 1540: A removes `y/z` offline while B renames `y` to `x`. The
    deletes name what A saw at paths that no longer lead there, so `z` and its file stay
    (moved on purpose elsewhere), and A must show them where they are, file included;
    it used to list `z` again by its old path (nothing there), so `x/z/c` was on the server
    and on B but never again on A, with nothing pending anywhere."""
    a, b, proxy = a_offline_b
    (a.mnt / "y" / "z").mkdir(parents=True)
    (a.mnt / "y" / "z" / "c").write_bytes(b"made on A\n")
    a.wait_synced()
    wait_for(lambda: read_or_none(b.mnt / "y" / "z" / "c") == b"made on A\n", "y/z/c on B")
    go_offline(a, proxy)
    os.rename(b.mnt / "y", b.mnt / "x")
    b.wait_synced()
    subprocess.run(["rm", "-r", str(a.mnt / "y" / "z")], check=True)
    proxy.restore()
    final = converge(a, b)
    assert (a.mnt / "x" / "z" / "c").read_bytes() == b"made on A\n", final
    assert sorted(final) == ["x/", "x/z/", "x/z/c"], final


def test_move_into_a_folder_deleted_elsewhere_recreates_it(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    a, b, proxy = a_offline_b
    (b.mnt / "D").mkdir()
    (b.mnt / "x.txt").write_bytes(b"x\n")
    wait_for(lambda: read_or_none(a.mnt / "x.txt") == b"x\n", "x.txt on A")
    assert os.listdir(a.mnt / "D") == []
    go_offline(a, proxy)
    os.rename(a.mnt / "x.txt", a.mnt / "D" / "x.txt")
    (b.mnt / "D").rmdir()
    b.wait_synced()
    proxy.restore()
    converge(a, b)
    assert (b.mnt / "D" / "x.txt").read_bytes() == b"x\n"


def test_crossed_folder_moves_keep_the_first_and_both_folders(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """A moves folder Q into P offline while B moves P into Q: the server takes B's move
    (first), refuses A's (a folder into itself), and A shows Q/P with everything in both,
    not a folder inside itself (which hung path walks) nor a parked move."""
    a, b, proxy = a_offline_b
    for folder in ("P", "Q"):
        (b.mnt / folder).mkdir()
        (b.mnt / folder / f"{folder}.txt").write_bytes(folder.encode())
    wait_for(lambda: read_or_none(a.mnt / "Q" / "Q.txt") == b"Q", "Q/Q.txt on A")
    assert read_or_none(a.mnt / "P" / "P.txt") == b"P"
    go_offline(a, proxy)
    os.rename(a.mnt / "Q", a.mnt / "P" / "Q")
    (a.mnt / "P" / "Q" / "new.txt").write_bytes(b"written offline on A\n")
    os.rename(b.mnt / "P", b.mnt / "Q" / "P")
    b.wait_synced()
    proxy.restore()
    final = converge(a, b)
    assert sorted(final) == ["Q/", "Q/P/", "Q/P/P.txt", "Q/Q.txt", "Q/new.txt"], final
    assert (b.mnt / "Q" / "new.txt").read_bytes() == b"written offline on A\n"
    assert subprocess.run(["ls", "-R", str(a.mnt)], capture_output=True, timeout=10).returncode == 0


def test_rename_onto_a_name_taken_elsewhere_keeps_both(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Item 3: a rename onto a name another device created meanwhile gets a conflicted
    name; the other device's file is untouched, also by a later edit."""
    a, b, proxy = a_offline_b
    (b.mnt / "draft.txt").write_bytes(b"A's draft\n")
    wait_for(lambda: read_or_none(a.mnt / "draft.txt") == b"A's draft\n", "draft on A")
    go_offline(a, proxy)
    os.rename(a.mnt / "draft.txt", a.mnt / "final.txt")
    (b.mnt / "final.txt").write_bytes(b"B's final\n")
    b.wait_synced()
    proxy.restore()
    final = converge(a, b)
    assert (b.mnt / "final.txt").read_bytes() == b"B's final\n"
    copies = [n for n in final if n.startswith("final (conflicted copy from devA")]
    assert len(copies) == 1, final
    assert (b.mnt / copies[0]).read_bytes() == b"A's draft\n"
    (a.mnt / copies[0]).write_bytes(b"A edits its copy\n")
    converge(a, b)
    assert (b.mnt / "final.txt").read_bytes() == b"B's final\n"
    assert (b.mnt / copies[0]).read_bytes() == b"A edits its copy\n"


def test_paths_the_server_would_refuse_fail_at_the_system_call(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Item 3: over 4,096 bytes of path is ENAMETOOLONG at once, never acknowledged."""
    a, _, _ = a_offline_b
    level = "d" * 203  # each level adds 204 bytes to the drive path
    fds = [os.open(a.mnt, os.O_RDONLY)]
    try:
        with pytest.raises(OSError, match="too long") as info:  # noqa: PT012 (stops there)
            for _ in range(40):
                os.mkdir(level, dir_fd=fds[-1])
                fds.append(os.open(level, os.O_RDONLY, dir_fd=fds[-1]))
        assert info.value.errno == errno.ENAMETOOLONG
        assert len(fds) - 1 == 4096 // 204  # made: /d.../d... up to 4,080 bytes
        with pytest.raises(OSError, match="too long") as info2:
            os.open("f" * 250, os.O_WRONLY | os.O_CREAT, dir_fd=fds[-1])
        assert info2.value.errno == errno.ENAMETOOLONG
        with pytest.raises(OSError, match="too long") as info3:
            os.rename(level, "e" * 255, src_dir_fd=fds[0], dst_dir_fd=fds[0])
        assert info3.value.errno == errno.ENAMETOOLONG
        os.rename(level, "e" * 203, src_dir_fd=fds[0], dst_dir_fd=fds[0])  # same length: fine
    finally:
        for fd in fds:
            os.close(fd)
    a.wait_synced()
    assert a.pending() == 0
    assert "not synced" not in a.log_text()


def test_over_quota_is_refused_at_once_or_parked_kept_and_reported(
    account: Account, tmp_path: Path
) -> None:
    """Item 9: a write the client knows cannot fit fails with EDQUOT; one it could not know
    about (another device used the space) stays on the device, `drive status` says
    "not synced: REASON", and `drive unmount --wait` exits non-zero."""
    from tests.helpers.mount_proc import login_home
    from tests.sync.conftest import SYNC_ENV

    user = f"q{os.getpid()}{int(time.time() * 1000) % 100000}"
    account.server.add_user(user, "pw-" + user, quota="1M")
    home = login_home(account.server, tmp_path / "home-q", user, "pw-" + user, "devQ")
    other = login_home(account.server, tmp_path / "home-r", user, "pw-" + user, "devR")
    rng = random.Random(9)
    with MountProcess(home, tmp_path / "mnt-q", env=SYNC_ENV) as m:
        wait_for(lambda: m.status().get("quota_bytes") == 1 << 20, "Q learning its quota")
        # `df` shows the account's quota as the size and its usage as used (statfs).
        df = ["df", "-B1", "--output=size,used", str(m.mnt)]
        shown = subprocess.run(df, capture_output=True, text=True, check=True).stdout.split()
        used = m.status()["used_bytes"]  # in 4 KiB blocks, as statfs counts
        assert (int(shown[-2]), int(shown[-1])) == (1 << 20, -(-used // 4096) * 4096)
        with pytest.raises(OSError, match="quota") as info:
            (m.mnt / "huge.bin").write_bytes(rng.randbytes(3 << 20))
        assert info.value.errno == errno.EDQUOT
        (m.mnt / "huge.bin").unlink()  # what fit before the refusal stays, as on a full disk
        (m.mnt / "small.txt").write_bytes(b"fits\n")
        m.wait_synced()
        with MountProcess(other, tmp_path / "mnt-r", env=SYNC_ENV) as r:
            (r.mnt / "from-r.bin").write_bytes(rng.randbytes(700_000))
            r.wait_synced()
        data = rng.randbytes(700_000)  # Q does not know R used the room
        (m.mnt / "big.bin").write_bytes(data)

        def refused() -> str | None:
            out = drive(home, "status").stdout
            return out if "not synced" in out else None

        status = wait_for(refused, "the refused upload in drive status")
        assert "big.bin" in status
        assert "quota" in status
        assert (m.mnt / "big.bin").read_bytes() == data  # kept on the device
        done = drive(home, "unmount", str(m.mnt), "--wait", timeout=60)
        assert done.returncode != 0
        assert "not synced" in done.stderr
        assert os.path.ismount(m.mnt)
    token = drive(home, "auth", "token").stdout.strip()
    with account.server.client(token) as http:
        listing = http.get("/api/v1/list", params={"path": "/"}).json()
    names = {e["name"] for e in listing["entries"]}
    assert names == {"small.txt", "from-r.bin"}


def test_a_stale_delete_loses_to_a_newer_edit(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Item 4: A deletes offline, B edits; the edit wins and comes back on A."""
    a, b, proxy = a_offline_b
    (b.mnt / "x.txt").write_bytes(b"first\n")
    wait_for(lambda: read_or_none(a.mnt / "x.txt") == b"first\n", "x.txt on A")
    go_offline(a, proxy)
    (a.mnt / "x.txt").unlink()
    (b.mnt / "x.txt").write_bytes(b"B's newer edit\n")
    b.wait_synced()
    proxy.restore()
    converge(a, b)
    assert (a.mnt / "x.txt").read_bytes() == b"B's newer edit\n"
    assert (b.mnt / "x.txt").read_bytes() == b"B's newer edit\n"


def test_two_saves_offline_over_a_file_replaced_elsewhere_leave_no_temporary_file(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """A saves `a` twice offline with `sed -i` (temporary file renamed over it) while B
    moves `a` away and makes a new `a`. A's saves may not replace B's new file (another
    file than A saw), so A's latest save becomes a conflicted copy, and no temporary file
    is left anywhere. (Convergence seed 1540 left one behind when the first save's commit
    answer was lost: tests/sync/test_sync_model.py.)"""
    a, b, proxy = a_offline_b
    (b.mnt / "a").write_bytes(b"v1\n")
    wait_for(lambda: read_or_none(a.mnt / "a") == b"v1\n", "a on A")
    go_offline(a, proxy)
    os.rename(b.mnt / "a", b.mnt / "moved")
    (b.mnt / "a").write_bytes(b"B's new a\n")
    b.wait_synced()
    subprocess.run(["sed", "-i", "s/v1/v2/", str(a.mnt / "a")], check=True)
    subprocess.run(["sed", "-i", "s/v2/v3/", str(a.mnt / "a")], check=True)
    proxy.restore()
    final = converge(a, b)
    names = sorted(final)
    assert not [n for n in names if n.startswith((".sed", "sed"))], names
    assert (b.mnt / "a").read_bytes() == b"B's new a\n"
    assert (b.mnt / "moved").read_bytes() == b"v1\n"
    copies = [n for n in names if n.startswith("a (conflicted copy")]
    assert [(b.mnt / n).read_bytes() for n in copies] == [b"v3\n"], names


def test_sed_in_place_keeps_the_history(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Item 6: an editor's save (temporary file renamed over the original) is the next
    revision of the file; nothing goes to the trash."""
    a, b, _ = a_offline_b
    (a.mnt / "notes.txt").write_bytes(b"alpha\n")
    a.wait_synced()
    subprocess.run(["sed", "-i", "s/alpha/beta/", str(a.mnt / "notes.txt")], check=True)
    a.wait_synced()
    subprocess.run(["sed", "-i", "s/beta/gamma/", str(a.mnt / "notes.txt")], check=True)
    final = converge(a, b)
    assert sorted(final) == ["notes.txt"], final
    assert (b.mnt / "notes.txt").read_bytes() == b"gamma\n"
    revs = json.loads(drive(a.home, "revisions", "/notes.txt", "--json").stdout)
    assert [r["size"] for r in revs] == [6, 5, 6], revs
    trash = drive(a.home, "trash", "--json").stdout
    assert "notes.txt" not in trash
    oldest = min(r["revision"] for r in revs)
    assert drive(a.home, "restore", "/notes.txt", str(oldest)).returncode == 0
    wait_for(lambda: read_or_none(b.mnt / "notes.txt") == b"alpha\n", "restored on B")


def test_a_new_device_mirrors_the_tree_and_works_offline(account: Account) -> None:
    """Item 7: right after the first mount every folder is fetched in the background;
    then every folder lists and accepts new files with the server gone."""
    b = account.mount(account.device("devB"), "b")
    try:
        for top in ("p", "q"):
            for sub in ("r", "s"):
                (b.mnt / top / sub / "t").mkdir(parents=True)
                (b.mnt / top / sub / "t" / "leaf.txt").write_bytes(f"{top}{sub}\n".encode())
        b.wait_synced()
        with TcpProxy(account.server.port) as proxy:
            a = account.mount(account.device("devA", url=proxy.url), "a")
            try:
                wait_for(
                    lambda: (a.status().get("mirror") or {}).get("complete"),
                    "A's offline copy of the tree",
                )
                go_offline(a, proxy)
                started = time.monotonic()
                found = sorted(
                    str(p.relative_to(a.mnt)) for p in a.mnt.rglob("*") if p.is_dir()
                )  # fmt: skip
                assert "q/s/t" in found, found
                (a.mnt / "q" / "s" / "t" / "offline.txt").write_bytes(b"made offline\n")
                assert time.monotonic() - started < 5
                proxy.restore()
                wait_for(
                    lambda: (
                        read_or_none(b.mnt / "q" / "s" / "t" / "offline.txt") == b"made offline\n"
                    ),
                    "the offline file on B",
                )
            finally:
                a.stop()
    finally:
        b.stop()


def test_own_changes_made_outside_the_mount_reach_it(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Item 5: a restore made with this device's own token shows in its own mount, and the
    next local edit is a plain new revision, not a conflicted copy with itself."""
    a, b, _ = a_offline_b
    (a.mnt / "doc.txt").write_bytes(b"one\n")
    a.wait_synced()
    (a.mnt / "doc.txt").write_bytes(b"two\n")
    a.wait_synced()
    revs = json.loads(drive(a.home, "revisions", "/doc.txt", "--json").stdout)
    first = min(r["revision"] for r in revs)
    assert drive(a.home, "restore", "/doc.txt", str(first)).returncode == 0
    wait_for(lambda: read_or_none(a.mnt / "doc.txt") == b"one\n", "the restore on A itself")
    (a.mnt / "doc.txt").write_bytes(b"three\n")
    final = converge(a, b)
    assert sorted(final) == ["doc.txt"], final
    assert (b.mnt / "doc.txt").read_bytes() == b"three\n"


def test_renames_over_names_just_created_leave_no_ghost(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Item 5: renaming over a file this device had just created, then editing the result,
    gives one file with the edit on every device."""
    a, b, _ = a_offline_b
    (a.mnt / "other.txt").write_bytes(b"other\n")
    a.wait_synced()
    (a.mnt / "new.txt").write_bytes(b"new\n")
    os.rename(a.mnt / "other.txt", a.mnt / "new.txt")
    (a.mnt / "new.txt").write_bytes(b"edited after the rename\n")
    final = converge(a, b)
    assert sorted(final) == ["new.txt"], final
    assert (b.mnt / "new.txt").read_bytes() == b"edited after the rename\n"
