"""The mount helper: `drive SOURCE MOUNTPOINT -o OPTIONS`, as mount(8) and mount.fuse3 call it.

`mount -t fuse.drive SOURCE MP -o OPTS` (and the same line in /etc/fstab) makes mount.fuse3
run `drive SOURCE MP -o OPTS`; installed as `/sbin/mount.fuse.drive` the same arguments
arrive (plus `-t fuse.drive`). SOURCE is the client home that `drive login` wrote, or the
word `drive` for the default home. The helper maps the options to `drive mount` (which
starts the mount in the background and returns once it is visible: mount(8) expects its
helper to daemonize) and exits with its status.

Options: `cache_size=SIZE`, `allow_other`, `log_level=LEVEL`, `home=DIR` (instead of
SOURCE). Generic mount options (rw, noatime, nodev, nosuid, _netdev, nofail, x-*, ...) are
accepted and ignored: FUSE mounts are always nodev,nosuid; `ro` is refused, the drive does not
mount read-only yet.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from drive.errors import UserError

__all__ = ["HELPER_NAME", "HelperCall", "is_helper_call", "main", "parse_helper_args"]

HELPER_NAME = "mount.fuse.drive"
IGNORED = {
    "rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime",
    "strictatime", "nodiratime", "diratime", "lazytime", "nolazytime", "auto", "noauto",
    "user", "users", "nouser", "owner", "group", "defaults", "_netdev", "nofail", "async",
    "sync", "dirsync", "silent", "loud", "default_permissions",
}  # fmt: skip
IGNORED_PREFIXES = ("x-", "comment=", "setuid=", "fsname=", "subtype=")
LOG_LEVELS = ("debug", "info", "warning", "error")


class HelperCall:
    """A parsed helper call: what to mount where, and the `drive` argv that does it."""

    def __init__(self, home: str | None, mountpoint: str, argv: list[str]) -> None:
        self.home = home
        self.mountpoint = mountpoint
        self.argv = argv


def is_helper_call(argv: Sequence[str], commands: set[str], prog: str = "") -> bool:
    """True when `argv` is `SOURCE MOUNTPOINT ...` rather than a `drive` subcommand."""
    if prog == HELPER_NAME:
        return True
    if len(argv) < 2 or argv[0].startswith("-") or argv[0] in commands:
        return False
    # A source is `drive` or a path: a mistyped subcommand stays argparse's to report.
    return argv[0] in ("drive", "none") or "/" in argv[0] or argv[0].startswith("~")


def parse_helper_args(argv: Sequence[str]) -> HelperCall:
    """Turn `SOURCE MOUNTPOINT [-o OPTS] [-t TYPE] [-n -s -f -v]` into a `drive` argv.

    Raises:
        UserError: a missing argument, an unknown option, or a bad value.
    """
    positional: list[str] = []
    options: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "-o":
            options += next(it, "").split(",")
        elif arg.startswith("-o"):
            options += arg[2:].split(",")
        elif arg == "-t":
            next(it, None)
        elif arg in ("-n", "-s", "-f", "-v", "-r", "-w"):
            if arg == "-r":
                raise UserError("the drive cannot be mounted read-only")
        elif arg.startswith("-"):
            raise UserError(f"mount helper: unknown flag {arg}")
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise UserError(
            "usage: drive SOURCE MOUNTPOINT [-o OPTIONS] (SOURCE: a client home or `drive`)"
        )
    source, mountpoint = positional
    home = None if source in ("drive", "none", "") else source
    mount_args: list[str] = []
    top: list[str] = []
    for opt in filter(None, (o.strip() for o in options)):
        key, eq, value = opt.partition("=")
        key = key.replace("-", "_")
        if key == "home" and eq:
            home = value
        elif key == "cache_size" and eq:
            mount_args += ["--cache-size", value]
        elif key == "allow_other" and not eq:
            mount_args.append("--allow-other")
        elif key == "log_level" and value in LOG_LEVELS:
            top += ["--log-level", value]
        elif opt == "ro":
            raise UserError("the drive cannot be mounted read-only (option ro)")
        elif opt in IGNORED or opt.startswith(IGNORED_PREFIXES):
            continue
        else:
            raise UserError(f"unknown mount option {opt!r} (known: cache_size=, allow_other, "
                            "log_level=, home=)")  # fmt: skip
    if home is not None:
        path = Path(home).expanduser()
        if not path.is_dir():
            raise UserError(f"mount source {home}: no such client home (run `drive login` "
                            "with --home first)")  # fmt: skip
        home = str(path.absolute())
        top = ["--home", home, *top]
    return HelperCall(home, mountpoint, [*top, "mount", mountpoint, *mount_args])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `mount.fuse.drive` and of `drive SOURCE MOUNTPOINT -o OPTIONS`."""
    from drive import cli

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        call = parse_helper_args(args)
    except UserError as exc:
        print(f"drive: {exc}", file=sys.stderr)
        return exc.exit_status
    return cli.main(call.argv)
