"""When the follower comes back after its long poll was cut off or turned away (N5).

Why: a server that restarts (or dies behind a balancer) drops every long poll it held at the
same instant, and a server that holds too many answers `backoff` to every newcomer alike. If
each client came straight back, or after the same delay, the restarted or surviving server
would take thousands of TLS handshakes and delta reads in the same fraction of a second.
So the first try after a dropped poll is spread uniformly over `DROP_SPREAD_S` ("full
jitter"), and a `backoff` of B seconds becomes a wait uniform in [B, 2B): never sooner than
the server asked, and spread over one more such window. Later retries, while the server stays
unreachable, use the follower's exponential backoff, itself jittered.
"""

from __future__ import annotations

import random
from typing import Protocol

__all__ = ["DROP_SPREAD_S", "Reconnect"]

DROP_SPREAD_S = 15.0
"""Window over which clients whose long poll was dropped come back. The cost is that a
client may learn of changes up to this much later after a server restart (its own uploads
cut the wait short: `Follower.poke`)."""


class Uniform(Protocol):
    """What `Reconnect` draws from (a `random.Random`, or a fake in tests)."""

    def random(self) -> float: ...


class Reconnect:
    """Jittered delays before the next long poll."""

    def __init__(self, rng: Uniform | None = None, drop_spread_s: float = DROP_SPREAD_S) -> None:
        self.rng: Uniform = rng if rng is not None else random.Random()
        self.drop_spread_s = drop_spread_s

    def after_drop(self) -> float:
        """Seconds to wait after the long poll failed to reach the server or was dropped."""
        return self.drop_spread_s * self.rng.random()

    def after_backoff(self, seconds: float) -> float:
        """Seconds to wait when the server answered `backoff: seconds`."""
        return seconds * (1.0 + self.rng.random())
