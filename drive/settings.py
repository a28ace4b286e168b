"""User-editable client settings: `HOME/config.toml`, read with tomllib.

The secret state (token, pinned certificate) stays in `HOME/config.json`, written by `drive
login`; this file holds only what a person may want to change by hand::

    cache_size = "10G"        # block cache limit for `drive mount` (default 5G)
    allow_other = false       # let other local users into the mount
    mountpoint = "~/Drive"    # where `drive up` mounts when given no MOUNTPOINT
    log_level = "info"        # debug | info | warning | error (stderr and log file)
    log_file = "drive.log"    # also log to this file (relative to the home); "" = stderr only

Command-line options win over the file. Unknown keys and wrong types are an error with the
file's name in the message, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import platformdirs

from drive.errors import UserError

__all__ = ["LOG_LEVELS", "Settings", "client_home", "load_settings"]

SETTINGS_FILE = "config.toml"
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Settings:
    """The client settings; every field has a default (see the module docstring)."""

    cache_size: str = ""
    allow_other: bool = False
    mountpoint: str = "~/Drive"
    log_level: str = ""
    log_file: str = ""


def client_home() -> Path:
    """The client home, as `syncd.home.resolve_home` computes it (without importing syncd)."""
    env = os.environ.get("DRIVE_HOME")
    if env:
        return Path(env).expanduser().absolute()
    return Path(platformdirs.user_config_dir("drive"))


def load_settings(home: Path | None = None) -> Settings:
    """Read `HOME/config.toml` (defaults when it does not exist).

    Raises:
        UserError: the file is unreadable, not TOML, or holds an unknown key or bad value.
    """
    path = (home or client_home()) / SETTINGS_FILE
    try:
        with path.open("rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        return Settings()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path} is not valid TOML: {exc}") from None
    return _from_table(path, table)


def _from_table(path: Path, table: dict[str, Any]) -> Settings:
    known = {f.name: f for f in fields(Settings)}
    defaults = Settings()
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in known:
            raise UserError(f"{path}: unknown setting {key!r} (known: {', '.join(known)})")
        want = type(getattr(defaults, name))
        if type(value) is not want:
            raise UserError(f"{path}: {key} must be a {want.__name__}, not {value!r}")
        values[name] = value
    settings = Settings(**values)
    if settings.log_level and settings.log_level not in LOG_LEVELS:
        raise UserError(f"{path}: log_level must be one of {', '.join(LOG_LEVELS)}")
    return settings
