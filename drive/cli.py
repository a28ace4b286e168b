"""Argument parsing and dispatch for the `drive` console script.

Each subcommand names its handler as "module:function"; the module is imported only when that
subcommand runs, so `drive --help` never loads pyfuse3, the server or httpx. A handler takes
the parsed arguments and returns an exit status. Failures the user can cause are raised as
`UserError` and print one line on stderr; `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from drive.errors import NotLandedError, UserError

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand: its name, one-line help, its handler and its own arguments."""

    name: str
    help: str
    handler: str
    configure: Configure | None = None


def _server_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="the server's data directory")


def _server_user(p: argparse.ArgumentParser) -> None:
    _server_data(p)
    p.add_argument("name", metavar="USER", help="user name")


def _serve_args(p: argparse.ArgumentParser) -> None:
    _server_data(p)
    p.add_argument(
        "--listen",
        default=None,
        metavar="HOST:PORT",
        help="address to listen on (default: `listen` in the server config, else "
        "127.0.0.1:8443; port 0 picks a free one)",
    )
    p.add_argument("--cert", metavar="FILE", help="TLS certificate (PEM); default: self-signed")
    p.add_argument("--key", metavar="FILE", help="TLS private key (PEM) for --cert")
    p.add_argument("--config", metavar="FILE", help="server config (TOML); default DIR/server.toml")


def _adduser_args(p: argparse.ArgumentParser) -> None:
    _server_user(p)
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--quota", metavar="SIZE", help="storage quota, e.g. 10G (default: none)")


def _passwd_args(p: argparse.ArgumentParser) -> None:
    _server_user(p)
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument(
        "--keep-devices",
        action="store_true",
        help="keep the user's devices logged in (default: revoke every device token)",
    )


def _list_devices_args(p: argparse.ArgumentParser) -> None:
    _server_user(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.epilog = (
        "Shows the devices whose tokens are not revoked: id, name, when it logged in, when "
        "its token was last used (recorded every few minutes) and when it expires unused "
        "(`token_idle_seconds` in the server config, default 90 days)."
    )


def _revoke_args(p: argparse.ArgumentParser) -> None:
    _server_user(p)
    p.add_argument(
        "device",
        metavar="DEVICE",
        help="device name (every login of that name) or id, as list-devices shows them",
    )


def _deluser_args(p: argparse.ArgumentParser) -> None:
    _server_user(p)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _list_users_args(p: argparse.ArgumentParser) -> None:
    _server_data(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def _maintenance_args(p: argparse.ArgumentParser) -> None:
    _server_data(p)
    p.add_argument("--dry-run", action="store_true", help="report what it would do; change nothing")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--now",
        metavar="+DURATION",
        help="decide as if the clock were this far ahead (e.g. +40d, +12h); garbage "
        "collection keeps its grace period on the real clock",
    )
    p.epilog = (
        "The pass the server runs every `maintenance_interval_seconds`: versions thinned "
        "(`thin_*`, `revisions_kept`), trash items older than `trash_keep_seconds` removed, "
        "cold blocks moved to the archive and read ones back (`archive_*`), blocks no "
        "version uses collected after `block_gc_grace_seconds` (docs/running.md)."
    )


SERVER_COMMANDS: tuple[Command, ...] = (
    Command("serve", "run the server in the foreground", "drive.server_cmds:serve", _serve_args),
    Command("adduser", "create a user", "drive.server_cmds:adduser", _adduser_args),
    Command(
        "passwd",
        "change a user's password and log their devices out",
        "drive.server_cmds:passwd",
        _passwd_args,
    ),
    Command("deluser", "delete a user and their data", "drive.server_cmds:deluser", _deluser_args),
    Command("list-users", "list users", "drive.server_cmds:list_users", _list_users_args),
    Command(
        "list-devices",
        "list a user's logged-in devices",
        "drive.server_cmds:list_devices",
        _list_devices_args,
    ),
    Command(
        "revoke",
        "log one of a user's devices out (its token is refused at once)",
        "drive.server_cmds:revoke",
        _revoke_args,
    ),
    Command(
        "maintenance",
        "thin versions, expire the trash, archive cold blocks, collect garbage",
        "drive.server_cmds:maintenance",
        _maintenance_args,
    ),
)


def _login_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="URL", help="server URL, e.g. https://127.0.0.1:8443")
    p.add_argument("--user", required=True, help="user name")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--device", help="this device's name (default: the host name)")
    p.add_argument(
        "--trust-fingerprint",
        metavar="SHA256",
        help="pin the server certificate with this SHA-256 fingerprint without asking",
    )


