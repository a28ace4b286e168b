"""`drive up`: the embedded setup on one machine, in one command, safe to run again.

Each step first looks whether its work is already done and says so: a local server running
from the user's data directory (else started detached, logging to DATA/server.log), a local
user (else created with a generated password shown once), this device logged in (else logged
in, pinning the local server's certificate), the drive mounted (else mounted). The steps reuse
the ordinary subcommands in child processes, so `drive up` behaves exactly like doing it by
hand.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from drive.errors import UserError
from drive.logtail import last_log_line
from drive.procs import pid_alive

__all__ = ["server_data_dir", "up"]

DEFAULT_LISTEN = "127.0.0.1:8443"
SERVER_START_WAIT_S = 60.0
DEFAULT_MOUNTPOINT = "~/Drive"


@dataclass(frozen=True, slots=True)
class RunningServer:
    """What DATA/server.json says about a live server."""

    url: str
    fingerprint: str
    pid: int


def server_data_dir() -> Path:
    """The embedded server's data directory: under the client home when one is given."""
    home = os.environ.get("DRIVE_HOME")
    if home:
        return Path(home) / "server"
    return Path(platformdirs.user_data_dir("drive")) / "server"


def _drive_argv(*args: str) -> list[str]:
    argv = [sys.executable, "-m", "drive.cli"]
    if os.environ.get("DRIVE_HOME"):
        argv += ["--home", os.environ["DRIVE_HOME"]]
    return [*argv, *args]


def _accepts_connections(url: str) -> bool:
    hostport = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except OSError:
        return False


def _running_server(data: Path) -> RunningServer | None:
    try:
        raw = json.loads((data / "server.json").read_text("utf-8"))
        info = RunningServer(str(raw["url"]), str(raw["fingerprint"]), int(raw["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid_alive(info.pid) and _accepts_connections(info.url):
        return info
    return None


def _start_server(data: Path, listen: str) -> RunningServer | str:
    """Start a detached server; its info once listening, else the reason it failed."""
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = data / "server.log"
    with open(log_path, "ab") as log:
        start = log.tell()
        proc = subprocess.Popen(
            _drive_argv("--log-level", "info", "server", "serve", "--data", str(data),
                        "--listen", listen),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + SERVER_START_WAIT_S
    while time.monotonic() < deadline:
        info = _running_server(data)
        if info is not None and info.pid == proc.pid:
            return info
        if proc.poll() is not None:
            reason = last_log_line(log_path, start)
            return reason or f"the server exited with status {proc.returncode}"
        time.sleep(0.1)
    proc.terminate()
    return f"the server did not start within {SERVER_START_WAIT_S:.0f}s; see {log_path}"


def _ensure_server(data: Path) -> RunningServer:
    info = _running_server(data)
    if info is not None:
        print(f"server: already running at {info.url} (data {data})")
        return info
    outcome = _start_server(data, DEFAULT_LISTEN)
    if isinstance(outcome, str) and "cannot listen" in outcome:
        # 8443 is taken by something else: any free port will do for a local server.
        outcome = _start_server(data, "127.0.0.1:0")
    if isinstance(outcome, str):
        raise UserError(f"could not start the local server: {outcome}")
    print(f"server: started at {outcome.url} (data {data}, log {data / 'server.log'})")
    return outcome


def _run_drive(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _drive_argv(*args), input=stdin, capture_output=True, text=True, check=False
    )


def _ensure_login(data: Path, server: RunningServer, user: str) -> None:
    from server import admin
    from server.errors import AccountError
    from syncd.config import load_config, normalize_fingerprint, save_config
    from syncd.errors import NotLoggedIn
    from syncd.home import resolve_home

    home = resolve_home()
    fingerprint = normalize_fingerprint(server.fingerprint)
    try:
        cfg = load_config(home)
    except NotLoggedIn:
        cfg = None
    if cfg is not None and cfg.fingerprint == fingerprint and cfg.user == user:
        if cfg.server_url != server.url:
            from dataclasses import replace

            save_config(home, replace(cfg, server_url=server.url))
        print(f"login: already logged in as {user} (home {home.root})")
        return
    if cfg is not None:
        raise UserError(
            f"this home is logged in to {cfg.server_url} as {cfg.user}; "
            "run `drive logout` first or pick another --home"
        )
    password: str | None = None
    if user not in {u.name for u in admin.list_users(data)}:
        password = secrets.token_urlsafe(12)
        try:
            admin.add_user(data, user, password)
        except AccountError as exc:
            raise UserError(str(exc)) from exc
    if password is None:
        raise UserError(
            f"user {user} already exists on the local server but this home is not logged "
            f"in; run `drive login {server.url} --user {user}`"
        )
    out = _run_drive(
        "login", server.url, "--user", user, "--password-stdin",
        "--trust-fingerprint", fingerprint, stdin=password + "\n",
    )  # fmt: skip
    if out.returncode != 0:
        raise UserError(out.stderr.strip().removeprefix("drive: ") or "login failed")
    print(f"login: created user {user} and logged in (home {home.root})")
    print(f"       password for {user}: {password}   (shown once: keep it for other devices)")


def _is_drive_mount(mp: Path) -> bool:
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) > 4 and fields[4].replace("\\040", " ") == str(mp):
                    return "drive" in right.split()[0] or right.split()[1:2] == ["drive"]
    except OSError:
        return False
    return False


def _ensure_mount(mp: Path) -> None:
    if os.path.ismount(mp):
        if _is_drive_mount(mp):
            print(f"mount: already mounted at {mp}")
            return
        raise UserError(f"{mp} is already a mount point of something else")
    mp.mkdir(parents=True, exist_ok=True)
    out = _run_drive("mount", str(mp))
    if out.returncode != 0:
        raise UserError(out.stderr.strip().removeprefix("drive: ") or "mount failed")
    print(f"mount: mounted at {mp}")


def up(args: argparse.Namespace) -> int:
    """Start the local server, user, login and mount; report what was already there."""
    from drive.settings import load_settings

    default = load_settings().mountpoint or DEFAULT_MOUNTPOINT
    mp = Path(args.mountpoint or default).expanduser().absolute()
    if mp.exists() and not os.path.ismount(mp):
        from drive.mount_cmds import check_mountpoint

        check_mountpoint(mp)  # before anything starts: a bad mount point changes nothing
    data = server_data_dir()
    server = _ensure_server(data)
    _ensure_login(data, server, getpass.getuser())
    _ensure_mount(mp)
    steps = [
        (f"cp SOMEFILE {mp}/", "put files in; they sync in the background"),
        ("drive status", "what is pending, conflicts, recent changes"),
        (f"drive unmount {mp} --wait", "stop, once everything reached the server"),
    ]
    print(f"\nYour drive is at {mp}. Next:\n" + _aligned(steps))
    return 0


def _aligned(rows: list[tuple[str, str]]) -> str:
    """Commands and what they do, the explanations in one column whatever the path length."""
    width = max(len(cmd) for cmd, _ in rows)
    return "\n".join(f"  {cmd.ljust(width)}  {what}" for cmd, what in rows)
