"""The master key and the per-account data keys it unwraps, cached for the process's life.

The master key lives in DATA/master.key (mode 0600, made at first start by
`blockstore.keys.MasterKey.load_or_create`). A data key is unwrapped once per account and
kept in memory; key bytes are never logged.
"""

from __future__ import annotations

import threading
from pathlib import Path

from blockstore.keys import DataKey, MasterKey, new_data_key, unwrap_key, wrap_key
from server.private import private_dir

MASTER_KEY_FILE = "master.key"


def load_master(data_dir: Path) -> MasterKey:
    """Load the server's master key, creating it at first start."""
    private_dir(data_dir)
    return MasterKey.load_or_create(data_dir / MASTER_KEY_FILE)


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
