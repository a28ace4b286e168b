"""Request authentication: bearer tokens to principals, logins, logouts.

Every request looks its token up in the database: no cache, so a token revoked by any
process (`drive server revoke`/`passwd` run beside the server, another API server) is
refused by the very next request on either transport. The lookup is one indexed SELECT in a
worker thread (its cost is in docs/performance.md). Expiry and the throttled write-back of
the last use are `server.tokens.TokenPolicy`. Password checks (scrypt, ~50 ms of CPU) run in
worker threads.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import trio

from server.db import Database, accounts
from server.db.accounts import Principal, Usage
from server.errors import BadRequest, Unauthorized
from server.tokens import TokenPolicy

MAX_DEVICE_NAME = 255
_MAX_TOUCHED = 100_000


@dataclass(frozen=True, slots=True)
class Login:
    """A successful login."""

    token: str
    user: str
    device_id: int
    device: str


class Authenticator:
    """Maps `Authorization: Bearer TOKEN` to a principal."""

    def __init__(self, db: Database, policy: TokenPolicy) -> None:
        self.db = db
        self.policy = policy
        self._touched: dict[int, float] = {}
        """When this process last wrote a device's last use (so concurrent requests of one
        token do not all write it)."""
        self._dummy_hash: str | None = None

    async def authenticate(self, header: str | None) -> Principal:
        """The principal behind an Authorization header; 401 when missing, wrong, revoked
        or expired."""
        if not header:
            raise Unauthorized("missing bearer token (Authorization: Bearer TOKEN)")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("expected Authorization: Bearer TOKEN")
        now = time.time()
        found = await self.db.run(
            accounts.principal_for, accounts.token_hash(token), self.policy.not_before(now)
        )
        if found is None:
            raise Unauthorized("invalid, revoked or expired token: log in again")
        who, last_seen = found
        last_seen = max(last_seen, self._touched.get(who.device_id, 0.0))
        if self.policy.needs_touch(last_seen, now):
            if len(self._touched) > _MAX_TOUCHED:
                self._touched.clear()
            self._touched[who.device_id] = now
            await self.db.run(accounts.touch_device, who.device_id, now)
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

    async def usage(self, who: Principal) -> Usage:
        """The caller's quota and the bytes their account uses."""
        return await self.db.run(accounts.usage, who.user_id)

    async def logout(self, who: Principal) -> None:
        """Revoke the calling token."""
        await self.db.run(accounts.revoke_device, who.device_id)
