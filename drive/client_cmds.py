"""Client subcommands: login, logout, auth token, status, revisions, restore, trash, undelete.

Thin wrappers over `syncd.remote`: parse, make one or two calls, print. Failures the user
can cause become `UserError` (one line on stderr, non-zero exit).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from drive.errors import UserError
from drive.procs import pid_alive
from drive.progress import Progress
from drive.sizes import format_size
from syncd import errors
from syncd.config import (
    ClientConfig,
    load_config,
    normalize_fingerprint,
    remove_config,
    save_config,
)
from syncd.home import Home, resolve_home
from syncd.remote import RemoteClient, fetch_certificate
from syncd.remote import login as remote_login

__all__ = [
    "auth_token",
    "keep",
    "login",
    "logout",
    "restore",
    "revisions",
    "status",
    "to_drive_path",
    "trash",
    "undelete",
    "unkeep",
]

T = TypeVar("T")


def _config() -> tuple[Home, ClientConfig]:
    home = resolve_home()
    try:
        return home, load_config(home)
    except errors.NotLoggedIn as exc:
        raise UserError(str(exc)) from None


def _run(cfg: ClientConfig, fn: Callable[[RemoteClient], Awaitable[T]]) -> T:
    async def main() -> T:
        rc = RemoteClient.from_config(cfg)
        try:
            return await fn(rc)
        finally:
            await rc.aclose()

    try:
        return trio.run(main)
    except errors.Unauthorized as exc:
        raise UserError(f"not authorised ({exc}); log in again with `drive login`") from exc
    except errors.Offline as exc:  # includes CertificateMismatch
        raise UserError(_diagnose_offline(cfg, exc)) from exc
    except errors.NotFound as exc:
        raise UserError(f"not found: {exc.body.get('message') or exc}") from exc
    except errors.RemoteError as exc:
        raise UserError(f"the server refused: {exc.body.get('message') or exc}") from exc


def _colons(fingerprint: str) -> str:
    return ":".join(fingerprint[i : i + 2] for i in range(0, len(fingerprint), 2)).upper()


def _reach_error(url: str, exc: errors.SyncError) -> str:
    """ "cannot reach URL: connection refused (is the server running?)" from an Offline error."""
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        reason = cause.strerror[0].lower() + cause.strerror[1:]
    elif isinstance(cause, OSError):
        reason = str(cause) or type(cause).__name__
    else:
        reason = str(exc)
    hint = " (is the server running?)" if isinstance(cause, ConnectionRefusedError) else ""
    return f"server down: cannot reach {url}: {reason}{hint}"


def _diagnose_offline(cfg: ClientConfig, exc: errors.Offline) -> str:
    """Why a logged-in call got no answer: the server is down, or its certificate changed."""
    try:
        _, now = fetch_certificate(cfg.server_url, timeout=5.0)
    except errors.SyncError as reach:
        return _reach_error(cfg.server_url, reach)
    if now != cfg.fingerprint:
        return _certificate_changed(cfg, now)
    return f"server unreachable: {exc}"


def _certificate_changed(cfg: ClientConfig, now: str) -> str:
    """What to say when the server presents certificate `now` instead of the pinned one,
    with the command that trusts the new one."""
    return (
        f"the certificate of {cfg.server_url} changed since this device logged in "
        f"(pinned {_colons(cfg.fingerprint)}, now {_colons(now)}); nothing was sent. "
        f"If you expect this, trust the new one with: drive login {cfg.server_url} "
        f"--user {cfg.user} --trust-fingerprint {now}"
    )


def _offline_reason(cfg: ClientConfig, last_error: str | None) -> str | None:
    """Why a mount is offline: a changed certificate (checked now, it needs a command from
    the user), else what the mount last reported."""
    try:
        _, now = fetch_certificate(cfg.server_url, timeout=5.0)
    except errors.SyncError:
        return last_error
    return _certificate_changed(cfg, now) if now != cfg.fingerprint else last_error


def _mount_points() -> list[Path]:
    out: list[Path] = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fstype = right.split()[0] if right else ""
                if fstype.startswith("fuse") and "drive" in fstype:
                    out.append(Path(left.split()[4].replace("\\040", " ")))
    except OSError:
        pass
    return out


def to_drive_path(text: str) -> str:
    """A path inside a mount point becomes its drive path; a drive path stays as is."""
    local = Path(text).expanduser()
    if local.is_absolute() or local.exists():
        absolute = Path(os.path.abspath(local))
        for mp in _mount_points():
            if absolute == mp or mp in absolute.parents:
                rel = absolute.relative_to(mp).as_posix()
                return "/" if rel == "." else "/" + rel
    if not text.startswith("/"):
        raise UserError(f"{text!r} is neither inside a mounted drive nor an absolute drive path")
    return text.rstrip("/") or "/"


# -- login / logout / token ----------------------------------------------------------------


def login(args: argparse.Namespace) -> int:
    home = resolve_home()
    url = args.url.rstrip("/")
    try:
        pem, fp = fetch_certificate(url)
    except errors.BadRequest as exc:
        raise UserError(f"bad URL: {exc}") from None
    except errors.SyncError as exc:
        raise UserError(_reach_error(url, exc)) from None
    try:
        pinned: ClientConfig | None = load_config(home)
    except errors.NotLoggedIn:
        pinned = None
    if pinned is not None and pinned.server_url != url:
        pinned = None
    if args.trust_fingerprint:
        try:
            want = normalize_fingerprint(args.trust_fingerprint)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if want != fp:
            raise UserError(
                f"certificate fingerprint mismatch: {url} presents {fp}, expected {want}"
            )
    elif pinned is not None and pinned.fingerprint == fp:
        pass  # logging in again to the server this home already trusts
    elif pinned is not None:
        raise UserError(
            f"the certificate of {url} changed since this device logged in (pinned "
            f"{_colons(pinned.fingerprint)}, now {_colons(fp)}); if you expect this, "
            f"pass --trust-fingerprint {fp}"
        )
    elif sys.stdin.isatty() and not args.password_stdin:
        print(f"{url} presents a certificate with SHA-256 fingerprint\n  {fp}", file=sys.stderr)
        if input("Trust it? [y/N] ").strip().lower() not in ("y", "yes"):
            raise UserError("certificate not trusted; nothing changed")
    else:
        raise UserError(
            f"the server's certificate is not trusted yet; check it and pass "
            f"--trust-fingerprint {fp}"
        )
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise UserError("no password on stdin (expected one line)")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.user}: ")
    else:
        raise UserError("no password: use --password-stdin or run on a terminal")
    device = args.device or socket.gethostname()
    try:
        body = trio.run(remote_login, url, pem, args.user, password, device)
    except errors.Unauthorized:
        raise UserError("wrong user name or password") from None
    except errors.RateLimited:
        raise UserError("too many login attempts; wait a minute and try again") from None
    except errors.Offline as exc:
        raise UserError(_reach_error(url, exc)) from None
    except errors.SyncError as exc:
        raise UserError(f"login failed: {exc}") from None
    _forget_other_account(home, url, args.user)
    save_config(
        home,
        ClientConfig(
            server_url=url,
            user=str(body.get("user", args.user)),
            device=str(body.get("device", device)),
            device_id=int(body.get("device_id", 0)),
            token=str(body["token"]),
            fingerprint=fp,
            cert_pem=pem,
        ),
    )
    print(f"logged in to {url} as {args.user} (device {device})")
    return 0


def _forget_other_account(home: Home, url: str, user: str) -> None:
    """Local state belongs to one account: drop it when logging in as someone else."""
    try:
        old = load_config(home)
    except errors.NotLoggedIn:
        old = None
    if old is not None and (old.server_url, old.user) == (url, user):
        return
    if home.state_path.exists() and any(home.state_path.iterdir()):
        from syncd.state import StateDB

        st = StateDB(home.state_path)
        try:  # queued, parked (refused for now) or written but not queued: all unsynced
            changed = {n.ino for n in st.dirty_nodes() if n.linked}
            pending = st.op_count() + len(st.parked()) + len(changed)
        finally:
            st.close()
        if pending:
            raise UserError(
                f"local changes of the previous login are not uploaded yet ({pending} "
                "queued, not synced or changed); mount and let them sync (`drive status`), "
                "or use another --home"
            )
    for path in (home.state_path, home.cache_path, home.dirty_path):
        shutil.rmtree(path, ignore_errors=True)


def logout(args: argparse.Namespace) -> int:
    home, cfg = _config()
    try:
        _run(cfg, lambda rc: rc.logout())
    except UserError as exc:
        print(f"drive: could not revoke the token on the server ({exc})", file=sys.stderr)
    remove_config(home)
    print("logged out")
    return 0


def auth_token(args: argparse.Namespace) -> int:
    _, cfg = _config()
    print(cfg.token)
    return 0


# -- status ---------------------------------------------------------------------------------


def status(args: argparse.Namespace) -> int:
    """Pending uploads (with progress), conflicts, offline state, remote activity (R17)."""
    home, cfg = _config()
    from syncd.state import StateDB
    from syncd.tree import ino_at

    pending = 0
    conflicts: list[Any] = []
    parked: list[dict[str, Any]] = []
    if home.state_path.exists():
        st = StateDB(home.state_path)
        try:
            pending = st.op_count()
            conflicts = [c for c in st.get_meta("conflicts", [])  # gone once its copy is
                         if ino_at(st, str(c.get("saved_as", ""))) is not None]  # fmt: skip
            parked = [{"op": op.kind, "path": op.where,
                       "reason": reason, "since": since}
                      for _, op, reason, since in st.parked()]  # fmt: skip
        finally:
            st.close()
    try:
        mstat = json.loads(home.status_path.read_text())
    except (OSError, ValueError):
        mstat = {}
    mounted = bool(mstat.get("mounted", False)) and pid_alive(mstat.get("pid"))
    last_error = mstat.get("last_error")
    who: dict[str, Any] = {}
    if mounted:
        online = bool(mstat.get("online", True))
        if not online:
            last_error = _offline_reason(cfg, last_error)
        else:
            with contextlib.suppress(UserError):  # then the mount's last figures
                who = _run(cfg, lambda rc: rc.whoami())
    else:
        try:
            who = _run(cfg, lambda rc: rc.whoami())
            online = True
        except UserError as exc:  # says why: server down, or its certificate changed
            online, last_error = False, str(exc)
    body = {
        "online": online,
        "pending": pending,
        "parked": parked,
        "queued": mstat.get("queued", []) if mounted else [],
        "uploading": mstat.get("uploading") if mounted else None,
        "conflicts": conflicts,
        "recent": mstat.get("recent", []),
        "editing": mstat.get("editing", []) if mounted else [],
        "last_error": last_error,
        "cache_bytes": int(mstat.get("cache_bytes", 0)),
        "mirror": mstat.get("mirror") if mounted else None,
        "mounted": mounted,
        "usage": _usage(who, mstat),
        "server": cfg.server_url,
        "user": cfg.user,
        "device": cfg.device,
    }
    if args.json:
        print(json.dumps(body))
        return 0
    _print_status(body)
    return 0


_USAGE_KEYS = ("quota_bytes", "used_bytes", "staged_bytes", "logical_bytes",
               "dedupe_saved_bytes", "stored_bytes", "archived_bytes")  # fmt: skip


def _usage(who: dict[str, Any], mstat: dict[str, Any]) -> dict[str, Any] | None:
    """The account's storage as the server reports it (`whoami`), else as the mount last
    heard it; None when neither is known."""
    source = who or mstat
    if "used_bytes" not in source:
        return None
    return {k: source.get(k) for k in _USAGE_KEYS if k in source}


def _print_usage(usage: dict[str, Any] | None) -> None:
    if not usage:
        return
    quota = usage.get("quota_bytes")
    limit = "no quota" if not isinstance(quota, int) else f"quota {format_size(quota)}"
    line = f"storage: {format_size(int(usage.get('used_bytes') or 0))} used, {limit}"
    saved = usage.get("dedupe_saved_bytes")
    if isinstance(saved, int):
        line += f" (dedupe saved {format_size(saved)}"
        archived = usage.get("archived_bytes")
        if isinstance(archived, int) and archived:
            line += f", {format_size(archived)} in the archive"
        line += ")"
    print(line)


def _when(t: object) -> str:
    if not isinstance(t, int | float):
        return "?"
    return time.strftime("%H:%M:%S", time.localtime(float(t)))


def _print_status(body: dict[str, Any]) -> None:
    state = "online" if body["online"] else "OFFLINE (changes are kept and sent when back)"
    mounted = "mounted" if body["mounted"] else "not mounted"
    print(f"{body['user']}@{body['server']} (device {body['device']}): {state}, {mounted}")
    if body["last_error"] and not body["online"]:
        print(f"  last error: {body['last_error']}")
    mirror = body.get("mirror")
    if isinstance(mirror, dict) and not mirror.get("complete"):
        print(f"  making every folder available offline: {mirror.get('folders_listed')} "
              "folders listed so far")  # fmt: skip
    _print_usage(body.get("usage"))
    print(f"pending uploads: {body['pending']}")
    up = body["uploading"]
    if isinstance(up, dict) and up.get("total"):
        pct = 100.0 * float(up.get("done", 0)) / max(1, int(up["total"]))
        print(f"  uploading {up.get('path')}: {pct:.0f}% of {int(up['total']) / (1 << 20):.1f} MiB")
    for q in body["queued"][:10]:
        print(f"  queued: {q.get('op')} {q.get('path')}")
    for p in body["parked"]:
        print(f"not synced: {p.get('path')}: {p.get('reason')} (kept here, retried every minute)")
    for c in body["conflicts"][-10:]:
        print(f"conflict: {c.get('path')} -> your version saved as {c.get('saved_as')}")
    for e in body["editing"]:
        print(f"{e.get('user')} on {e.get('device')} is editing {e.get('path')}")
    verbs = {"create": "created", "update": "edited", "delete": "deleted", "move": "moved",
             "mkdir": "created folder", "restore": "restored", "undelete": "undeleted"}  # fmt: skip
    for r in body["recent"][-10:]:
        verb = verbs.get(str(r.get("op")), str(r.get("op")))
        extra = f" (from {r.get('old_path')})" if r.get("old_path") else ""
        print(f"{_when(r.get('time'))} {r.get('device')}: {verb} {r.get('path')}{extra}")
    print(f"cache: {body['cache_bytes'] / (1 << 20):.1f} MiB")


# -- history ----------------------------------------------------------------------------


def revisions(args: argparse.Namespace) -> int:
    _, cfg = _config()
    path = to_drive_path(args.path)
    if args.limit < 1:
        raise UserError("--limit must be at least 1")
    revs = _run(cfg, lambda rc: rc.revisions(path, args.limit))
    if args.json:
        print(json.dumps([r.to_json() for r in revs]))
        return 0
    print(f"{'REVISION':>8}  {'SIZE':>10}  {'TIME':19}  {'KEPT':4}  DEVICE")
    for r in revs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.time))
        kept = "kept" if r.kept else ""
        print(f"{r.revision:>8}  {format_size(r.size):>10}  {when}  {kept:4}  {r.device}")
    if revs:
        print(f"\nbring one back with: drive restore {path} REVISION")
        print(f"keep one from thinning with: drive keep {path} REVISION")
    return 0


def _set_kept(args: argparse.Namespace, kept: bool) -> int:
    _, cfg = _config()
    path = to_drive_path(args.path)
    info = _run(cfg, lambda rc: rc.set_kept(path, args.revision, kept))
    what = "kept: thinning never removes it" if info.kept else "no longer kept"
    print(f"{path} revision {info.revision}: {what}")
    return 0


def keep(args: argparse.Namespace) -> int:
    return _set_kept(args, True)


def unkeep(args: argparse.Namespace) -> int:
    return _set_kept(args, False)


def restore(args: argparse.Namespace) -> int:
    _, cfg = _config()
    path = to_drive_path(args.path)
    with Progress(f"restoring {path} from revision {args.revision}"):  # a spinner on a TTY
        rec = _run(cfg, lambda rc: rc.restore(path, args.revision))
    print(f"restored {path} from revision {args.revision} as revision {rec.rev}")
    return 0


def trash(args: argparse.Namespace) -> int:
    _, cfg = _config()
    entries = _run(cfg, lambda rc: rc.trash())
    if args.json:
        print(json.dumps(entries))
        return 0
    if entries:
        print(f"{'ID':>8}  {'DELETED':19}  {'SIZE':>10}  {'KIND':7}  {'DEVICE':12}  PATH")
    for e in entries:
        when = _full_time(e.get("deleted_at"))
        size = format_size(int(e.get("size") or 0))
        device = str(e.get("device") or "?")
        print(f"{e.get('id', '?'):>8}  {when:19}  {size:>10}  {e.get('kind', '?'):7}  "
              f"{device:12}  {e.get('path')}")  # fmt: skip
    return 0


def _full_time(t: object) -> str:
    if not isinstance(t, int | float):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))


def undelete(args: argparse.Namespace) -> int:
    _, cfg = _config()
    if (args.path is None) == (args.id is None):
        raise UserError("give either PATH or --id ID (see drive trash)")
    path = None if args.path is None else to_drive_path(args.path)
    rec = _run(cfg, lambda rc: rc.undelete(path, args.id))
    print(f"undeleted {rec.path}")
    return 0