def _mount_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty directory")
    p.add_argument(
        "--foreground", action="store_true", help="stay in the foreground until unmounted"
    )
    p.add_argument(
        "--cache-size", metavar="SIZE", help="block cache size limit, e.g. 10G (default 5G)"
    )
    p.add_argument("--allow-other", action="store_true", help="let other local users use the mount")
    p.epilog = (
        "One mount per home: while a mount of this home (--home) runs, another is refused "
        "(the running mount holds a lock on HOME/mount.lock)."
    )


def _unmount_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument(
        "--wait", action="store_true", help="return only when every change reached the server"
    )


def _json_only(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def _revisions_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="a path inside the drive or a mount point")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="at most N (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def _restore_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="a path inside the drive or a mount point")
    p.add_argument("revision", type=int, metavar="REVISION")


def _undelete_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "path", metavar="PATH", nargs="?", help="where it was deleted (the newest such item)"
    )
    p.add_argument("--id", type=int, metavar="ID", help="the trash item's id (`drive trash`)")
    p.epilog = (
        "If the name is taken now, it comes back beside it as 'NAME (restored DATE TIME).EXT'."
    )


def _keep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="a path inside the drive or a mount point")
    p.add_argument("revision", type=int, metavar="REVISION")


def _up_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "mountpoint", nargs="?", metavar="MOUNTPOINT", help="where to mount (default ~/Drive)"
    )


CLIENT_COMMANDS: tuple[Command, ...] = (
    Command(
        "up",
        "start everything on this machine: local server, user, login, mount",
        "drive.up:up",
        _up_args,
    ),
    Command("login", "log this device in to a server", "drive.client_cmds:login", _login_args),
    Command("logout", "log this device out", "drive.client_cmds:logout"),
    Command(
        "mount", "mount the drive and run the sync daemon", "drive.mount_cmds:mount", _mount_args
    ),
    Command("unmount", "unmount the drive", "drive.mount_cmds:unmount", _unmount_args),
    Command(
        "status",
        "show sync state, pending uploads and conflicts",
        "drive.client_cmds:status",
        _json_only,
    ),
    Command("revisions", "list a file's revisions", "drive.client_cmds:revisions", _revisions_args),
    Command(
        "restore",
        "bring back an old revision of a file",
        "drive.client_cmds:restore",
        _restore_args,
    ),
    Command("trash", "list deleted files and folders", "drive.client_cmds:trash", _json_only),
    Command(
        "undelete",
        "bring a deleted file or folder back",
        "drive.client_cmds:undelete",
        _undelete_args,
    ),
    Command(
        "keep",
        "keep a revision of a file: thinning never removes it",
        "drive.client_cmds:keep",
        _keep_args,
    ),
    Command("unkeep", "take a revision's keep mark away", "drive.client_cmds:unkeep", _keep_args),
)


def _unit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--unit-dir", metavar="DIR", help="where to write the unit (default ~/.config/systemd/user)"
    )
    p.add_argument("--print", action="store_true", help="print the unit instead of writing it")
    p.add_argument(
        "--start", action="store_true", help="then run systemctl --user enable --now on it"
    )


def _service_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR", help="server data directory (default: the local one)")
    p.add_argument("--listen", metavar="HOST:PORT", help="address (default: the server config's)")
    _unit_args(p)


def _service_mount_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "mountpoint", nargs="?", metavar="MOUNTPOINT", help="where to mount (default ~/Drive)"
    )
    _unit_args(p)


def _service_helper_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bindir",
        default="/usr/local/bin",
        metavar="DIR",
        help="directory on mount's PATH to link `drive` into (default /usr/local/bin)",
    )


SERVICE_COMMANDS: tuple[Command, ...] = (
    Command(
        "server",
        "install a systemd user unit that runs the server (Type=notify)",
        "drive.service:server",
        _service_server_args,
    ),
    Command(
        "mount",
        "install a systemd user unit that keeps the drive mounted (Type=notify)",
        "drive.service:mount",
        _service_mount_args,
    ),
    Command(
        "helper",
        "make `mount -t fuse.drive` and /etc/fstab lines work",
        "drive.service:helper",
        _service_helper_args,
    ),
)


