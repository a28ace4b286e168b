"""A strict reader of one HTTP/1.1 request head, for the long-poll fast path.

Why strict: a head this accepts is served without hypercorn, so it must be one h11 would
take as it is. Anything unusual (other versions, folded or non-ASCII header lines, a target
that is not a plain path) is refused here (None), and the connection goes to hypercorn,
which answers it as it always has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_HEAD_BYTES", "RequestHead", "complete_head", "parse_head"]

MAX_HEAD_BYTES = 64 * 1024
"""The largest head h11 takes as configured (`h11_max_incomplete_size`, `server.serve`)."""

_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE_RE = re.compile(rb"[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*|")
_TARGET_RE = re.compile(rb"/[\x21-\x7e]*")
_END = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request line and its headers (names in lower case, values trimmed, in order)."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]

    def values(self, name: bytes) -> list[bytes]:
        """Every value of header `name` (lower case)."""
        return [v for k, v in self.headers if k == name]


def complete_head(data: bytes) -> bool:
    """True if `data` is exactly one request head: it ends at its first blank line."""
    return data.endswith(_END) and data.find(_END) == len(data) - len(_END)


def parse_head(data: bytes) -> RequestHead | None:
    """The head of an HTTP/1.1 request in origin form, or None for anything else."""
    if len(data) > MAX_HEAD_BYTES or not complete_head(data):
        return None
    lines = data[: -len(_END)].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1":
        return None
    method, target = parts[0], parts[1]
    if not _TOKEN_RE.fullmatch(method) or not _TARGET_RE.fullmatch(target):
        return None
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        value = value.strip(b" \t")
        if not sep or not _TOKEN_RE.fullmatch(name) or not _VALUE_RE.fullmatch(value):
            return None
        headers.append((name.lower(), value))
    return RequestHead(method, target, headers)
