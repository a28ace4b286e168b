"""Randomized convergence of three devices of one account (tests/helpers/convergence.py):
a seeded plan of writes, appends, truncates, renames, editor saves, deletes, folder moves,
offline spells and kill -9 of a mount; at the end every device and the server show the same
tree, nothing is pending or parked, and every acknowledged write is on the server (live, in
a file's history or in the trash). A failing seed prints its numbered operation log, the
trees and the mounts' logs; `scripts/convergence --seed S --ops N` runs longer plans.

Below them, minimal deterministic reproductions of product bugs the random runs found (more
are in tests/sync/test_sync_model.py and test_sync_never_lose.py, each naming its seed)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from tests.helpers.convergence import run_seed
from tests.helpers.mount_proc import MountProcess, requires_fuse
from tests.helpers.tcp_proxy import TcpProxy
from tests.sync.conftest import Account, converge, go_offline, read_or_none, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow, requires_fuse]

OPS = 80


@pytest.mark.parametrize("seed", [1, 2])
def test_random_operations_on_three_devicesconverge(
    account: Account, tmp_path: Path, seed: int
) -> None:
    result = run_seed(account.server, tmp_path / "conv", seed, OPS, account.name,
                      account.password, converge_seconds=60.0)  # fmt: skip
    print(result.summary())
    assert result.spells >= 1, result.summary()
    assert result.kills >= 1, result.summary()
    assert result.ok, result.report


# -- reproductions of bugs found by the random runs --------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_folder_delete_loses_to_a_file_added_elsewhere(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Seeds 1-3 of `scripts/convergence --ops 200`: A removes a folder (rm -r: its files,
    then rmdir) while B, which A has not heard from, adds a file to it. The rmdir reaches
    the server as a non-recursive delete, answered 409 `not_empty`. Edits beat deletes:
    the folder stays with B's file, on A too; nothing stays parked."""
    a, b, proxy = a_offline_b
    (b.mnt / "D").mkdir()
    (b.mnt / "D" / "f").write_bytes(b"f\n")
    wait_for(lambda: read_or_none(a.mnt / "D" / "f") == b"f\n", "D/f on A")
    go_offline(a, proxy)
    (b.mnt / "D" / "g").write_bytes(b"B's new file\n")
    b.wait_synced()
    shutil.rmtree(a.mnt / "D")
    proxy.restore()
    final = converge(a, b)
    assert final == {"D/": "dir", "D/g": _sha(b"B's new file\n")}, final


def test_a_folder_renamed_over_a_folder_filled_elsewhere_keeps_both(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """A renames folder E over the empty folder F (allowed: F is empty on A) while B adds a
    file to F. The move reaches the server as `replace`, answered 409 `not_empty`. Like a
    name taken elsewhere, ours should take another name: both contents stay, nothing is
    parked."""
    a, b, proxy = a_offline_b
    (b.mnt / "E").mkdir()
    (b.mnt / "F").mkdir()
    (b.mnt / "E" / "e").write_bytes(b"e\n")
    wait_for(lambda: read_or_none(a.mnt / "E" / "e") == b"e\n", "E/e on A")
    wait_for(lambda: (a.mnt / "F").is_dir() or None, "F on A")
    go_offline(a, proxy)
    (b.mnt / "F" / "g").write_bytes(b"B's new file\n")
    b.wait_synced()
    os.rename(a.mnt / "E", a.mnt / "F")
    proxy.restore()
    final = converge(a, b)
    assert final.get("F/g") == _sha(b"B's new file\n"), final
    assert _sha(b"e\n") in final.values(), final


def test_a_file_created_and_deleted_offline_leaves_another_devices_file_alone(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Seed 2 of the suite's random run (80 ops): A writes `a` and removes it before it is
    uploaded; B creates its own `a`. A's queued delete (base_rev null: A never had a server
    revision) trashes B's file, which A never saw, and A keeps showing it (its follower
    skips its own delete): A and the server disagree for ever."""
    a, b, proxy = a_offline_b
    go_offline(a, proxy)
    (a.mnt / "n.txt").write_bytes(b"A's short-lived file\n")
    (a.mnt / "n.txt").unlink()
    (b.mnt / "n.txt").write_bytes(b"B's file\n")
    b.wait_synced()
    proxy.restore()
    final = converge(a, b)
    assert final == {"n.txt": _sha(b"B's file\n")}, final


def test_a_save_over_a_file_never_uploaded_leaves_another_devices_file_alone(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """A (offline) creates `m.txt`, then saves it the editor way (a temporary file renamed
    over it); B creates its own `m.txt`. A's move goes out with `replace` and no `dst_rev`,
    so B's content silently becomes an old revision of A's file. Name taken elsewhere: A's
    file should take a conflicted-copy name and B's stay under its name."""
    a, b, proxy = a_offline_b
    go_offline(a, proxy)
    (a.mnt / "m.txt").write_bytes(b"A v1\n")
    (a.mnt / ".m.txt.tmp").write_bytes(b"A v2\n")
    os.rename(a.mnt / ".m.txt.tmp", a.mnt / "m.txt")
    (b.mnt / "m.txt").write_bytes(b"B's file\n")
    b.wait_synced()
    proxy.restore()
    final = converge(a, b)
    assert final.get("m.txt") == _sha(b"B's file\n"), final
    assert _sha(b"A v2\n") in final.values(), final


