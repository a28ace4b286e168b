"""The last line a detached child wrote to its log: the reason it gave for failing."""

from __future__ import annotations

from pathlib import Path

__all__ = ["last_log_line"]


def last_log_line(path: Path, start: int) -> str:
    """The last non-blank line written to `path` after byte `start`, minus a `drive: ` prefix."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].removeprefix("drive: ") if lines else ""
