"""Staggered version thinning (as Syncthing's "staggered" versioning and Nextcloud's versions
app do): which of a file's versions to drop, as a pure function of the versions and the time.

Every version younger than `keep_all_seconds` stays. An older version stays when it is the
newest of its time bucket: buckets are `floor(created_at / interval)` on the unix clock, with
the interval of the stage the version's age falls in (an hour for the first day, a day for 30
days, a week after that). Buckets are fixed on the clock, not on "now", and each interval
divides the next, so a version kept today is still the newest of its (wider) bucket tomorrow:
thinning twice at one moment drops nothing the second time, and a later pass never
resurrects a rule a former pass broke. On top, at most `max_versions` stay, oldest first out.

Never dropped: the newest version (the file's content) and versions marked "keep".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from server.config import ServerConfig


@dataclass(frozen=True, slots=True)
class Stage:
    """Versions younger than `until_age` (seconds) keep one per `interval`."""

    until_age: float
    interval: float


@dataclass(frozen=True, slots=True)
class ThinningPolicy:
    """The thinning rules of one server (server config `thin_*`, `revisions_kept`)."""

    keep_all_seconds: float
    stages: tuple[Stage, ...]
    """Ordered by `until_age`; the last one's is infinite."""
    max_versions: int

    @classmethod
    def from_config(cls, config: ServerConfig) -> ThinningPolicy:
        """The policy a server with `config` applies."""
        return cls(
            config.thin_all_seconds,
            (
                Stage(config.thin_hourly_until_seconds, config.thin_hourly_interval_seconds),
                Stage(config.thin_daily_until_seconds, config.thin_daily_interval_seconds),
                Stage(math.inf, config.thin_weekly_interval_seconds),
            ),
            config.revisions_kept,
        )

    def interval(self, age: float) -> float | None:
        """The bucket width for a version of this age (None: young enough to keep)."""
        if age < self.keep_all_seconds:
            return None
        for stage in self.stages:
            if age < stage.until_age:
                return stage.interval
        return self.stages[-1].interval


@dataclass(frozen=True, slots=True)
class Version:
    """What thinning needs to know of one version."""

    rev: int
    created_at: float
    kept: bool = False


def _bucket(created_at: float, interval: float) -> tuple[float, int]:
    return interval, math.floor(created_at / interval) if interval > 0 else 0


def to_remove(versions: Sequence[Version], now: float, policy: ThinningPolicy) -> list[int]:
    """The revisions thinning drops at time `now`, ascending.

    The newest version is the one with the highest revision (a rename-over appends the
    source's versions, with their own times, after the target's)."""
    if not versions:
        return []
    newest_rev = max(v.rev for v in versions)
    intervals = {iv for v in versions if (iv := policy.interval(now - v.created_at)) is not None}
    best: dict[tuple[float, int], tuple[float, int]] = {}
    for v in versions:
        for iv in intervals:
            key = _bucket(v.created_at, iv)
            mark = (v.created_at, v.rev)
            if key not in best or mark > best[key]:
                best[key] = mark
    protected = {v.rev for v in versions if v.kept or v.rev == newest_rev}
    staying: list[Version] = []
    for v in versions:
        iv = policy.interval(now - v.created_at)
        newest_of_bucket = iv is None or best[_bucket(v.created_at, iv)] == (v.created_at, v.rev)
        if v.rev in protected or newest_of_bucket:
            staying.append(v)
    revs = sorted((v.rev for v in staying), reverse=True)
    capped = set(cap(revs, protected, policy.max_versions))
    staying_revs = set(revs) - capped
    return sorted(v.rev for v in versions if v.rev not in staying_revs)


def cap(revs_newest_first: list[int], protected: set[int], max_versions: int) -> list[int]:
    """The revisions to drop so that at most `max_versions` stay, oldest first out; the
    `protected` ones (the newest, those marked "keep") stay even beyond the cap."""
    over = len(revs_newest_first) - max(max_versions, 0)
    gone: list[int] = []
    for rev in reversed(revs_newest_first):
        if over <= 0:
            break
        if rev not in protected:
            gone.append(rev)
            over -= 1
    return sorted(gone)
