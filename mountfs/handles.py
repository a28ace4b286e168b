"""Per-open-file state: which revision a reader sees, and whether it wrote."""

from __future__ import annotations

from dataclasses import dataclass

from blockstore.ids import BlockId

__all__ = ["FileHandle"]


@dataclass(slots=True)
class FileHandle:
    """An open file.

    `snapshot` pins the revision the file had when it was opened (its block list, block
    offsets and size), so a remote update never tears a read in progress; a local write to
    the inode (`local_gen` moves) switches the handle to the live local content, as POSIX
    wants for writes made on this machine.
    """

    fh: int
    ino: int
    writable: bool
    local_gen: int
    snapshot: tuple[tuple[tuple[BlockId, int], ...], tuple[int, ...], int] | None = None
    dirty: bool = False
    last_end: int = -1
