"""Users, devices and tokens: the SQL and the password hashing behind them.

Passwords are hashed with scrypt (n=2**14, r=8, p=1, 16-byte salt); tokens are 32 random
bytes (urlsafe base64) of which only the SHA-256 is stored, one per device login, revocable.
These functions are synchronous (worker threads, or the admin CLI directly) and each change
is one transaction.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from server.db import write_txn
from server.db.conn import Conn
from server.errors import AccountError

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
TOKEN_BYTES = 32
MAX_PASSWORD_BYTES = 1024

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the authenticated user and device behind a token."""

    user_id: int
    user: str
    account: str
    ns_id: int
    device_id: int
    device: str
    token_hash: str
    client: str | None = None
    """This request's `X-Drive-Client` id (per request: not part of the cached token)."""


@dataclass(frozen=True, slots=True)
class Usage:
    """A user's storage: `used` counts blocks some kept version references (what the quota
    limits), `staged` blocks nothing references yet (uploads awaiting their commit, or left
    by a refused one until garbage collection), bounded separately (server.quota)."""

    quota: int | None
    used: int
    staged: int


@dataclass(frozen=True, slots=True)
class UserInfo:
    """One user as the admin commands show it."""

    name: str
    account: str
    quota_bytes: int | None
    used_bytes: int
    devices: int
    created_at: float


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One logged-in device as `drive server list-devices` shows it."""

    id: int
    name: str
    created_at: float
    last_seen: float
    """The recorded last use (lags the real one by at most the touch interval)."""


def hash_password(password: str) -> str:
    """Return `scrypt$N$r$p$salt$hash` (salt and hash in base64)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Check `password` against a `hash_password` string in constant time."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


def token_hash(token: str) -> str:
    """The stored form of a bearer token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_user_name(name: str) -> str:
    """Refuse user names that would be awkward in paths, logs or URLs."""
    if not _NAME_RE.fullmatch(name):
        raise AccountError(
            f"invalid user name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_password(password: str) -> str:
    """Refuse empty and absurdly long passwords."""
    if not password:
        raise AccountError("the password is empty")
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise AccountError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
    return password


def create_user(
    conn: Conn,
    name: str,
    pw_hash: str,
    account: str,
    wrapped_key: bytes,
    quota_bytes: int | None,
) -> int:
    """Create a user with its root namespace and root directory; returns the user id."""
    now = time.time()
    with write_txn(conn):
        if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
            raise AccountError(f"user {name!r} already exists")
        (user_id,) = conn.execute(
            "INSERT INTO users (name, account, pw_hash, quota_bytes, wrapped_key, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (name, account, pw_hash, quota_bytes, wrapped_key, now),
        ).fetchone()
        (ns_id,) = conn.execute(
            "INSERT INTO namespaces (owner_id, kind) VALUES (?, 'root') RETURNING id", (user_id,)
        ).fetchone()
        conn.execute("UPDATE users SET root_ns = ? WHERE id = ?", (ns_id, user_id))
        conn.execute(
            "INSERT INTO files (ns_id, id, parent_id, name, kind, mode, mtime_ns, rev)"
            " VALUES (?, 1, NULL, '', 'dir', ?, ?, 0)",
            (ns_id, 0o755, time.time_ns()),
        )
    return int(user_id)


def set_password(conn: Conn, name: str, pw_hash: str, *, revoke_devices: bool) -> int:
    """Change a user's password, and with `revoke_devices` revoke every device token of
    theirs in the same transaction (a leaked password must not leave an intruder logged in).

    Returns:
        How many device tokens were revoked.
    """
    with write_txn(conn):
        row = conn.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise AccountError(f"no such user {name!r}")
        conn.execute("UPDATE users SET pw_hash = ? WHERE id = ?", (pw_hash, row[0]))
        if not revoke_devices:
            return 0
        cur = conn.execute(
            "UPDATE devices SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
            (time.time(), row[0]),
        )
        return cur.rowcount


def delete_user(conn: Conn, name: str) -> str:
    """Delete a user and every row they own; returns the account id (for block cleanup)."""
    with write_txn(conn):
        row = conn.execute("SELECT id, account FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise AccountError(f"no such user {name!r}")
        user_id, account = int(row[0]), str(row[1])
        ns_ids = [r[0] for r in conn.execute(
            "SELECT id FROM namespaces WHERE owner_id = ?", (user_id,)
        )]  # fmt: skip
        for ns_id in ns_ids:
            conn.execute("DELETE FROM version_blocks WHERE ns_id = ?", (ns_id,))
            conn.execute("DELETE FROM file_versions WHERE ns_id = ?", (ns_id,))
            conn.execute("DELETE FROM files WHERE ns_id = ?", (ns_id,))
            conn.execute("DELETE FROM journal WHERE ns_id = ?", (ns_id,))
        conn.execute("DELETE FROM blocks WHERE user_id = ?", (user_id,))
        conn.execute("DELETE FROM upload_sessions WHERE user_id = ?", (user_id,))
        conn.execute("DELETE FROM devices WHERE user_id = ?", (user_id,))
        conn.execute("DELETE FROM namespaces WHERE owner_id = ?", (user_id,))
        conn.execute("DELETE FROM users WHERE id = ?", (user_id,))
    return account


def list_users(conn: Conn) -> list[UserInfo]:
    """Every user, by name."""
    rows = conn.execute(
        "SELECT u.name, u.account, u.quota_bytes, u.used_bytes, u.created_at,"
        " (SELECT COUNT(*) FROM devices d WHERE d.user_id = u.id AND d.revoked_at IS NULL)"
        " FROM users u ORDER BY u.name"
    ).fetchall()
    return [UserInfo(r[0], r[1], r[2], r[3], r[5], r[4]) for r in rows]


def password_hash_of(conn: Conn, name: str) -> tuple[int, str] | None:
    """The user's id and stored password hash, or None for an unknown user."""
    row = conn.execute("SELECT id, pw_hash FROM users WHERE name = ?", (name,)).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def add_device(conn: Conn, user_id: int, device: str, tok_hash: str) -> int:
    """Record a device login; returns the device id."""
    with write_txn(conn):
        (device_id,) = conn.execute(
            "INSERT INTO devices (user_id, name, token_hash, created_at, last_seen)"
            " VALUES (?, ?, ?, ?, ?) RETURNING id",
            (user_id, device, tok_hash, time.time(), time.time()),
        ).fetchone()
        return int(device_id)


