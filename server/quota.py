"""Storage accounting policy: what counts against a user's quota, and what bounds the rest.

`used_bytes` counts a block while at least one kept version references it (refcount > 0): it
starts counting when its count goes 0 -> 1 and stops when the count drops back to 0
(`server.db.blocks` moves the bytes in the same transaction as the refcount). Blocks nothing
references are `staged_bytes`: uploads whose commit has not come yet, or was refused, until
garbage collection removes them. So a refused upload never leaves its user "full", and a
parked upload does not count; staged bytes have a bound of their own instead, so uploads that
are never committed cannot fill the disk.

- A new block is refused (507) if it could not fit in the quota even alone (it could not be
  committed now), or if it would take the user's staged bytes past `StagedLimit.cap`.
- A commit is refused (507) if it raises the referenced total past the quota. Only bytes it
  newly references count: a block some kept version already holds costs nothing, and a
  commit that raises nothing (an empty file, a restore of kept content) always goes through.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.config import ServerConfig
from server.db.accounts import Usage
from server.errors import QuotaExceeded


@dataclass(frozen=True, slots=True)
class StagedLimit:
    """The per-user bound on staged (unreferenced) block bytes."""

    max_staged_bytes: int
    max_file_bytes: int

    @classmethod
    def from_config(cls, config: ServerConfig) -> StagedLimit:
        """The limit a server with `config` applies."""
        return cls(config.max_staged_bytes, config.max_file_bytes)

    def cap(self, quota: int | None) -> int:
        """Staged bytes a user may hold: `max_staged_bytes`, but never less than the quota
        (without one, the file-size limit), so one upload of any file that could be
        committed always fits while it waits for its commit."""
        floor = self.max_file_bytes if quota is None else quota
        return max(self.max_staged_bytes, floor)


def check_new_block(usage: Usage, size: int, limit: StagedLimit) -> None:
    """Refuse to store a new block of `size` bytes (507) when it breaks either limit; the
    message names the limit."""
    if usage.quota is not None and usage.used + size > usage.quota:
        raise QuotaExceeded(
            f"storage quota of {usage.quota} bytes exceeded ({usage.used} used by kept "
            f"versions, a new block of {size} bytes cannot fit)"
        )
    cap = limit.cap(usage.quota)
    if usage.staged + size > cap:
        raise QuotaExceeded(
            f"staged upload limit of {cap} bytes exceeded ({usage.staged} bytes uploaded but "
            f"not referenced by any version, {size} more sent): commit them, or wait until "
            "unreferenced blocks are collected"
        )


def check_commit(quota: int | None, used_before: int, used_after: int) -> None:
    """Refuse a commit (507) that raises the referenced total past the quota."""
    if quota is not None and used_after > quota and used_after > used_before:
        raise QuotaExceeded(
            f"storage quota of {quota} bytes exceeded ({used_before} used, this version "
            f"needs {used_after - used_before} more)"
        )
