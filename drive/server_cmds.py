"""`drive server ...`: thin wrappers that parse arguments and call into `server`.

The logic lives in `server.admin` (users) and `server.serve` (the service); this module only
reads passwords, formats output and turns operator mistakes into `UserError`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from drive import sdnotify
from drive.errors import UserError
from drive.sizes import parse_size

if TYPE_CHECKING:
    from server.config import ServerConfig


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data).expanduser().resolve()


def _read_password(args: argparse.Namespace, confirm: bool = True) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
        if not password:
            raise UserError("no password on stdin (expected one line)")
        return password
    if not sys.stdin.isatty():
        raise UserError(
            "stdin is not a terminal: pass --password-stdin and write the password on stdin"
        )
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Password (again): ") != password:
        raise UserError("the passwords do not match")
    return password


def serve(args: argparse.Namespace) -> int:
    """Run the server in the foreground until SIGTERM/SIGINT."""
    from server.serve import ServeError, run_server

    if (args.cert is None) != (args.key is None):
        raise UserError("--cert and --key go together")
    try:
        return run_server(
            data_dir=_data_dir(args),
            listen=args.listen,
            cert=Path(args.cert) if args.cert else None,
            key=Path(args.key) if args.key else None,
            config_path=Path(args.config) if args.config else None,
            on_ready=lambda url: sdnotify.ready(f"listening on {url}"),
        )
    except ServeError as exc:
        raise UserError(str(exc)) from exc
    finally:
        sdnotify.stopping("stopped")


def _server_config(data: Path) -> ServerConfig:
    """The data directory's server config (`DATA/server.toml`, else the defaults)."""
    from server.config import ConfigError, load_config

    try:
        return load_config(None, data)
    except ConfigError as exc:
        raise UserError(str(exc)) from None


def _default_quota(data: Path) -> int | None:
    """The server config's `default_quota_bytes` (0 or absent: no quota)."""
    return _server_config(data).default_quota_bytes or None


def adduser(args: argparse.Namespace) -> int:
    """Create a user."""
    from server import admin

    try:
        quota = parse_size(args.quota) if args.quota else _default_quota(_data_dir(args))
    except ValueError as exc:
        raise UserError(f"--quota: {exc}") from None
    try:
        password = _read_password(args)
        admin.add_user(_data_dir(args), args.name, password, quota)
    except admin.FAILURES as exc:
        raise UserError(str(exc)) from exc
    print(f"drive server: user {args.name} created")
    return 0


def passwd(args: argparse.Namespace) -> int:
    """Change a user's password; revoke their device tokens unless --keep-devices."""
    from server import admin

    try:
        password = _read_password(args)
        revoked = admin.set_password(
            _data_dir(args), args.name, password, keep_devices=args.keep_devices
        )
    except admin.FAILURES as exc:
        raise UserError(str(exc)) from exc
    print(f"drive server: password of {args.name} changed")
    if not args.keep_devices:
        print(f"drive server: {revoked} device(s) of {args.name} logged out")
    return 0


def deluser(args: argparse.Namespace) -> int:
    """Delete a user and all their data."""
    from server import admin

    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError("refusing to delete without --yes (stdin is not a terminal)")
        answer = input(f"Delete user {args.name} and all their files? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise UserError("not deleted")
    try:
        admin.delete_user(_data_dir(args), args.name)
    except admin.FAILURES as exc:
        raise UserError(str(exc)) from exc
    print(f"drive server: user {args.name} deleted")
    return 0


def list_users(args: argparse.Namespace) -> int:
    """List users."""
    from server import admin

    try:
        users = admin.list_users(_data_dir(args))
    except admin.FAILURES as exc:
        raise UserError(str(exc)) from exc
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": u.name,
                        "quota_bytes": u.quota_bytes,
                        "used_bytes": u.used_bytes,
                        "devices": u.devices,
                        "created_at": u.created_at,
                    }
                    for u in users
                ]
            )
        )
        return 0
    for u in users:
        quota = "unlimited" if u.quota_bytes is None else f"{u.quota_bytes} B"
        print(f"{u.name}\tused {u.used_bytes} B\tquota {quota}\tdevices {u.devices}")
    return 0


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def list_devices(args: argparse.Namespace) -> int:
    """List a user's logged-in devices with their token's last use and expiry."""
    from server import admin
    from server.tokens import TokenPolicy

    data = _data_dir(args)
    policy = TokenPolicy.from_config(_server_config(data))
    try:
        devices = admin.list_devices(data, args.name)
    except admin.FAILURES as exc:
        raise UserError(str(exc)) from exc
    now = time.time()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": d.id,
                        "device": d.name,
                        "created_at": d.created_at,
                        "last_used_at": d.last_seen,
                        "expires_at": policy.expires_at(d.last_seen),
                        "expired": policy.expires_at(d.last_seen) <= now,
                    }
                    for d in devices
                ]
            )
        )
        return 0
    print("ID\tDEVICE\tCREATED\tLAST USED\tEXPIRES")
    for d in devices:
        expires = policy.expires_at(d.last_seen)
        shown = "expired" if expires <= now else _when(expires)
        print(f"{d.id}\t{d.name}\t{_when(d.created_at)}\t{_when(d.last_seen)}\t{shown}")
    return 0


def revoke(args: argparse.Namespace) -> int:
    """Revoke the token(s) of one of a user's devices."""
    from server import admin

    try:
        n = admin.revoke_device(_data_dir(args), args.name, args.device)
    except admin.FAILURES as exc:
        raise UserError(str(exc)) from exc
    print(f"drive server: {n} token(s) of {args.name}'s device {args.device} revoked")
    return 0


def parse_ahead(text: str) -> float:
    """`+DURATION` (`40d`, `12h`, `30m`, `90s`, `2w`; a bare number is seconds) -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    body = text.removeprefix("+")
    scale = units.get(body[-1:].lower(), 0) if body else 0
    number = body[:-1] if scale else body
    try:
        value = float(number) * (scale or 1)
    except ValueError:
        raise UserError(f"--now {text!r}: expected +DURATION such as +40d, +12h or +90m") from None
    if not text.startswith("+") or value < 0 or value != value or value == float("inf"):
        raise UserError(f"--now {text!r}: expected +DURATION such as +40d, +12h or +90m")
    return value


def maintenance(args: argparse.Namespace) -> int:
    """One storage-lifecycle pass now: thinning, trash expiry, archiving, collection."""
    from server import admin

    now = time.time() + (parse_ahead(args.now) if args.now else 0.0)
    try:
        report = admin.maintenance(_data_dir(args), now, dry_run=args.dry_run)
    except admin.FAILURES as exc:
        raise UserError(str(exc)) from exc
    if args.json:
        print(json.dumps(report.to_json()))
        return 0
    if args.dry_run:
        print("drive server: dry run, nothing changed")
    if args.now:
        print(f"drive server: as if it were {_when(now)}")
    for line in report.lines():
        print(line)
    return 0
