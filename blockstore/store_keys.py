"""Store keys: the one set of rules every `BlockStore` backend validates and encodes by.

A key is `/`-separated segments, the last one the object name (the server uses
`"{account}/{block_id}"`). Every segment is percent-encoded to the characters
`[A-Za-z0-9_-]` and `%`, so an encoded segment never contains `.`: a backend may keep its
own entries (temporary files, probes) under names starting with `.` and they can never
collide with a key. Decoding is `urllib.parse.unquote`, exact because encoding is.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

__all__ = ["decode_segment", "encode_key", "encode_prefix", "encode_segment"]

_SAFE = "-_"  # with quote's always-safe letters and digits; "." and "~" get encoded below
_MAX_SEGMENT_BYTES = 200  # encoded; leaves room for a suffix under NAME_MAX (255)
_MIN_NAME_CHARS = 4  # the local store fans objects out by the name's first four characters


def encode_segment(segment: str, key: str) -> str:
    """One segment of `key`, encoded; raises `ValueError` (naming `key`) if it is invalid."""
    if segment in ("", ".", "..") or "\x00" in segment:
        raise ValueError(f"invalid store key {key!r}: bad segment {segment!r}")
    try:
        encoded = quote(segment, safe=_SAFE).replace(".", "%2E").replace("~", "%7E")
    except UnicodeEncodeError:
        raise ValueError(f"invalid store key {key!r}: not UTF-8") from None
    if len(encoded) > _MAX_SEGMENT_BYTES:
        raise ValueError(f"invalid store key {key!r}: segment too long")
    return encoded


def encode_key(key: str) -> list[str]:
    """Validate `key` and return its encoded segments (the object name last).

    Raises:
        TypeError: `key` is not a str.
        ValueError: an empty, `.`, `..`, NUL-holding, non-UTF-8 or too long segment, or an
            object name under four characters.
    """
    if not isinstance(key, str):
        raise TypeError(f"store keys are str, not {type(key).__name__}")
    segments = key.split("/")
    if len(segments[-1]) < _MIN_NAME_CHARS:
        raise ValueError(f"invalid store key {key!r}: object name under 4 characters")
    return [encode_segment(s, key) for s in segments]


def encode_prefix(prefix: str) -> list[str] | None:
    """The encoded whole leading segments of a string prefix (`"a/b/c"` -> `["a", "b"]`),
    which narrow a listing; the rest of the prefix only filters. None if no valid key can
    start with `prefix`."""
    *whole, _ = prefix.split("/")
    try:
        return [encode_segment(s, prefix) for s in whole]
    except ValueError:
        return None


def decode_segment(encoded: str) -> str:
    """The segment `encoded` stands for."""
    return unquote(encoded)
