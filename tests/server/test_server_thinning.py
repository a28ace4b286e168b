"""Staggered thinning as a pure function (server.thinning): thousands of versions on a fake
clock keep exactly what the policy says, kept versions and the newest always survive, and
thinning every hour ends where thinning once at the end does."""

from __future__ import annotations

import bisect
import random

from server.config import ServerConfig
from server.thinning import ThinningPolicy, Version, to_remove

HOUR = 3600.0
DAY = 86400.0
START = 1_700_006_400.0  # a Thursday 00:00 UTC: a week bucket starts here
POLICY = ThinningPolicy.from_config(ServerConfig(revisions_kept=10_000))


def reference(versions: list[Version], now: float, policy: ThinningPolicy) -> set[int]:
    """The policy written out plainly: what stays (checked against `to_remove`)."""
    ordered = sorted(versions, key=lambda v: (v.created_at, v.rev))
    times = [v.created_at for v in ordered]
    newest = max(v.rev for v in versions)
    stays: set[int] = set()
    for v in versions:
        age = now - v.created_at
        if v.kept or v.rev == newest or age < policy.keep_all_seconds:
            stays.add(v.rev)
            continue
        stage = next(s for s in policy.stages if age < s.until_age)
        start = (v.created_at // stage.interval) * stage.interval
        last = bisect.bisect_left(times, start + stage.interval) - 1  # last of the bucket
        if ordered[last].rev == v.rev:
            stays.add(v.rev)
    return stays


def history(n: int, seed: int, span_days: float) -> list[Version]:
    rng = random.Random(seed)
    times = sorted(START + rng.uniform(0, span_days * DAY) for _ in range(n))
    return [Version(i + 1, t, kept=rng.random() < 0.01) for i, t in enumerate(times)]


def test_thousands_of_versions_keep_exactly_what_the_policy_says() -> None:
    versions = history(5000, seed=16, span_days=120)
    for now in (START + 121 * DAY, START + 200 * DAY + 5 * HOUR):
        gone = set(to_remove(versions, now, POLICY))
        stays = {v.rev for v in versions} - gone
        assert stays == reference(versions, now, POLICY)
        assert all(v.rev in stays for v in versions if v.kept)
        assert max(v.rev for v in versions) in stays
    # The shape: every version of the last hour, then one per hour, day and week at most.
    now = START + 121 * DAY
    removed = set(to_remove(versions, now, POLICY))
    left = [v for v in versions if v.rev not in removed]
    ages = [(now - v.created_at, v) for v in left if not v.kept]
    assert len([a for a, _ in ages if HOUR <= a < DAY]) <= 24
    assert len([a for a, _ in ages if DAY <= a < 30 * DAY]) <= 30
    assert not [v for v in versions if 0 <= now - v.created_at < HOUR and v.rev in removed]


def test_thinning_every_hour_ends_where_thinning_once_does() -> None:
    """A version every 7 minutes for 45 days on a fake clock, thinned every hour: what is
    left is exactly what one pass at the end leaves (buckets nest, so no pass keeps what a
    later one would not), and a second pass at the same moment removes nothing."""
    rng = random.Random(7)
    clock = START
    kept_every = 97
    all_versions: list[Version] = []
    live: list[Version] = []
    rev = 0
    next_pass = clock + HOUR
    while clock < START + 45 * DAY:
        rev += 1
        v = Version(rev, clock, kept=rev % kept_every == 0)
        all_versions.append(v)
        live.append(v)
        clock += 7 * 60 + rng.uniform(-30, 30)
        if clock >= next_pass:
            gone = set(to_remove(live, clock, POLICY))
            live = [x for x in live if x.rev not in gone]
            next_pass += HOUR
    assert len(all_versions) > 9000
    once = set(to_remove(all_versions, clock, POLICY))
    assert {v.rev for v in live} == {v.rev for v in all_versions} - once
    assert to_remove(live, clock, POLICY) == []
    assert all(v.rev in {x.rev for x in live} for v in all_versions if v.kept)


def test_the_cap_drops_the_oldest_but_never_kept_or_newest() -> None:
    policy = ThinningPolicy.from_config(ServerConfig(revisions_kept=10, thin_all_seconds=1e12))
    versions = [Version(r, START + r, kept=r in (1, 2, 3)) for r in range(1, 51)]
    gone = to_remove(versions, START + 100, policy)
    stays = sorted({v.rev for v in versions} - set(gone))
    assert stays == [1, 2, 3, 44, 45, 46, 47, 48, 49, 50]
    # More kept versions than the cap: all of them stay, with the newest.
    every = [Version(r, START + r, kept=True) for r in range(1, 21)]
    assert to_remove(every, START + 100, policy) == []
    assert to_remove([], START, policy) == []