def principal_for(conn: Conn, tok_hash: str, not_before: float) -> tuple[Principal, float] | None:
    """The live device and user behind a token hash with the device's recorded last use, or
    None when the token is unknown, revoked, or last used before `not_before` (expired)."""
    row = conn.execute(
        "SELECT u.id, u.name, u.account, u.root_ns, d.id, d.name, d.last_seen FROM devices d"
        " JOIN users u ON u.id = d.user_id"
        " WHERE d.token_hash = ? AND d.revoked_at IS NULL AND d.last_seen >= ?",
        (tok_hash, not_before),
    ).fetchone()
    if row is None:
        return None
    who = Principal(
        int(row[0]), str(row[1]), str(row[2]), int(row[3]), int(row[4]), str(row[5]), tok_hash
    )
    return who, float(row[6])


def touch_device(conn: Conn, device_id: int, now: float) -> None:
    """Record a use of a device's token (never moves the time backwards)."""
    with write_txn(conn):
        conn.execute(
            "UPDATE devices SET last_seen = ? WHERE id = ? AND last_seen < ?",
            (now, device_id, now),
        )


def revoke_device(conn: Conn, device_id: int) -> None:
    """Revoke one device's token."""
    with write_txn(conn):
        conn.execute("UPDATE devices SET revoked_at = ? WHERE id = ?", (time.time(), device_id))


def list_devices(conn: Conn, name: str) -> list[DeviceInfo]:
    """The user's devices whose tokens are not revoked (expired ones included), oldest
    first."""
    row = conn.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise AccountError(f"no such user {name!r}")
    rows = conn.execute(
        "SELECT id, name, created_at, last_seen FROM devices"
        " WHERE user_id = ? AND revoked_at IS NULL ORDER BY created_at, id",
        (row[0],),
    ).fetchall()
    return [DeviceInfo(int(r[0]), str(r[1]), float(r[2]), float(r[3])) for r in rows]


def revoke_named_device(conn: Conn, name: str, device: str) -> int:
    """Revoke the user's live tokens of the device called `device` (two logins may share a
    name: all of them go), else of the device whose id is `device`.

    Returns:
        How many tokens were revoked (at least one; none is an `AccountError`).
    """
    with write_txn(conn):
        row = conn.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise AccountError(f"no such user {name!r}")
        now = time.time()
        cur = conn.execute(
            "UPDATE devices SET revoked_at = ? WHERE user_id = ? AND name = ?"
            " AND revoked_at IS NULL",
            (now, row[0], device),
        )
        if cur.rowcount == 0 and device.isascii() and device.isdigit():
            cur = conn.execute(
                "UPDATE devices SET revoked_at = ? WHERE user_id = ? AND id = ?"
                " AND revoked_at IS NULL",
                (now, row[0], int(device)),
            )
        if cur.rowcount == 0:
            raise AccountError(f"user {name!r} has no logged-in device {device!r}")
        return cur.rowcount


def usage(conn: Conn, user_id: int) -> Usage:
    """The user's quota (None for unlimited), referenced and staged block bytes."""
    row = conn.execute(
        "SELECT quota_bytes, used_bytes, staged_bytes FROM users WHERE id = ?", (user_id,)
    ).fetchone()
    return Usage(None if row[0] is None else int(row[0]), int(row[1]), int(row[2]))


def account_key(conn: Conn, user_id: int) -> tuple[str, bytes]:
    """The user's account id and wrapped data key."""
    row = conn.execute("SELECT account, wrapped_key FROM users WHERE id = ?", (user_id,)).fetchone()
    return str(row[0]), bytes(row[1])
