"""Administration of users on a data directory: what `drive server adduser/passwd/...` do.

Synchronous and safe while the server runs: every change is one SQLite transaction (WAL,
busy timeout), and a deleted user's blocks are removed from the block directory after their
rows are gone, so the running server can no longer reach them.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from blockstore.store import LocalDirStore
from server.db import accounts, open_sync
from server.keyring import load_master, new_wrapped_key

log = logging.getLogger(__name__)

BLOCKS_DIR = "blocks"

P = ParamSpec("P")
T = TypeVar("T")


def _call(
    data_dir: Path,
    fn: Callable[Concatenate[sqlite3.Connection, P], T],
    *args: P.args,
    **kw: P.kwargs,
) -> T:
    """Run `fn(conn, ...)` on a connection of its own (opened, migrated, closed)."""
    conn = open_sync(data_dir)
    try:
        return fn(conn, *args, **kw)
    finally:
        conn.close()


def add_user(data_dir: Path, name: str, password: str, quota_bytes: int | None = None) -> None:
    """Create a user with an empty drive and a fresh data key."""
    accounts.check_user_name(name)
    accounts.check_password(password)
    master = load_master(data_dir)
    account = f"a{secrets.token_hex(8)}"
    _call(
        data_dir,
        accounts.create_user,
        name,
        accounts.hash_password(password),
        account,
        new_wrapped_key(master, account),
        quota_bytes,
    )


def set_password(data_dir: Path, name: str, password: str, *, keep_devices: bool) -> int:
    """Change a user's password; unless `keep_devices`, log every device out (this command
    has no token of its own to keep). Returns how many device tokens were revoked."""
    accounts.check_password(password)
    pw_hash = accounts.hash_password(password)
    return _call(data_dir, accounts.set_password, name, pw_hash, revoke_devices=not keep_devices)


def list_devices(data_dir: Path, name: str) -> list[accounts.DeviceInfo]:
    """The user's logged-in devices (tokens not revoked; expired ones included)."""
    return _call(data_dir, accounts.list_devices, name)


def revoke_device(data_dir: Path, name: str, device: str) -> int:
    """Revoke the token(s) of one of the user's devices, by name or id; a running server
    refuses them from its next request on. Returns how many were revoked."""
    return _call(data_dir, accounts.revoke_named_device, name, device)


def delete_user(data_dir: Path, name: str) -> None:
    """Delete a user, their devices, metadata and blocks."""
    account = _call(data_dir, accounts.delete_user, name)
    store = LocalDirStore(data_dir / BLOCKS_DIR)
    removed = 0
    for key in list(store.keys(f"{account}/")):
        store.delete(key)
        removed += 1
    log.info("deleted user %s (account %s) and %d blocks", name, account, removed)


def list_users(data_dir: Path) -> list[accounts.UserInfo]:
    """Every user of this data directory."""
    return _call(data_dir, accounts.list_users)
