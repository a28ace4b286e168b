"""The POSIX surface on a real mount: renames with flags, modes, times, links, statfs, errors."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path

import pytest

from tests.helpers.mount_proc import requires_fuse


def oserror(fn: object) -> int:
    """The errno `fn()` fails with (fails the test if it does not fail)."""
    try:
        fn()  # type: ignore[operator]
    except OSError as exc:
        return exc.errno or 0
    raise AssertionError("expected an OSError")


pytestmark = [pytest.mark.e2e, requires_fuse]

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def renameat2(src: Path, dst: Path, flags: int) -> None:
    rc = _libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags)
    if rc != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def test_rename_flags(workdir: Path) -> None:
    a, b = workdir / "a", workdir / "b"
    a.write_text("A")
    b.write_text("B")
    with pytest.raises(FileExistsError):
        renameat2(a, b, RENAME_NOREPLACE)
    renameat2(a, b, RENAME_EXCHANGE)
    assert (a.read_text(), b.read_text()) == ("B", "A")
    d1, d2 = workdir / "d1", workdir / "d2"
    d1.mkdir()
    d2.mkdir()
    (d2 / "x").write_text("x")
    code = oserror(lambda: os.rename(d1, d2))
    assert code == errno.ENOTEMPTY
    code = oserror(lambda: os.rename(workdir / "d1", workdir / "d1" / "inside"))
    assert code == errno.EINVAL
    os.rename(a, workdir / "d2" / "x")  # over an existing file
    assert (workdir / "d2" / "x").read_text() == "B"


def test_chmod_utimens_symlink(workdir: Path) -> None:
    f = workdir / "f"
    f.write_text("x")
    os.chmod(f, 0o640)
    assert stat.S_IMODE(f.stat().st_mode) == 0o640
    far, old = 4_102_444_800 * 10**9, -315_619_200 * 10**9  # 2100 and 1960
    os.utime(f, ns=(far, far))
    assert f.stat().st_mtime_ns == far
    os.utime(f, ns=(old, old))
    assert f.stat().st_mtime_ns == old
    os.symlink("target/../f", workdir / "l")
    assert os.readlink(workdir / "l") == "target/../f"
    os.symlink("f", workdir / "l2")
    assert (workdir / "l2").read_text() == "x"


def test_unsupported_operations_give_errnos(workdir: Path) -> None:
    f = workdir / "f"
    f.write_text("x")
    code = oserror(lambda: os.link(f, workdir / "hard"))
    assert code == errno.EPERM
    code = oserror(lambda: os.mkfifo(workdir / "fifo"))
    assert code == errno.EPERM
    code = oserror(lambda: os.chown(f, 12345, 12345))
    assert code == errno.EPERM
    os.chown(f, os.getuid(), os.getgid())  # to the owner it already has: fine
    code = oserror(lambda: os.setxattr(f, "user.x", b"1"))
    assert code in (errno.ENOTSUP, errno.ENOSYS)
    code = oserror(lambda: os.getxattr(f, "user.x"))
    assert code in (errno.ENOTSUP, errno.ENODATA, errno.ENOSYS)


def test_statfs_and_long_names(mounted, workdir: Path) -> None:
    st = os.statvfs(mounted.mnt)
    assert st.f_namemax == 255
    assert st.f_blocks > 0
    (workdir / ("n" * 255)).write_text("ok")
    code = oserror(lambda: (workdir / ("n" * 256)).write_text("no"))
    assert code == errno.ENAMETOOLONG


def test_unlinked_open_file_keeps_working(workdir: Path) -> None:
    f = workdir / "f"
    f.write_bytes(b"0123456789")
    with open(f, "r+b") as fh:
        os.unlink(f)
        assert not f.exists()
        fh.seek(0)
        assert fh.read() == b"0123456789"
        fh.write(b"abc")
        fh.flush()
        fh.seek(0)
        assert fh.read() == b"0123456789abc"
    assert os.listdir(workdir) == []


def test_sparse_file_over_4_gib(workdir: Path) -> None:
    f = workdir / "sparse"
    off = 5 * 1024**3
    with open(f, "wb") as fh:
        fh.write(b"head")
        fh.seek(off)
        fh.write(b"tail")
    assert f.stat().st_size == off + 4
    with open(f, "rb") as fh:
        assert fh.read(4) == b"head"
        fh.seek(4096 * 1000)
        assert fh.read(4096) == bytes(4096)
        fh.seek(off - 2)
        assert fh.read() == b"\0\0tail"
    f.unlink()  # do not upload 5 GiB of zeros in the next tests


def test_ftruncate_and_fsync(workdir: Path) -> None:
    f = workdir / "t"
    with open(f, "wb") as fh:
        fh.write(b"x" * 10000)
        fh.flush()
        os.ftruncate(fh.fileno(), 10)
        os.fsync(fh.fileno())
    assert f.read_bytes() == b"x" * 10
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
