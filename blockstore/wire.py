"""Shared wire types of the HTTP protocol (docs/protocol.md): records, error codes, paths.

Pure: no I/O, no HTTP library. `server` and `syncd` both build and parse their JSON bodies
with these, so the two sides cannot drift apart. `from_json` accepts the already-parsed JSON
value (what `json.loads` returns) and raises `WireFormatError` (a `ValueError`) for anything
that does not have the record's exact shape: missing or extra-typed fields, bools where ints
belong, malformed block ids, invalid paths. Unknown extra fields are ignored so that the
protocol can grow.

The path rules live in `blockstore.paths` and are re-exported here, so `from
blockstore.wire import validate_path` keeps working.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias, get_args

from .errors import InvalidPath, WireFormatError
from .ids import BlockId, is_block_id
from .paths import (
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    ROOT_PATH,
    is_within,
    join_path,
    path_parts,
    split_path,
    validate_name,
    validate_path,
)

__all__ = [
    "BLOCK_RECORD_ID_BYTES",
    "BULK_ALPN",
    "CHANGE_OPS",
    "COMMIT_ID_MAX",
    "ERROR_STATUS",
    "ERR_BAD_REQUEST",
    "ERR_CONFLICT",
    "ERR_EXISTS",
    "ERR_INTERNAL",
    "ERR_NOT_EMPTY",
    "ERR_NOT_FOUND",
    "ERR_QUOTA_EXCEEDED",
    "ERR_RATE_LIMITED",
    "ERR_TOO_LARGE",
    "ERR_UNAUTHORIZED",
    "ERR_UNAVAILABLE",
    "FILE_KINDS",
    "FILE_STATES",
    "LIST_LIMIT_MAX",
    "LONGPOLL_MAX_SECONDS",
    "LONGPOLL_MIN_SECONDS",
    "MAX_BLOCK_BYTES",
    "MAX_FILE_BYTES",
    "MAX_MISSING_IDS",
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "MOVE_MODES",
    "ROOT_ID",
    "ROOT_PATH",
    "BlockList",
    "Buffer",
    "Change",
    "ChangeOp",
    "FileKind",
    "FileRecord",
    "FileState",
    "InvalidPath",
    "MoveMode",
    "RevisionInfo",
    "block_record_parts",
    "blocks_from_json",
    "blocks_to_json",
    "encode_block_records",
    "error_body",
    "is_within",
    "join_path",
    "parse_block_records",
    "path_parts",
    "split_path",
    "validate_name",
    "validate_path",
]

# -- limits -----------------------------------------------------------------------------

MAX_FILE_BYTES: Final = 10 * 10**9
MAX_BLOCK_BYTES: Final = 8 * 1024 * 1024
"""Largest plaintext of one block on the wire (413 above)."""
BULK_ALPN: Final = "drive-bulk/1"
"""TLS ALPN protocol of the sync client's block-transfer connections: HTTP/1.1 limited to
the block routes, served by the server in a thread (docs/protocol.md "Transport")."""
MAX_MISSING_IDS: Final = 10_000
"""Most ids in one `POST /api/v1/blocks/missing`."""
LIST_LIMIT_MAX: Final = 5000
COMMIT_ID_MAX: Final = 1024
"""The longest commit id `GET /meta?commit_id=` looks up (a client's ids are far shorter)."""
LONGPOLL_MIN_SECONDS: Final = 30
LONGPOLL_MAX_SECONDS: Final = 480
ROOT_ID: Final = 1

# -- error codes ------------------------------------------------------------------------

ERR_BAD_REQUEST: Final = "bad_request"
ERR_UNAUTHORIZED: Final = "unauthorized"
ERR_NOT_FOUND: Final = "not_found"
ERR_CONFLICT: Final = "conflict"
ERR_EXISTS: Final = "exists"
ERR_NOT_EMPTY: Final = "not_empty"
ERR_TOO_LARGE: Final = "too_large"
ERR_RATE_LIMITED: Final = "rate_limited"
ERR_QUOTA_EXCEEDED: Final = "quota_exceeded"
ERR_INTERNAL: Final = "internal"
ERR_UNAVAILABLE: Final = "unavailable"

ERROR_STATUS: Final[Mapping[str, int]] = {
    ERR_BAD_REQUEST: 400,
    ERR_UNAUTHORIZED: 401,
    ERR_NOT_FOUND: 404,
    ERR_CONFLICT: 409,
    ERR_EXISTS: 409,
    ERR_NOT_EMPTY: 409,
    ERR_TOO_LARGE: 413,
    ERR_RATE_LIMITED: 429,
    ERR_QUOTA_EXCEEDED: 507,
    ERR_INTERNAL: 500,
    ERR_UNAVAILABLE: 503,
}
"""HTTP status of each error code."""


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """Return the JSON body of an error answer: `{"error", "message", **extra}`.

    Raises:
        ValueError: `code` is not one of the protocol's codes.
    """
    if code not in ERROR_STATUS:
        raise ValueError(f"unknown error code {code!r}")
    return {"error": code, "message": message, **extra}


# -- enumerations -----------------------------------------------------------------------

FileKind: TypeAlias = Literal["file", "dir", "symlink"]
FileState: TypeAlias = Literal["done", "pending"]
ChangeOp: TypeAlias = Literal[
    "create", "update", "mkdir", "symlink", "setattr", "move", "delete", "restore",
    "undelete", "pending",
]  # fmt: skip
MoveMode: TypeAlias = Literal["noreplace", "replace", "exchange"]
FILE_KINDS: Final[tuple[str, ...]] = get_args(FileKind)
FILE_STATES: Final[tuple[str, ...]] = get_args(FileState)
CHANGE_OPS: Final[tuple[str, ...]] = get_args(ChangeOp)
MOVE_MODES: Final[tuple[str, ...]] = get_args(MoveMode)

BlockList: TypeAlias = tuple[tuple[BlockId, int], ...]
"""Ordered `(block id, plaintext size)` pairs of a file's content."""

# -- JSON field readers -----------------------------------------------------------------


def _obj(value: object, what: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise WireFormatError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _field(obj: Mapping[str, object], key: str, what: str) -> object:
    try:
        return obj[key]
    except KeyError:
        raise WireFormatError(f"{what}: missing field {key!r}") from None


def _int(obj: Mapping[str, object], key: str, what: str, *, minimum: int | None = 0) -> int:
    value = _field(obj, key, what)
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireFormatError(f"{what}.{key}: expected an integer, got {value!r:.60}")
    if minimum is not None and value < minimum:
        raise WireFormatError(f"{what}.{key}: {value} is below {minimum}")
    return value


def _opt_int(obj: Mapping[str, object], key: str, what: str) -> int | None:
    return None if obj.get(key) is None else _int(obj, key, what)


def _float(obj: Mapping[str, object], key: str, what: str) -> float:
    value = _field(obj, key, what)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireFormatError(f"{what}.{key}: expected a number, got {value!r:.60}")
    return float(value)


def _str(obj: Mapping[str, object], key: str, what: str) -> str:
    value = _field(obj, key, what)
    if not isinstance(value, str):
        raise WireFormatError(f"{what}.{key}: expected a string, got {value!r:.60}")
    return value


def _opt_str(obj: Mapping[str, object], key: str, what: str) -> str | None:
    return None if obj.get(key) is None else _str(obj, key, what)


def _bool(obj: Mapping[str, object], key: str, what: str) -> bool:
    value = _field(obj, key, what)
    if not isinstance(value, bool):
        raise WireFormatError(f"{what}.{key}: expected true or false, got {value!r:.60}")
    return value


def _choice(obj: Mapping[str, object], key: str, what: str, choices: tuple[str, ...]) -> str:
    value = _str(obj, key, what)
    if value not in choices:
        raise WireFormatError(f"{what}.{key}: {value!r:.60} is not one of {choices}")
    return value


def _path(obj: Mapping[str, object], key: str, what: str) -> str:
    value = _str(obj, key, what)
    try:
        return validate_path(value)
    except InvalidPath as exc:
        raise WireFormatError(f"{what}.{key}: {exc}") from None


def _content_hash(obj: Mapping[str, object], what: str) -> str | None:
    value = _opt_str(obj, "content_hash", what)
    if value is not None and not is_block_id(value):
        raise WireFormatError(f"{what}.content_hash: not a lowercase hex SHA-256")
    return value


def blocks_from_json(value: object, what: str = "blocks") -> BlockList:
    """Parse a JSON `[[block_id, size], ...]` list into a `BlockList`.

    Raises:
        WireFormatError: not a list of `[64-hex-id, non-negative int]` pairs.
    """
    if not isinstance(value, list | tuple):
        raise WireFormatError(f"{what}: expected a list, got {type(value).__name__}")
    out: list[tuple[BlockId, int]] = []
    for i, item in enumerate(value):
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise WireFormatError(f"{what}[{i}]: expected [block_id, size]")
        bid, size = item
        if not is_block_id(bid):
            raise WireFormatError(f"{what}[{i}]: {bid!r:.80} is not a block id")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise WireFormatError(f"{what}[{i}]: size {size!r:.40} is not a non-negative int")
        out.append((BlockId(bid), size))
    return tuple(out)


def blocks_to_json(blocks: BlockList) -> list[list[str | int]]:
    """Return the JSON form `[[block_id, size], ...]` of a block list."""
    return [[bid, size] for bid, size in blocks]


# -- records ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileRecord:
    """A file, directory or symlink as the server describes it (docs/protocol.md "Records").

    `blocks` is None for directories, symlinks and in `list` answers; `target` is set only
    for symlinks; `mode` holds permission bits only.
    """

    id: int
    parent_id: int | None
    name: str
    path: str
    kind: FileKind
    mode: int
    size: int
    mtime_ns: int
    rev: int
    state: FileState = "done"
    content_hash: str | None = None
    blocks: BlockList | None = None
    target: str | None = None
    deleted: bool = False

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object (a dict ready for `json.dumps`)."""
        return {
            "id": self.id,
            "parent_id": self.parent_id,
            "name": self.name,
            "path": self.path,
            "kind": self.kind,
            "mode": self.mode,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "rev": self.rev,
            "state": self.state,
            "content_hash": self.content_hash,
            "blocks": None if self.blocks is None else blocks_to_json(self.blocks),
            "target": self.target,
            "deleted": self.deleted,
        }

    @classmethod
    def from_json(cls, value: object) -> FileRecord:
        """Parse a decoded JSON value; raises `WireFormatError` if it is not a FileRecord.

        Besides types, checks that `path` is valid, that `name` is its last component (`""`
        and `parent_id` null only for the root) and that `mode` fits in 0o7777.
        """
        w = "FileRecord"
        obj = _obj(value, w)
        path = _path(obj, "path", w)
        name = _str(obj, "name", w)
        expected_name = "" if path == ROOT_PATH else path.rpartition("/")[2]
        if name != expected_name:
            raise WireFormatError(f"{w}.name {name!r:.60} is not the last component of {path!r}")
        mode = _int(obj, "mode", w)
        if mode > 0o7777:
            raise WireFormatError(f"{w}.mode {mode:o} has bits outside 0o7777")
        raw_blocks = obj.get("blocks")
        return cls(
            id=_int(obj, "id", w, minimum=1),
            parent_id=_opt_int(obj, "parent_id", w),
            name=name,
            path=path,
            kind=_choice(obj, "kind", w, FILE_KINDS),  # type: ignore[arg-type]  # checked
            mode=mode,
            size=_int(obj, "size", w),
            mtime_ns=_int(obj, "mtime_ns", w, minimum=None),
            rev=_int(obj, "rev", w),
            state=_choice(obj, "state", w, FILE_STATES),  # type: ignore[arg-type]  # checked
            content_hash=_content_hash(obj, w),
            blocks=None if raw_blocks is None else blocks_from_json(raw_blocks, f"{w}.blocks"),
            target=_opt_str(obj, "target", w),
            deleted=_bool(obj, "deleted", w),
        )


@dataclass(frozen=True, slots=True)
class Change:
    """One journal entry of the change feed (docs/protocol.md "Change feed")."""

    seq: int
    op: ChangeOp
    file: FileRecord
    old_path: str | None
    device: str
    user: str
    time: float
    device_id: int | None = None
    """The id of the device that made the change (names need not be unique)."""
    client: str | None = None
    """The `X-Drive-Client` id of the request that made the change (which program of that
    device: a mount's own echo versus its CLI's restore); None when none was sent."""

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object (a dict ready for `json.dumps`)."""
        return {
            "seq": self.seq,
            "op": self.op,
            "file": self.file.to_json(),
            "old_path": self.old_path,
            "device": self.device,
            "user": self.user,
            "time": self.time,
            "device_id": self.device_id,
            "client": self.client,
        }

    def is_from(self, device: str, device_id: int | None) -> bool:
        """True if that device made this change: by id when both sides know it (names are
        not unique), else by name."""
        if self.device_id is not None and device_id is not None:
            return self.device_id == device_id
        return self.device == device

    @classmethod
    def from_json(cls, value: object) -> Change:
        """Parse a decoded JSON value; raises `WireFormatError` if it is not a Change."""
        w = "Change"
        obj = _obj(value, w)
        return cls(
            seq=_int(obj, "seq", w),
            op=_choice(obj, "op", w, CHANGE_OPS),  # type: ignore[arg-type]  # checked
            file=FileRecord.from_json(_field(obj, "file", w)),
            old_path=None if obj.get("old_path") is None else _path(obj, "old_path", w),
            device=_str(obj, "device", w),
            user=_str(obj, "user", w),
            time=_float(obj, "time", w),
            device_id=None if obj.get("device_id") is None else _int(obj, "device_id", w),
            client=_opt_str(obj, "client", w),
        )


@dataclass(frozen=True, slots=True)
class RevisionInfo:
    """One entry of `GET /api/v1/revisions` (newest first); `time` is unix seconds."""

    revision: int
    size: int
    time: float
    device: str
    content_hash: str | None
    kept: bool = False
    """Marked "keep": thinning never removes it (`drive keep`)."""

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object (a dict ready for `json.dumps`)."""
        return {
            "revision": self.revision,
            "size": self.size,
            "time": self.time,
            "device": self.device,
            "content_hash": self.content_hash,
            "kept": self.kept,
        }

    @classmethod
    def from_json(cls, value: object) -> RevisionInfo:
        """Parse a decoded JSON value; raises `WireFormatError` if it is not a RevisionInfo."""
        w = "RevisionInfo"
        obj = _obj(value, w)
        return cls(
            revision=_int(obj, "revision", w, minimum=1),
            size=_int(obj, "size", w),
            time=_float(obj, "time", w),
            device=_str(obj, "device", w),
            content_hash=_content_hash(obj, w),
            kept="kept" in obj and _bool(obj, "kept", w),  # absent from older servers
        )


# -- block records: bodies of POST /blocks/batch (upload) and POST /blocks/fetch (answer) --

BLOCK_RECORD_ID_BYTES: Final = 64
_RECORD_LEN = struct.Struct(">I")
_JOIN_PIECE_BYTES = 4096

Buffer: TypeAlias = bytes | bytearray | memoryview
"""Any bytes-like piece of a body (shared by the senders on both sides)."""


def encode_block_records(items: Sequence[tuple[str, bytes | bytearray]]) -> bytes:
    """Records `ID (64 ASCII hex) LENGTH (4 bytes, big endian) FRAME`, back to back."""
    return b"".join(block_record_parts([(bid, (frame,)) for bid, frame in items]))


def block_record_parts(items: Sequence[tuple[str, Sequence[Buffer]]]) -> list[Buffer]:
    """The same records as `encode_block_records`, as a list of buffers to send in turn.

    Each frame is given as its pieces (e.g. `codec.encode_wire_parts`); small pieces are
    joined to the record header and large ones passed through, so a batch of megabyte
    blocks is sent without being copied into one body.
    """
    out: list[Buffer] = []
    for bid, pieces in items:
        head = [bid.encode("ascii"), _RECORD_LEN.pack(sum(len(p) for p in pieces))]
        for piece in pieces:
            if len(piece) <= _JOIN_PIECE_BYTES:
                head.append(bytes(piece))
                continue
            out.append(b"".join(head))
            out.append(piece)
            head = []
        if head:
            out.append(b"".join(head))
    return out


def parse_block_records(body: bytes | bytearray | memoryview) -> list[tuple[str, memoryview]]:
    """Split a body of block records into `(block id text, frame)` pairs.

    The frames are views into `body`, not copies (a fetch answer or an upload batch is
    several MiB). The id text is not validated here (callers parse it into a `BlockId`).

    Raises:
        WireFormatError: a truncated record.
    """
    view = memoryview(body).cast("B")
    out: list[tuple[str, memoryview]] = []
    pos = 0
    while pos < len(view):
        head_end = pos + BLOCK_RECORD_ID_BYTES + _RECORD_LEN.size
        if head_end > len(view):
            raise WireFormatError("truncated block record header")
        bid = bytes(view[pos : pos + BLOCK_RECORD_ID_BYTES]).decode("ascii", errors="replace")
        (length,) = _RECORD_LEN.unpack_from(view, pos + BLOCK_RECORD_ID_BYTES)
        if head_end + length > len(view):
            raise WireFormatError("truncated block record")
        out.append((bid, view[head_end : head_end + length]))
        pos = head_end + length
    return out
