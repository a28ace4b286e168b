"""A folder as a zip, streamed as it is written: never built in memory nor on disk.

The standard library's `zipfile` writes to any object with `write` (no `seek`: it then
puts each member's sizes and CRC in a data descriptor after its data), so it writes into
a sink that the generator empties after every block. Members are stored, not deflated:
most of what people keep is compressed already, and deflating would cost the server's
event-loop thread CPU for every byte.
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class _Sink:
    """What `zipfile` wrote since it was last emptied."""

    pieces: list[bytes] = field(default_factory=list)

    def write(self, data: bytes) -> int:
        self.pieces.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        """Nothing to do: the generator takes the pieces."""

    def close(self) -> None:
        """Nothing to release."""

    def take(self) -> bytes:
        out = b"".join(self.pieces)
        self.pieces.clear()
        return out


@dataclass(frozen=True, slots=True)
class Member:
    """One entry of the zip: a folder (`content` None) or a file and its bytes."""

    name: str
    mtime_ns: int
    content: AsyncIterator[bytes] | None


def _info(name: str, mtime_ns: int) -> zipfile.ZipInfo:
    stamp = time.localtime(mtime_ns / 1e9)
    when = max((1980, 1, 1, 0, 0, 0), tuple(stamp)[:6])
    info = zipfile.ZipInfo(name, date_time=when)  # type: ignore[arg-type]
    info.compress_type = zipfile.ZIP_STORED
    return info


async def zip_stream(members: AsyncIterator[Member]) -> AsyncIterator[bytes]:
    """The bytes of a zip of `members`, yielded as they are made."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", allowZip64=True) as zf:
        async for m in members:
            if m.content is None:
                zf.writestr(_info(m.name.rstrip("/") + "/", m.mtime_ns), b"")
                yield sink.take()
                continue
            with zf.open(_info(m.name, m.mtime_ns), "w", force_zip64=True) as out:
                async for piece in m.content:
                    out.write(piece)
                    yield sink.take()
            yield sink.take()
    yield sink.take()
