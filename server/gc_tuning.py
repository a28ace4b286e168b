"""Make Python's cyclic garbage collector cheap for a server that holds many connections.

Why: every held connection (a long poll waits for minutes) keeps a few hundred objects the
collector tracks: its tasks, coroutine frames, hypercorn's and h11's state, the TLS socket.
With the default thresholds (700, 10, 10) a collection runs every 700 allocations, and a
wake of thousands of long polls allocates millions of objects: the youngest generations
were collected thousands of times and the older ones, which hold every held connection,
many times over, finding no garbage: a third of the wake's CPU (docs/performance.md, "Long
polls at scale").

So: everything loaded before serving (modules, configuration, the route table) is frozen out
of collection, and collections run far less often. Reference counting still frees
everything that is not in a cycle at once; cyclic garbage (exception tracebacks, closed
tasks) waits longer: at most about `YOUNG_OBJECTS` container objects between collections.
"""

from __future__ import annotations

import gc

__all__ = ["tune_gc"]

YOUNG_OBJECTS = 50_000
"""Allocations (net of frees) of container objects between collections of the youngest
generation (Python's default is 700)."""
MIDDLE_ROUNDS = 20
"""Young collections per collection of the middle generation (default 10)."""
OLD_ROUNDS = 100
"""Middle collections before a full collection is considered (default 10; Python also waits
until the objects new to the oldest generation are a quarter of it)."""


def tune_gc() -> None:
    """Freeze what exists now and raise the thresholds; call once, just before serving."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_OBJECTS, MIDDLE_ROUNDS, OLD_ROUNDS)
