"""Drive path rules (docs/protocol.md "Paths"): validation and pure path arithmetic.

Pure and I/O free. Nothing here normalises: a path is either valid exactly as given or
refused with an `InvalidPath` that names the broken rule, so client and server can never
disagree about which file a path means. Re-exported by `blockstore.wire`.
"""

from __future__ import annotations

from typing import Final

from .errors import InvalidPath

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "ROOT_PATH",
    "InvalidPath",
    "is_within",
    "join_path",
    "path_parts",
    "split_path",
    "validate_name",
    "validate_path",
]

MAX_NAME_BYTES: Final = 255
MAX_PATH_BYTES: Final = 4096
ROOT_PATH: Final = "/"


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPath(f"{what} is not valid UTF-8 (lone surrogate): {text!r}") from None


def validate_name(name: str) -> str:
    """Check one path component and return it unchanged.

    Raises:
        InvalidPath: empty, `.` or `..`, contains `/` or NUL, not UTF-8, or over
            `MAX_NAME_BYTES` bytes in UTF-8.
    """
    if not isinstance(name, str):
        raise InvalidPath(f"a name must be a str, not {type(name).__name__}")
    if name == "":
        raise InvalidPath("empty name")
    if name in (".", ".."):
        raise InvalidPath(f"name {name!r} is not allowed")
    if "/" in name:
        raise InvalidPath(f"name {name!r} contains '/'")
    if "\x00" in name:
        raise InvalidPath(f"name {name!r} contains NUL")
    size = len(_utf8(name, "name"))
    if size > MAX_NAME_BYTES:
        raise InvalidPath(f"name is {size} bytes in UTF-8, over {MAX_NAME_BYTES}: {name[:40]!r}...")
    return name


def validate_path(path: str) -> str:
    """Check an absolute drive path and return it unchanged (nothing is normalised).

    Rules (docs/protocol.md "Paths"): starts with `/`; `/` alone is the root; no empty
    component (so no `//` and no trailing `/`), no `.` or `..`, no NUL, each component at
    most 255 bytes and the whole path at most 4096 bytes in UTF-8.

    Raises:
        InvalidPath: with a message naming the broken rule.
    """
    if not isinstance(path, str):
        raise InvalidPath(f"a path must be a str, not {type(path).__name__}")
    if path == ROOT_PATH:
        return path
    if not path.startswith("/"):
        raise InvalidPath(f"path must be absolute (start with '/'): {path[:80]!r}")
    size = len(_utf8(path, "path"))
    if size > MAX_PATH_BYTES:
        raise InvalidPath(f"path is {size} bytes in UTF-8, over {MAX_PATH_BYTES}")
    for part in path[1:].split("/"):
        if part == "":
            raise InvalidPath(f"path has an empty component ('//' or trailing '/'): {path!r}")
        validate_name(part)
    return path


def path_parts(path: str) -> list[str]:
    """Return the components of a valid path (`[]` for the root). Validates first."""
    validate_path(path)
    return [] if path == ROOT_PATH else path[1:].split("/")


def split_path(path: str) -> tuple[str, str]:
    """Split a valid path into `(parent path, name)`: `/a/b` -> (`/a`, `b`), `/a` -> (`/`, `a`).

    Raises:
        InvalidPath: `path` is invalid, or is the root (which has no parent or name).
    """
    validate_path(path)
    if path == ROOT_PATH:
        raise InvalidPath("the root directory has no parent")
    parent, _, name = path.rpartition("/")
    return (parent or ROOT_PATH), name


def join_path(parent: str, name: str) -> str:
    """Return the path of `name` inside directory `parent`, checking both and the result.

    Raises:
        InvalidPath: `parent` or `name` is invalid, or the result is over 4096 bytes.
    """
    validate_path(parent)
    validate_name(name)
    joined = f"/{name}" if parent == ROOT_PATH else f"{parent}/{name}"
    return validate_path(joined)


def is_within(path: str, ancestor: str) -> bool:
    """Return True if `path` is `ancestor` or lies below it (for "move into itself" checks).

    Both must be valid paths. Compares components, so `/ab` is not within `/a`.
    """
    validate_path(path)
    validate_path(ancestor)
    if ancestor == ROOT_PATH or path == ancestor:
        return True
    return path.startswith(ancestor + "/")
