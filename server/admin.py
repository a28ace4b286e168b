"""Administration of users on a data directory: what `drive server adduser/passwd/...` do.

Synchronous and safe while the server runs: every change is one SQLite transaction (WAL,
busy timeout), and a deleted user's blocks are removed from the block directory after their
rows are gone, so the running server can no longer reach them.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from blockstore.store import LocalDirStore
from server.db import accounts, open_sync
from server.keyring import load_master, new_wrapped_key

log = logging.getLogger(__name__)

BLOCKS_DIR = "blocks"


def add_user(data_dir: Path, name: str, password: str, quota_bytes: int | None = None) -> None:
    """Create a user with an empty drive and a fresh data key."""
    accounts.check_user_name(name)
    accounts.check_password(password)
    master = load_master(data_dir)
    account = f"a{secrets.token_hex(8)}"
    conn = open_sync(data_dir)
    try:
        accounts.create_user(
            conn,
            name,
            accounts.hash_password(password),
            account,
            new_wrapped_key(master, account),
            quota_bytes,
        )
    finally:
        conn.close()


def set_password(data_dir: Path, name: str, password: str) -> None:
    """Change a user's password."""
    accounts.check_password(password)
    conn = open_sync(data_dir)
    try:
        accounts.set_password(conn, name, accounts.hash_password(password))
    finally:
        conn.close()


def delete_user(data_dir: Path, name: str) -> None:
    """Delete a user, their devices, metadata and blocks."""
    conn = open_sync(data_dir)
    try:
        account = accounts.delete_user(conn, name)
    finally:
        conn.close()
    store = LocalDirStore(data_dir / BLOCKS_DIR)
    removed = 0
    for key in list(store.keys(f"{account}/")):
        store.delete(key)
        removed += 1
    log.info("deleted user %s (account %s) and %d blocks", name, account, removed)


def list_users(data_dir: Path) -> list[accounts.UserInfo]:
    """Every user of this data directory."""
    conn = open_sync(data_dir)
    try:
        return accounts.list_users(conn)
    finally:
        conn.close()
