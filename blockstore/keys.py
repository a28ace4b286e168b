"""Key material: the server's master key and the per-account data keys it wraps.

Each account's blocks are sealed with its own 256-bit data key (design §3). Data keys are
stored only wrapped: AES-256-GCM under the master key, with the account as associated data,
so a wrapped key copied to another account's row does not unwrap. The master key is 32
random bytes, generated at first start into the data directory with mode 0600, or given by
configuration as 64 hex characters.

Never log or repr key bytes: both key classes hide them in `repr`.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import BlockstoreError, KeyUnwrapError
from .fsutil import fsync_dir

__all__ = [
    "KEY_BYTES",
    "DataKey",
    "MasterKey",
    "new_data_key",
    "unwrap_key",
    "wrap_key",
]

log = logging.getLogger(__name__)

KEY_BYTES = 32
_NONCE_BYTES = 12
_WRAP_VERSION = 1
_WRAP_AAD_PREFIX = b"drive-wrap\x00"
_WRAPPED_BYTES = 1 + _NONCE_BYTES + KEY_BYTES + 16


@dataclass(frozen=True, slots=True)
class DataKey:
    """A per-account 256-bit AES-GCM key. `secret` is never shown in repr."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise ValueError(f"a data key is {KEY_BYTES} bytes, got {len(self.secret)}")


@dataclass(frozen=True, slots=True)
class MasterKey:
    """The server's key-encryption key. `secret` is never shown in repr."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise ValueError(f"a master key is {KEY_BYTES} bytes, got {len(self.secret)}")

    @classmethod
    def from_hex(cls, text: str) -> MasterKey:
        """Build a master key from configuration text: 64 hex characters.

        Raises:
            ValueError: if `text` is not 64 hex characters (surrounding whitespace allowed).
        """
        text = text.strip()
        if len(text) != 2 * KEY_BYTES:
            raise ValueError(f"a master key is {2 * KEY_BYTES} hex characters")
        try:
            return cls(bytes.fromhex(text))
        except ValueError:
            raise ValueError("a master key is 64 hex characters") from None

    def to_hex(self) -> str:
        """Return the key as 64 hex characters (the key file's content, without newline)."""
        return self.secret.hex()

    @classmethod
    def load_or_create(cls, path: Path) -> MasterKey:
        """Load the master key from `path`, creating it (mode 0600) if it does not exist.

        Creation is atomic and race-free: the key is written to a private temporary file,
        fsynced, then hard-linked to `path`, which fails if another process got there first
        (its key is then loaded instead). A reader never sees a half-written key file.

        Raises:
            BlockstoreError: the file exists but does not hold a key.
        """
        path = Path(path)
        try:
            return cls._load(path)
        except FileNotFoundError:
            pass
        key = cls(secrets.token_bytes(KEY_BYTES))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (key.to_hex() + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return cls._load(path)
        finally:
            os.unlink(tmp)
        fsync_dir(path.parent)
        log.info("created master key %s", path)
        return key

    @classmethod
    def _load(cls, path: Path) -> MasterKey:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read(256)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("master key %s is accessible to others (mode %o)", path, mode & 0o777)
        try:
            return cls.from_hex(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise BlockstoreError(f"{path} does not hold a master key (64 hex chars)") from None


def new_data_key() -> DataKey:
    """Return a fresh random data key."""
    return DataKey(secrets.token_bytes(KEY_BYTES))


def _wrap_aad(account: str) -> bytes:
    return _WRAP_AAD_PREFIX + bytes([_WRAP_VERSION]) + account.encode("utf-8")


def wrap_key(master: MasterKey, account: str, data_key: DataKey) -> bytes:
    """Encrypt `data_key` under `master` for `account`.

    Returns:
        61 bytes: version (1) + nonce (12) + ciphertext and tag (48). Store as a blob.
    """
    nonce = secrets.token_bytes(_NONCE_BYTES)
    sealed = AESGCM(master.secret).encrypt(nonce, data_key.secret, _wrap_aad(account))
    return bytes([_WRAP_VERSION]) + nonce + sealed


def unwrap_key(master: MasterKey, account: str, wrapped: bytes) -> DataKey:
    """Decrypt a key made by `wrap_key` with the same master key and account.

    Raises:
        KeyUnwrapError: wrong master key, wrong account, unknown version or damaged bytes.
            (A subclass of `CorruptBlockError`: either way nothing can be decrypted.)
    """
    wrapped = bytes(wrapped)
    if len(wrapped) != _WRAPPED_BYTES or wrapped[0] != _WRAP_VERSION:
        raise KeyUnwrapError(f"wrapped key for {account!r} is malformed")
    nonce, sealed = wrapped[1 : 1 + _NONCE_BYTES], wrapped[1 + _NONCE_BYTES :]
    try:
        secret = AESGCM(master.secret).decrypt(nonce, sealed, _wrap_aad(account))
    except InvalidTag:
        raise KeyUnwrapError(
            f"cannot unwrap the data key of {account!r}: wrong master key or damaged key"
        ) from None
    return DataKey(secret)
