"""When a device token expires, and when its last use is written back.

A token lives while it is used: it expires `idle_seconds` after its last recorded use
(`devices.last_seen`). Writing `last_seen` on every request would turn every read into a
database write, so a use is recorded only once the recorded one is `touch_seconds` old: the
recorded time lags the real one by at most that much, so a token may expire up to
`touch_seconds` before a full idle period has passed, never after.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.config import ServerConfig


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    """The idle lifetime of device tokens and how often a use is written back."""

    idle_seconds: float
    touch_seconds: float

    @classmethod
    def from_config(cls, config: ServerConfig) -> TokenPolicy:
        """The policy a server with `config` applies (a touch interval never beyond a
        quarter of the idle time, so a short idle time in tests still refreshes)."""
        idle = config.token_idle_seconds
        return cls(idle, min(config.token_touch_seconds, idle / 4))

    def not_before(self, now: float) -> float:
        """The earliest last use a token may have at `now` and still be valid."""
        return now - self.idle_seconds

    def expires_at(self, last_seen: float) -> float:
        """When a token last used at `last_seen` expires unless it is used again."""
        return last_seen + self.idle_seconds

    def needs_touch(self, last_seen: float, now: float) -> bool:
        """True when the recorded last use is old enough to be written again."""
        return now - last_seen >= self.touch_seconds
