"""Administration of users on a data directory: what `drive server adduser/passwd/...` do.

They work on whatever the data directory's `server.toml` names (the database, the block
store, the master key), SQLite or PostgreSQL alike. Synchronous and safe while the server
runs: every change is one database transaction, and a deleted user's blocks are removed
from the block store after their rows are gone, so the running server can no longer reach
them.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from server.config import ConfigError, load_config
from server.db import accounts, open_sync
from server.db.conn import Conn
from server.db.schema import SchemaTooNew
from server.db.url import DatabaseUnavailable
from server.errors import AccountError
from server.keyring import load_master, new_wrapped_key
from server.lifecycle import Report
from server.locations import LocationError, Locations, open_archive_store, open_block_store

log = logging.getLogger(__name__)


class SetupError(Exception):
    """The data directory's config, or the database it names, cannot be used (one line)."""


FAILURES = (AccountError, SetupError)
"""What an admin command reports to the operator as one line."""

P = ParamSpec("P")
T = TypeVar("T")


def _call(
    data_dir: Path,
    fn: Callable[Concatenate[Conn, P], T],
    *args: P.args,
    **kw: P.kwargs,
) -> T:
    """Run `fn(conn, ...)` on a connection of its own (opened, migrated, closed)."""
    try:
        conn = open_sync(locations(data_dir).database)
    except (DatabaseUnavailable, SchemaTooNew) as exc:
        raise SetupError(str(exc)) from None
    try:
        return fn(conn, *args, **kw)
    finally:
        conn.close()


def locations(data_dir: Path) -> Locations:
    """Where the data directory's config says the state is (`SetupError` if it is bad)."""
    try:
        return Locations.from_config(load_config(None, data_dir), data_dir)
    except (ConfigError, LocationError) as exc:
        raise SetupError(str(exc)) from None


def add_user(data_dir: Path, name: str, password: str, quota_bytes: int | None = None) -> None:
    """Create a user with an empty drive and a fresh data key."""
    accounts.check_user_name(name)
    accounts.check_password(password)
    master = load_master(locations(data_dir).master_key_file)
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
    store = open_block_store(locations(data_dir).blocks)
    removed = 0
    for key in list(store.keys(f"{account}/")):
        store.delete(key)
        removed += 1
    log.info("deleted user %s (account %s) and %d blocks", name, account, removed)


def list_users(data_dir: Path) -> list[accounts.UserInfo]:
    """Every user of this data directory."""
    return _call(data_dir, accounts.list_users)


def maintenance(data_dir: Path, now: float | None, *, dry_run: bool) -> Report:
    """One storage-lifecycle pass over the data directory (server.lifecycle), at `now`
    (None: the clock); a dry run changes nothing. Safe beside a running server: moves and
    collections check the database under its transactions."""
    from server.blocks import BlockService
    from server.db import Database
    from server.keyring import Keyring
    from server.lifecycle import Lifecycle
    from server.metrics import Metrics

    try:
        config = load_config(None, data_dir)
        where = Locations.from_config(config, data_dir)
        store = open_block_store(where.blocks)
        archive = open_archive_store(where.archive, where.blocks)
    except (ConfigError, LocationError) as exc:
        raise SetupError(str(exc)) from None
    try:
        db = Database(where.database, threads=1)
    except (DatabaseUnavailable, SchemaTooNew) as exc:
        raise SetupError(str(exc)) from None
    try:
        keyring = Keyring(load_master(where.master_key_file))
        blocks = BlockService(
            db, store, keyring, Metrics(), config.max_block_bytes, archive=archive
        )
        return Lifecycle.build(db, blocks, config).run_sync(now, dry_run=dry_run)
    finally:
        db.close()
