"""Human sizes on the command line (`500M`, `10G`, `1.5TiB`, `4096`), in binary units."""

from __future__ import annotations

import re

__all__ = ["format_size", "parse_size"]

_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B?)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_size(text: str) -> int:
    """Return the number of bytes `text` means.

    Raises:
        ValueError: `text` is not a size; the message gives examples.
    """
    m = _SIZE_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"not a size: {text!r} (examples: 500M, 10G, 1T)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def format_size(n: int) -> str:
    """`1536` -> `1.5 KiB`: bytes for people, in the same binary units `parse_size` reads."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in "KMGTP":
        value /= 1024
        if value < 1024 or unit == "P":
            return f"{value:.1f} {unit}iB"
    raise AssertionError("unreachable")
