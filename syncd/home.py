"""Where this client keeps its state: one directory per client ("home").

`--home DIR` (the `drive` command copies it into `DRIVE_HOME`) or `$DRIVE_HOME`; otherwise the
platform's user config directory. Everything a client owns lives below it: the config with
token and pinned certificate, the LMDB state, the block cache, dirty files and logs. Two
clients on one machine (two "devices" in a test) simply use two homes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

__all__ = ["Home", "resolve_home"]

APP_NAME = "drive"


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

    def ensure(self) -> Home:
        """Create the home and its subdirectories (mode 0700) and return self."""
        for path in (self.root, self.state_path, self.cache_path, self.dirty_path):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self


def resolve_home(explicit: str | os.PathLike[str] | None = None) -> Home:
    """Return the home: `explicit`, else `$DRIVE_HOME`, else the platform config dir."""
    if explicit:
        return Home(Path(explicit).expanduser().absolute())
    env = os.environ.get("DRIVE_HOME")
    if env:
        return Home(Path(env).expanduser().absolute())
    return Home(Path(platformdirs.user_config_dir(APP_NAME)))