def test_a_write_through_a_handle_opened_before_a_remote_delete_is_kept(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Seed 101 of `scripts/convergence --ops 500`, op 306: A opens `f.txt` to change it;
    B deletes it and A's change feed learns of the delete (the file is clean, nothing is
    queued: it used to be unlinked here); A then writes through its handle and close()
    returns 0. Edits beat deletes: A's bytes must reach the server (the file comes back),
    not vanish with the inode."""
    a, b, _ = a_offline_b
    (b.mnt / "f.txt").write_bytes(b"v1\n")
    wait_for(lambda: read_or_none(a.mnt / "f.txt") == b"v1\n", "f.txt on A")
    fd = os.open(a.mnt / "f.txt", os.O_RDWR)
    try:
        (b.mnt / "f.txt").unlink()
        b.wait_synced()
        wait_for(lambda: "delete /f.txt" in a.log_text() or None, "A learning of the delete")
        os.pwrite(fd, b"A's edit\n", 0)
    finally:
        os.close(fd)  # returned 0: acknowledged
    final = converge(a, b)
    assert _sha(b"A's edit\n") in final.values(), final


def test_a_rename_over_a_file_whose_source_was_deleted_elsewhere_is_kept(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Seed 201 of `scripts/convergence --ops 500 --exclude rm_r,rmdir,dir_rename`, op 440.
    A (offline) renames `c.txt` over `d.txt`; B deletes `c.txt`. A's content was renamed,
    not deleted, so it is kept: `d.txt` holds it (the next revision of d.txt, which A saw
    and B did not change). Nothing is parked."""
    a, b, proxy = a_offline_b
    (b.mnt / "c.txt").write_bytes(b"C content\n")
    (b.mnt / "d.txt").write_bytes(b"D content\n")
    wait_for(lambda: read_or_none(a.mnt / "c.txt") == b"C content\n", "c.txt on A")
    wait_for(lambda: read_or_none(a.mnt / "d.txt") == b"D content\n", "d.txt on A")
    go_offline(a, proxy)
    os.rename(a.mnt / "c.txt", a.mnt / "d.txt")
    (b.mnt / "c.txt").unlink()
    b.wait_synced()
    proxy.restore()
    final = converge(a, b)
    assert final == {"d.txt": _sha(b"C content\n")}, final