def _add_group(
    sub: Any, name: str, help_text: str, commands: tuple[Command, ...]
) -> argparse.ArgumentParser:
    group: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    group_sub = group.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
    for cmd in commands:
        p = group_sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        if cmd.configure:
            cmd.configure(p)
        p.set_defaults(handler=cmd.handler)
    group.set_defaults(subparser=group)
    return group


def build_parser() -> argparse.ArgumentParser:
    """Build the whole argument tree (cheap: imports no subcommand module)."""
    parser = argparse.ArgumentParser(
        prog="drive",
        description="A self-hosted cloud drive: mount it, use it like a folder, and every "
        "device stays in step.",
        epilog="Start here: `drive up` runs a local server, logs in and mounts ~/Drive.",
    )
    parser.add_argument(
        "--home",
        metavar="DIR",
        help="client state directory (default: $DRIVE_HOME, else the platform's usual places)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="log level (default: log_level in HOME/config.toml, else warning)",
    )
    parser.add_argument(
        "--log-file",
        metavar="FILE",
        help="also log to FILE (default: log_file in HOME/config.toml, relative to the home)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for cmd in CLIENT_COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        if cmd.configure:
            cmd.configure(p)
        p.set_defaults(handler=cmd.handler)

    _add_group(sub, "server", "run and administer a drive server", SERVER_COMMANDS)
    _add_group(sub, "service", "run the server or a mount as a systemd service", SERVICE_COMMANDS)

    auth = sub.add_parser("auth", help="tokens for scripts", description="Tokens for scripts.")
    auth_sub = auth.add_subparsers(dest="auth_command", metavar="COMMAND")
    tok = auth_sub.add_parser(
        "token",
        help="print this device's bearer token",
        description="Print this device's bearer token (use as `Authorization: Bearer TOKEN`).",
    )
    tok.set_defaults(handler="drive.client_cmds:auth_token")
    auth.set_defaults(subparser=auth)
    return parser


def _resolve(spec: str) -> Handler:
    module_name, _, func_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise NotLandedError(spec) from exc
        raise
    handler = getattr(module, func_name, None)
    if handler is None:
        raise NotLandedError(spec)
    return handler  # type: ignore[no-any-return]  # getattr on a module is Any


def _setup_logging(args: argparse.Namespace) -> None:
    """Log to stderr, and to a file when asked; levels from the options, else config.toml."""
    from drive.settings import client_home, load_settings

    settings = load_settings()
    level_name = "debug" if args.debug else (args.log_level or settings.log_level or "warning")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    log_file = args.log_file or settings.log_file
    if log_file:
        path = client_home() / os.path.expanduser(log_file)
        try:
            from blockstore.fsutil import open_private_append

            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            open_private_append(path).close()  # the log names the user's files: 0600
            handlers.append(logging.FileHandler(path, encoding="utf-8"))
        except OSError as exc:
            raise UserError(f"cannot open the log file {path}: {exc.strerror}") from None
    logging.basicConfig(
        level=getattr(logging, level_name.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
    )


def _command_names(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:  # argparse has no public accessor for subcommand names
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `drive` command and return its exit status."""
    from drive.malloc_tuning import tune_malloc

    tune_malloc()  # before the server or the mount allocate their first blocks
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    from drive import mount_helper

    if mount_helper.is_helper_call(argv, _command_names(parser), os.path.basename(sys.argv[0])):
        return mount_helper.main(argv)  # `mount -t fuse.drive` runs `drive SOURCE MP -o OPTS`
    args = parser.parse_args(argv)
    if args.home:
        os.environ["DRIVE_HOME"] = os.path.abspath(os.path.expanduser(args.home))
    try:
        _setup_logging(args)
        handler_spec: str | None = getattr(args, "handler", None)
        if handler_spec is None:
            sub: argparse.ArgumentParser = getattr(args, "subparser", parser)
            sub.print_help(sys.stderr)
            return 2
        return _resolve(handler_spec)(args)
    except NotLandedError as exc:
        print(f"drive: {exc}", file=sys.stderr)
        return 3
    except UserError as exc:
        return _fail(args, str(exc), exc.exit_status)
    except OSError as exc:  # disk full, permission denied, ...: the user can fix these
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(args, f"{exc.strerror or exc}{where}", 1)
    except KeyboardInterrupt:
        print("drive: interrupted", file=sys.stderr)
        return 130


def _fail(args: argparse.Namespace, message: str, status: int) -> int:
    """Print one line (plus the traceback with --debug) and return the exit status."""
    if args.debug:
        traceback.print_exc()
    print(f"drive: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
