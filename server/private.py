"""The data directory is private to the server's user: files 0600, directories 0700.

It holds password hashes, every file name (drive.db), the master key and the users'
plaintext while uploads spool, so no other local user may read any of it. New entries get
these modes where they are made (and the serving process runs under umask 077 as a
backstop); `fix_modes` repairs a data directory made by an older version at start.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700
UMASK = 0o077


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) if needed and make it 0700; returns it."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)
    return path


def create_private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 unless it exists (SQLite then gives its -wal and
    -shm files the database file's mode). An existing file is never opened: closing any
    descriptor of a database file drops this process's SQLite locks on it."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE))


def fix_modes(root: Path) -> int:
    """Make every file under `root` 0600 and every directory 0700; returns how many changed.

    The top level is always checked; a directory below it that is already 0700 was made by
    this version (whose entries are private from birth) or fixed before, so it is not
    walked again: a large block store costs this walk once, at the first start after an
    upgrade. A directory is made 0700 only after its entries, so an interrupted walk
    resumes on the next start.
    """
    return _fix_dir(root, top=True)


def _fix_dir(path: Path, top: bool) -> int:
    changed = 0
    if top or stat.S_IMODE(os.lstat(path).st_mode) != DIR_MODE:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    changed += _fix_dir(Path(entry.path), top=False)
                elif entry.is_file(follow_symlinks=False):
                    changed += _chmod(
                        Path(entry.path), entry.stat(follow_symlinks=False), FILE_MODE
                    )
    return changed + _chmod(path, os.lstat(path), DIR_MODE)


def _chmod(path: Path, st: os.stat_result, mode: int) -> int:
    if stat.S_IMODE(st.st_mode) == mode:
        return 0
    os.chmod(path, mode)
    return 1
