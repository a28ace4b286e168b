"""The master key and the per-account data keys it unwraps, cached for the process's life.

The master key lives in DATA/master.key or the configured `master_key_file` (mode 0600, made
at first start by
`blockstore.keys.MasterKey.load_or_create`). A data key is unwrapped once per account and
kept in memory; key bytes are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from pathlib import Path

from blockstore.keys import DataKey, MasterKey, new_data_key, unwrap_key, wrap_key
from server.private import private_dir


def load_master(path: Path) -> MasterKey:
    """Load the server's master key (`Locations.master_key_file`), creating it at first
    start (a configured file is checked to exist when the config is loaded)."""
    private_dir(path.parent)
    return MasterKey.load_or_create(path)


def new_wrapped_key(master: MasterKey, account: str) -> bytes:
    """Make a fresh data key for a new account and return it wrapped by the master key."""
    return wrap_key(master, account, new_data_key())


class Keyring:
    """Unwrapped data keys by account (thread-safe: used from worker threads)."""

    def __init__(self, master: MasterKey) -> None:
        self._master = master
        self._keys: dict[str, DataKey] = {}
        self._lock = threading.Lock()

    def cached(self, account: str) -> DataKey | None:
        """The account's data key if it was unwrapped before."""
        with self._lock:
            return self._keys.get(account)

    def data_key(self, account: str, wrapped: bytes) -> DataKey:
        """The account's data key, unwrapped on first use."""
        with self._lock:
            key = self._keys.get(account)
        if key is None:
            key = unwrap_key(self._master, account, wrapped)
            with self._lock:
                self._keys[account] = key
        return key

    def derive(self, purpose: bytes) -> bytes:
        """A 32-byte key for `purpose` (not a data key), derived from the master key so
        every server of a deployment derives the same one (web session cookies)."""
        return hmac.new(self._master.secret, b"drive derive: " + purpose, hashlib.sha256).digest()