def test_a_rename_does_not_move_a_file_another_device_put_at_the_old_name(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Seed 201 (as above), op 448. A (offline) renames `c.txt` to `e.txt`; B deletes
    `c.txt` and writes a new `c.txt`, which A never saw. A's move must not carry B's new
    file away to `e.txt` (A's `e.txt` is the old content: the file B deleted, brought back
    since A renamed it); B's new file keeps its name."""
    a, b, proxy = a_offline_b
    (b.mnt / "c.txt").write_bytes(b"old C\n")
    wait_for(lambda: read_or_none(a.mnt / "c.txt") == b"old C\n", "c.txt on A")
    go_offline(a, proxy)
    os.rename(a.mnt / "c.txt", a.mnt / "e.txt")
    (b.mnt / "c.txt").unlink()
    b.wait_synced()
    (b.mnt / "c.txt").write_bytes(b"B's new C\n")
    b.wait_synced()
    proxy.restore()
    final = converge(a, b)
    assert final.get("c.txt") == _sha(b"B's new C\n"), final
    assert final.get("e.txt") == _sha(b"old C\n"), final


def test_a_rename_over_a_file_edited_elsewhere_keeps_both_after_the_feed_catches_up(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Seed 301 of `scripts/convergence --ops 500`, op 497. A (offline) renames `y.txt` over
    `x.txt`; B edits `x.txt`. Back online, A's change feed applies B's edit before A's
    queued move is sent: it must not put the replaced `x.txt` back over A's renamed file
    (which then vanished from A: the move went out as a conflicted copy A never showed)."""
    a, b, proxy = a_offline_b
    (b.mnt / "x.txt").write_bytes(b"x v1\n")
    (b.mnt / "y.txt").write_bytes(b"y content\n")
    wait_for(lambda: read_or_none(a.mnt / "x.txt") == b"x v1\n", "x.txt on A")
    wait_for(lambda: read_or_none(a.mnt / "y.txt") == b"y content\n", "y.txt on A")
    go_offline(a, proxy)
    os.rename(a.mnt / "y.txt", a.mnt / "x.txt")
    (b.mnt / "x.txt").write_bytes(b"x v2 from B\n")
    b.wait_synced()
    proxy.restore()
    final = converge(a, b)
    assert final.get("x.txt") == _sha(b"x v2 from B\n"), final
    assert _sha(b"y content\n") in final.values(), final
    assert len(final) == 2, final


def test_an_edit_of_a_file_moved_and_edited_elsewhere_ends_beside_it(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Seed 401 of `scripts/convergence --ops 500`: A (offline) edits `c.txt`; B moves it
    into `x/` and edits it. A's commit is a conflict: A's edit becomes a conflicted copy
    beside the file (in `x/`), and A shows the file where the server has it now, not at the
    old name (where it stayed, with B's content, on A only)."""
    a, b, proxy = a_offline_b
    (b.mnt / "c.txt").write_bytes(b"c v1\n")
    wait_for(lambda: read_or_none(a.mnt / "c.txt") == b"c v1\n", "c.txt on A")
    go_offline(a, proxy)
    (a.mnt / "c.txt").write_bytes(b"A's edit\n")
    (b.mnt / "x").mkdir()
    os.rename(b.mnt / "c.txt", b.mnt / "x" / "c.txt")
    (b.mnt / "x" / "c.txt").write_bytes(b"B's edit\n")
    b.wait_synced()
    proxy.restore()
    final = converge(a, b)
    assert final.get("x/c.txt") == _sha(b"B's edit\n"), final
    copies = [p for p, h in final.items() if h == _sha(b"A's edit\n")]
    assert len(copies) == 1, final
    assert copies[0].startswith("x/c (conflicted copy from"), final
    assert "c.txt" not in final, final


def test_a_handle_opened_before_a_remote_delete_and_closed_unwritten_lets_it_go(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Seed 501 of `scripts/convergence --ops 500`: the counterpart of the test above. A
    opens `f.txt` for writing, B deletes it, A closes without writing. The delete held back
    for the handle applies at close: A stops showing a file the server no longer has
    (reading it failed with EIO for ever, and the trees never converged)."""
    a, b, _ = a_offline_b
    (b.mnt / "f.txt").write_bytes(b"v1\n")
    wait_for(lambda: read_or_none(a.mnt / "f.txt") == b"v1\n", "f.txt on A")
    fd = os.open(a.mnt / "f.txt", os.O_RDWR)
    try:
        (b.mnt / "f.txt").unlink()
        b.wait_synced()
        wait_for(lambda: "delete /f.txt" in a.log_text() or None, "A learning of the delete")
        assert (a.mnt / "f.txt").exists()  # held for the handle
    finally:
        os.close(fd)
    wait_for(lambda: not (a.mnt / "f.txt").exists() or None, "f.txt gone from A")
    assert converge(a, b) == {}


def test_a_folder_made_on_two_devices_shows_both_devices_files(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Seed 601 of `scripts/convergence --ops 500`: A (offline) and B each create folder `D`
    with a file in it. A's mkdir finds B's folder and adopts it; A must then list it (B's
    file was announced while A's `D` had no server id, so the change feed could not place
    it, and A showed only its own file for ever)."""
    a, b, proxy = a_offline_b
    go_offline(a, proxy)
    (a.mnt / "D").mkdir()
    (a.mnt / "D" / "a.txt").write_bytes(b"A's file\n")
    (b.mnt / "D").mkdir()
    (b.mnt / "D" / "b.txt").write_bytes(b"B's file\n")
    b.wait_synced()
    proxy.restore()
    final = converge(a, b)
    assert final == {"D/": "dir", "D/a.txt": _sha(b"A's file\n"),
                     "D/b.txt": _sha(b"B's file\n")}, final  # fmt: skip


def test_a_nested_folder_delete_loses_to_an_edit_deep_inside_it(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Seed 702 of `scripts/convergence --ops 500`: A (offline) removes `x` with `rm -r`
    while B edits `x/z/c`. Each delete is refused (edited, then not empty) and everything
    stays; A must show all of it again, not an empty `x` (its own folders had been listed,
    so nothing listed them again)."""
    a, b, proxy = a_offline_b
    (b.mnt / "x" / "z").mkdir(parents=True)
    (b.mnt / "x" / "z" / "c").write_bytes(b"c v1\n")
    wait_for(lambda: read_or_none(a.mnt / "x" / "z" / "c") == b"c v1\n", "x/z/c on A")
    go_offline(a, proxy)
    (b.mnt / "x" / "z" / "c").write_bytes(b"c v2 from B\n")
    b.wait_synced()
    shutil.rmtree(a.mnt / "x")
    proxy.restore()
    final = converge(a, b)
    assert final == {"x/": "dir", "x/z/": "dir", "x/z/c": _sha(b"c v2 from B\n")}, final


def test_a_remote_file_held_back_by_a_local_name_appears_once_the_name_is_free(
    a_offline_b: tuple[MountProcess, MountProcess, TcpProxy],
) -> None:
    """Seed 802 of `scripts/convergence --ops 500`: B's `a` arrives while A's own new `a`
    (not uploaded) holds the name, so A does not show B's; then A removes its `a`. B's
    file must appear on A (the change that announced it had been used up)."""
    a, b, _ = a_offline_b
    fd = os.open(a.mnt / "a", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"A's short-lived a\n")
        (b.mnt / "a").write_bytes(b"B's a\n")
        b.wait_synced()
        wait_for(lambda: "create /a" in a.log_text() or None, "A hearing of B's a")
        os.unlink(a.mnt / "a")
    finally:
        os.close(fd)
    final = converge(a, b)
    assert final == {"a": _sha(b"B's a\n")}, final
