"""Everyday tools on a real mount: ls, cp -r, mv, rm -r, cat, dd, truncate, git, tar, rsync."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from pathlib import Path

import pytest

from tests.helpers.mount_proc import MountProcess, requires_fuse

pytestmark = [pytest.mark.e2e, requires_fuse]

SOURCE_TREE = Path(__file__).resolve().parents[2] / "blockstore"


def sh(*args: str, cwd: Path | None = None, timeout: float = 120) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)  # fmt: skip
    assert done.returncode == 0, f"{args} failed: {done.stderr}"
    return done.stdout


def tree_digest(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            out[rel] = "L:" + os.readlink(p) if p.is_symlink() else \
                hashlib.sha256(p.read_bytes()).hexdigest()  # fmt: skip
    return out


def make_tree(root: Path, seed: int = 1) -> Path:
    rnd = random.Random(seed)
    root.mkdir(parents=True)
    for d in range(3):
        sub = root / f"dir{d}" / "nested"
        sub.mkdir(parents=True)
        for f in range(5):
            (sub / f"f{f}.bin").write_bytes(rnd.randbytes(rnd.choice([0, 10, 5000, 300_000])))
        (root / f"dir{d}" / "note.txt").write_text(f"note {d}\n" * 100)
    (root / "big.bin").write_bytes(rnd.randbytes(3 * 1024 * 1024 + 17))
    os.symlink("big.bin", root / "link")
    return root


def test_cp_r_in_and_out_keeps_checksums(workdir: Path, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    sh("cp", "-r", str(src), str(workdir / "copy"))
    out = tmp_path / "out"
    sh("cp", "-r", str(workdir / "copy"), str(out))
    assert tree_digest(out) == tree_digest(src)
    listing = sh("ls", "-l", str(workdir / "copy"))
    assert "big.bin" in listing
    assert "link -> big.bin" in listing
    assert (workdir / "copy" / "big.bin").stat().st_size == 3 * 1024 * 1024 + 17


def test_mv_rm_and_cat(workdir: Path) -> None:
    (workdir / "a").mkdir()
    (workdir / "a" / "x.txt").write_text("hello\n")
    sh("mv", str(workdir / "a" / "x.txt"), str(workdir / "y.txt"))
    assert sh("cat", str(workdir / "y.txt")) == "hello\n"
    sh("mv", str(workdir / "a"), str(workdir / "b"))
    assert sorted(os.listdir(workdir)) == ["b", "y.txt"]
    (workdir / "b" / "c").mkdir()
    (workdir / "b" / "c" / "z").write_bytes(b"z" * 1000)
    sh("rm", "-r", str(workdir / "b"))
    assert os.listdir(workdir) == ["y.txt"]
    (workdir / "over").write_text("new")
    sh("mv", "-f", str(workdir / "over"), str(workdir / "y.txt"))
    assert (workdir / "y.txt").read_text() == "new"


def test_dd_random_offsets_and_truncate(workdir: Path, tmp_path: Path) -> None:
    rnd = random.Random(7)
    model = bytearray(rnd.randbytes(5 * 1024 * 1024))
    target = workdir / "f.bin"
    target.write_bytes(model)
    for i in range(12):
        size = rnd.choice([1, 4096, 100_000, 1_500_000])
        off = rnd.randrange(0, len(model) + 200_000)
        piece = rnd.randbytes(size)
        src = tmp_path / f"piece{i}"
        src.write_bytes(piece)
        sh("dd", f"if={src}", f"of={target}", "bs=65536", f"seek={off}", "conv=notrunc",
           "status=none", "iflag=count_bytes", f"count={size}", "oflag=seek_bytes")  # fmt: skip
        if off > len(model):
            model.extend(bytes(off - len(model)))
        model[off : off + size] = piece
    assert target.read_bytes() == bytes(model)
    sh("truncate", "-s", "1000000", str(target))
    del model[1_000_000:]
    assert target.read_bytes() == bytes(model)
    sh("truncate", "-s", "3000000", str(target))
    model.extend(bytes(2_000_000))
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(model).digest()


def test_git_init_add_commit_status_log(workdir: Path) -> None:
    repo = workdir / "repo"
    repo.mkdir()
    env = ["-c", "user.name=T", "-c", "user.email=t@example.com"]
    sh("git", "init", "-q", cwd=repo)
    (repo / "a.txt").write_text("one\n")
    (repo / "sub").mkdir()
    (repo / "sub" / "b.py").write_text("print('x')\n")
    sh("git", "add", ".", cwd=repo)
    sh("git", *env, "commit", "-q", "-m", "first", cwd=repo)
    (repo / "a.txt").write_text("two\n")
    assert "a.txt" in sh("git", "status", "--short", cwd=repo)
    sh("git", *env, "commit", "-q", "-am", "second", cwd=repo)
    assert sh("git", "status", "--short", cwd=repo) == ""
    log = sh("git", "log", "--oneline", cwd=repo)
    assert "first" in log
    assert "second" in log
    sh("git", "fsck", "--no-progress", cwd=repo)


def test_tar_x_of_a_source_tree(workdir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "src.tar"
    sh("tar", "cf", str(archive), "-C", str(SOURCE_TREE.parent), "--exclude=__pycache__",
       SOURCE_TREE.name)  # fmt: skip
    sh("tar", "xf", str(archive), "--no-same-owner", "-C", str(workdir))
    assert tree_digest(workdir / SOURCE_TREE.name) == tree_digest(SOURCE_TREE)


def test_rsync_a_into_the_mount(workdir: Path, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", seed=3)
    os.chmod(src / "dir0" / "note.txt", 0o600)
    sh("rsync", "-a", f"{src}/", f"{workdir / 'dst'}/")
    assert tree_digest(workdir / "dst") == tree_digest(src)
    st = (workdir / "dst" / "dir0" / "note.txt").stat()
    assert st.st_mode & 0o777 == 0o600
    assert st.st_mtime_ns // 10**9 == (src / "dir0" / "note.txt").stat().st_mtime_ns // 10**9
    sh("rsync", "-a", f"{src}/", f"{workdir / 'dst'}/")  # second run: nothing to do


def test_everything_reaches_the_server(mounted: MountProcess, workdir: Path) -> None:
    (workdir / "sync.txt").write_text("on the server")
    mounted.wait_synced()
    assert mounted.pending() == 0
