"""Where this client keeps its state: one directory per client ("home").

`--home DIR` (the `drive` command copies it into `DRIVE_HOME`) or `$DRIVE_HOME`; otherwise the
platform's user config directory. Everything a client owns lives below it: the config with
token and pinned certificate, the LMDB state, the block cache, dirty files and logs. Two
clients on one machine (two "devices" in a test) simply use two homes.

A home is mounted by one process at a time: the mount holds `HomeLock`, an exclusive
`flock` on HOME/mount.lock, for its whole life. Two mounts of one home would share one
upload queue and race each other into spurious conflicted copies. The kernel drops the lock
when the holder dies (even by SIGKILL), so a stale file never blocks; the pid and mount point
written in it only name the holder in the refusal. Readers of the state (`drive status`,
`drive unmount --wait`) never take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import platformdirs

from syncd.errors import SyncError

__all__ = ["Home", "HomeInUse", "HomeLock", "LockHolder", "resolve_home"]

APP_NAME = "drive"
HOLDER_READ_S = 1.0
"""How long a refused mount waits for the holder to finish writing its name into the file."""


@dataclass(frozen=True, slots=True)
class Home:
    """The paths inside one client home (nothing is created until `ensure()`)."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def state_path(self) -> Path:
        return self.root / "state"

    @property
    def cache_path(self) -> Path:
        return self.root / "cache"

    @property
    def dirty_path(self) -> Path:
        return self.root / "dirty"

    @property
    def log_path(self) -> Path:
        return self.root / "mount.log"

    @property
    def status_path(self) -> Path:
        """A small JSON file the running mount rewrites so `drive status` can read it."""
        return self.root / "status.json"

    @property
    def lock_path(self) -> Path:
        """The file a running mount holds locked (see `HomeLock`)."""
        return self.root / "mount.lock"

    def ensure(self) -> Home:
        """Create the home and its subdirectories (mode 0700, also when an older version
        made them readable by others: the home holds the token and file contents) and
        return self."""
        for path in (self.root, self.state_path, self.cache_path, self.dirty_path):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path, 0o700)
        return self


def resolve_home(explicit: str | os.PathLike[str] | None = None) -> Home:
    """Return the home: `explicit`, else `$DRIVE_HOME`, else the platform config dir."""
    if explicit:
        return Home(Path(explicit).expanduser().absolute())
    env = os.environ.get("DRIVE_HOME")
    if env:
        return Home(Path(env).expanduser().absolute())
    return Home(Path(platformdirs.user_config_dir(APP_NAME)))


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds a home's lock, as written in the lock file (None: not known)."""

    pid: int | None = None
    mountpoint: str | None = None

    def describe(self) -> str:
        if self.mountpoint and self.pid:
            return f"at {self.mountpoint} (pid {self.pid})"
        if self.mountpoint:
            return f"at {self.mountpoint}"
        if self.pid:
            return f"by pid {self.pid}"
        return "by another process"


class HomeInUse(SyncError):
    """Another process holds this home's lock: it is mounted (or being mounted) already."""

    def __init__(self, holder: LockHolder) -> None:
        super().__init__(
            f"this home is already mounted {holder.describe()}; "
            "unmount it first or use another --home"
        )
        self.holder = holder


class HomeLock:
    """The exclusive lock a mount holds on its home; released by `release()` or at death.

    `flock` locks belong to the open file description, not to the process: a child that
    inherits the descriptor (`subprocess.Popen(pass_fds=...)`) shares the lock, and it stays
    held until every copy is closed. `drive mount` uses that to hand the lock from the
    command that checked it to the detached process that runs the mount, with no gap.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @property
    def fd(self) -> int:
        """The locked descriptor (to hand to a child); ValueError once closed."""
        if self._fd is None:
            raise ValueError("the home lock is closed")
        return self._fd

    @classmethod
    def acquire(cls, home: Home, mountpoint: Path, *, inherited_fd: int | None = None) -> HomeLock:
        """Lock `home` for a mount at `mountpoint` without waiting.

        `inherited_fd` is a descriptor a parent handed over already locked; it is used only
        if it is this home's lock file and the lock on it is really held.

        Raises:
            HomeInUse: another process holds the lock (names it when the file says who).
            OSError: the lock file cannot be created or locked.
        """
        path = home.lock_path
        if inherited_fd is not None and _same_file(inherited_fd, path):
            fd = inherited_fd
            os.set_inheritable(fd, False)  # the mount's own children must not keep it alive
        else:
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            fd = os.open(path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise HomeInUse(holder) from None
        except BaseException:
            os.close(fd)
            raise
        lock = cls(fd, path)
        try:
            lock._record(mountpoint)
        except BaseException:
            lock.release()
            raise
        return lock

    def _record(self, mountpoint: Path) -> None:
        """Write our pid and mount point (new text first, then cut what is left of the old)."""
        fd = self.fd
        os.fchmod(fd, 0o600)
        data = (json.dumps({"pid": os.getpid(), "mountpoint": str(mountpoint)}) + "\n").encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))

    def close(self) -> None:
        """Close our descriptor only: a child that inherited it keeps holding the lock."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def release(self) -> None:
        """Empty the file (no stale name for the next reader) and drop the lock."""
        if self._fd is not None:
            with contextlib.suppress(OSError):  # the lock still goes with the descriptor
                os.ftruncate(self._fd, 0)
            self.close()

    def __enter__(self) -> HomeLock:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.fstat(fd)
        ref = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (ref.st_dev, ref.st_ino)


def _read_holder(fd: int) -> LockHolder:
    """The holder named in the lock file; waits briefly while the holder is still writing."""
    deadline = time.monotonic() + HOLDER_READ_S
    while True:
        holder = _parse_holder(fd)
        if holder is not None or time.monotonic() > deadline:
            return holder or LockHolder()
        time.sleep(0.02)


def _parse_holder(fd: int) -> LockHolder | None:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
        body, _ = json.JSONDecoder().raw_decode(text)  # a longer stale tail does not matter
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    pid, mountpoint = body.get("pid"), body.get("mountpoint")
    return LockHolder(
        pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None,
        mountpoint if isinstance(mountpoint, str) and mountpoint else None,
    )
