"""Request authentication: bearer tokens to principals, logins, logouts.

Token lookups are cached for a few seconds (`auth_cache_seconds`) so that thousands of long
polls do not each cost a database round trip; a logout through this server drops the
cached entry at once, and revocation by another process is seen within the cache time.
Password checks (scrypt, ~50 ms of CPU) run in worker threads.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import trio

from server.db import Database, accounts
from server.db.accounts import Principal
from server.errors import BadRequest, Unauthorized

MAX_DEVICE_NAME = 255


@dataclass(frozen=True, slots=True)
class Login:
    """A successful login."""

    token: str
    user: str
    device_id: int
    device: str


class Authenticator:
    """Maps `Authorization: Bearer TOKEN` to a principal."""

    def __init__(self, db: Database, cache_seconds: float) -> None:
        self.db = db
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._dummy_hash: str | None = None

    async def authenticate(self, header: str | None) -> Principal:
        """The principal behind an Authorization header; 401 when missing/wrong/revoked."""
        if not header:
            raise Unauthorized("missing bearer token (Authorization: Bearer TOKEN)")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("expected Authorization: Bearer TOKEN")
        th = accounts.token_hash(token)
        now = time.monotonic()
        hit = self._cache.get(th)
        if hit is not None and hit[0] > now:
            await trio.lowlevel.checkpoint()
            return hit[1]
        who = await self.db.run(accounts.principal_for, th)
        if who is None:
            self._cache.pop(th, None)
            raise Unauthorized("invalid or revoked token")
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[th] = (now + self.cache_seconds, who)
        return who

    async def login(self, user: str, password: str, device: str) -> Login:
        """Check a password and issue a new device token; 401 on any mismatch."""
        if not device or len(device.encode("utf-8")) > MAX_DEVICE_NAME:
            raise BadRequest("device must be a name of 1-255 bytes")
        found = await self.db.run(accounts.password_hash_of, user)
        if found is None:
            # Spend the same time as a real check so user names cannot be probed by timing.
            if self._dummy_hash is None:
                self._dummy_hash = await trio.to_thread.run_sync(accounts.hash_password, "x")
            await trio.to_thread.run_sync(accounts.verify_password, password, self._dummy_hash)
            raise Unauthorized("wrong user name or password")
        user_id, pw_hash = found
        if not await trio.to_thread.run_sync(accounts.verify_password, password, pw_hash):
            raise Unauthorized("wrong user name or password")
        token = secrets.token_urlsafe(accounts.TOKEN_BYTES)
        device_id = await self.db.run(
            accounts.add_device, user_id, device, accounts.token_hash(token)
        )
        return Login(token, user, device_id, device)

    async def logout(self, who: Principal) -> None:
        """Revoke the calling token."""
        await self.db.run(accounts.revoke_device, who.device_id)
        self._cache.pop(who.token_hash, None)
