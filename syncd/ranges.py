"""Sorted, disjoint, merged byte ranges `[start, end)`: which parts of a dirty file are valid.

Pure functions returning tuples (immutable, like the records that hold them); no I/O. A
dirty file is sparse: bytes inside the ranges come from the local dirty file, bytes outside
come from the base revision's blocks (below `base_size`) or read as zeros.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

__all__ = ["Ranges", "add", "clip", "covered", "gaps", "total"]

Ranges = tuple[tuple[int, int], ...]


def add(ranges: Sequence[tuple[int, int]], start: int, end: int) -> Ranges:
    """Return `ranges` with `[start, end)` added, merging neighbours that touch or overlap."""
    if end <= start:
        return tuple(ranges)
    out: list[tuple[int, int]] = []
    i = 0
    n = len(ranges)
    while i < n and ranges[i][1] < start:
        out.append(ranges[i])
        i += 1
    while i < n and ranges[i][0] <= end:
        start = min(start, ranges[i][0])
        end = max(end, ranges[i][1])
        i += 1
    out.append((start, end))
    out.extend(ranges[i:])
    return tuple(out)


def clip(ranges: Sequence[tuple[int, int]], size: int) -> Ranges:
    """Return `ranges` cut at `size` (after a truncate)."""
    out: list[tuple[int, int]] = []
    for s, e in ranges:
        if s >= size:
            break
        out.append((s, min(e, size)))
    return tuple(out)


def covered(ranges: Sequence[tuple[int, int]], start: int, end: int) -> list[tuple[int, int, bool]]:
    """Split `[start, end)` into consecutive pieces `(s, e, inside)`, in order."""
    out: list[tuple[int, int, bool]] = []
    pos = start
    i = max(0, bisect.bisect_right(ranges, (start, 1 << 62)) - 1)
    while pos < end:
        while i < len(ranges) and ranges[i][1] <= pos:
            i += 1
        if i >= len(ranges) or ranges[i][0] >= end:
            out.append((pos, end, False))
            break
        s, e = ranges[i]
        if s > pos:
            out.append((pos, s, False))
            pos = s
        stop = min(e, end)
        out.append((pos, stop, True))
        pos = stop
    return out


def gaps(ranges: Sequence[tuple[int, int]], start: int, end: int) -> Ranges:
    """The parts of `[start, end)` that no range covers."""
    return tuple((s, e) for s, e, inside in covered(ranges, start, end) if not inside)


def total(ranges: Sequence[tuple[int, int]]) -> int:
    """Number of bytes covered."""
    return sum(e - s for s, e in ranges)
