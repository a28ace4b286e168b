"""Token-bucket rate limiting per token (or per client address before login).

Each key has a bucket of `burst` tokens refilled at `rate` per second; a request takes one.
An empty bucket answers 429 with `X-Ratelimit-Remaining`, `X-Ratelimit-Limit` and
`X-Ratelimit-Retry-After` (seconds until one token is back). In-memory, per process: with
several API servers each enforces its own share (good enough; documented in the report).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

MAX_KEYS = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one `take`: allowed or not, and the headers to send."""

    allowed: bool
    limit: int
    remaining: int
    retry_after: int

    def headers(self) -> dict[str, str]:
        """The X-Ratelimit-* headers."""
        h = {"X-Ratelimit-Limit": str(self.limit), "X-Ratelimit-Remaining": str(self.remaining)}
        if not self.allowed:
            h["X-Ratelimit-Retry-After"] = str(self.retry_after)
        return h


class RateLimiter:
    """Buckets by key; not thread-safe (used from the trio thread only)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, now: float | None = None) -> Verdict:
        """Take one token for `key`."""
        now = time.monotonic() if now is None else now
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= MAX_KEYS:
                self._prune(now)
            b = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            b.tokens = min(float(self.burst), b.tokens + (now - b.stamp) * self.rate)
            b.stamp = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return Verdict(True, self.burst, int(b.tokens), 0)
        wait = (1.0 - b.tokens) / self.rate if self.rate > 0 else 3600.0
        return Verdict(False, self.burst, 0, max(1, math.ceil(wait)))

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled (they equal a fresh bucket)."""
        full = [
            k
            for k, b in self._buckets.items()
            if b.tokens + (now - b.stamp) * self.rate >= self.burst
        ]
        for k in full:
            del self._buckets[k]
