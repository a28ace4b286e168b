"""The client config: which server, who we are there, and the certificate we trust.

Stored as JSON in the home with mode 0600 (it holds the bearer token). Written atomically
(temp file, fsync, rename) so a crash never leaves half a config behind.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass

from blockstore.fsutil import atomic_write
from syncd.errors import NotLoggedIn
from syncd.home import Home

__all__ = ["ClientConfig", "load_config", "normalize_fingerprint", "remove_config", "save_config"]

DEFAULT_FETCH_TIMEOUT_S = 10.0
"""How long a read waits for an uncached block while the server is unreachable, then EIO."""


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """One device's login. `fingerprint` is the pinned SHA-256 of the server certificate
    (lowercase hex, no colons); `cert_pem` the certificate itself (the trust anchor)."""

    server_url: str
    user: str
    device: str
    device_id: int
    token: str
    fingerprint: str
    cert_pem: str
    fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S


_HEX64 = re.compile(r"[0-9a-f]{64}")


def normalize_fingerprint(text: str) -> str:
    """Return a SHA-256 fingerprint as 64 lowercase hex digits (colons and case ignored).

    Raises:
        ValueError: not 32 bytes of hex.
    """
    flat = text.strip().replace(":", "").replace(" ", "").lower()
    if not _HEX64.fullmatch(flat):
        raise ValueError(f"not a SHA-256 fingerprint (64 hex digits): {text!r}")
    return flat


def load_config(home: Home) -> ClientConfig:
    """Read the config of `home`.

    Raises:
        NotLoggedIn: there is none (or it is unreadable).
    """
    try:
        raw = json.loads(home.config_path.read_text("utf-8"))
    except FileNotFoundError:
        raise NotLoggedIn(f"not logged in (no {home.config_path}); run `drive login`") from None
    except (OSError, ValueError) as exc:
        raise NotLoggedIn(f"unreadable client config {home.config_path}: {exc}") from exc
    try:
        cfg = ClientConfig(**raw)
    except TypeError as exc:
        raise NotLoggedIn(f"client config {home.config_path} is damaged: {exc}") from exc
    env_timeout = os.environ.get("DRIVE_FETCH_TIMEOUT")
    if env_timeout:
        from dataclasses import replace

        cfg = replace(cfg, fetch_timeout_s=float(env_timeout))
    return cfg


def save_config(home: Home, cfg: ClientConfig) -> None:
    """Write the config atomically with mode 0600."""
    home.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(home.root, 0o700)
    atomic_write(home.config_path, json.dumps(asdict(cfg), indent=2).encode("utf-8"), 0o600)


def remove_config(home: Home) -> bool:
    """Delete the config; True if there was one."""
    try:
        home.config_path.unlink()
    except FileNotFoundError:
        return False
    return True
