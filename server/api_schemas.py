"""JSON Schemas of the API's bodies (OpenAPI 3.1 `components`), as plain data.

The shapes of docs/protocol.md "Records" and "Errors", written once for `server.openapi`.
They are as strict as the server's answers are (every field a record always carries is
required), so a fuzzer checking answers against them notices when a route drifts.
"""

from __future__ import annotations

from typing import Any

from blockstore.wire import (
    CHANGE_OPS,
    COMMIT_ID_MAX,
    FILE_KINDS,
    FILE_STATES,
    LIST_LIMIT_MAX,
    MAX_MISSING_IDS,
    MAX_PATH_BYTES,
    MOVE_MODES,
)
from server.errors import ApiError

Schema = dict[str, Any]

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
MAX_MODE = 0o7777


def ref(name: str) -> Schema:
    """A reference to a schema of `components/schemas`."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """`schema` or null (OpenAPI 3.1 is JSON Schema 2020-12: no `nullable` keyword)."""
    return {"anyOf": [schema, {"type": "null"}]}


def obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    """An object with these fields; others are allowed, so the protocol can grow."""
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


def count(maximum: int = INT64_MAX, minimum: int = 0) -> Schema:
    """An integer in a 64-bit database column (the server refuses others with 400)."""
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


def error_codes() -> list[str]:
    """Every code of the error classes in `server.errors`, read from the classes themselves.

    Only that module's: the bulk transport's own refusals (`method_not_allowed`,
    `length_required`) are not answered over HTTP, and counting every subclass would make
    the document depend on which modules happen to be imported."""
    codes: set[str] = set()
    pending: list[type[ApiError]] = [ApiError]
    while pending:
        cls = pending.pop()
        if cls.__module__ == ApiError.__module__:
            codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return sorted(codes)


PATH: Schema = {"type": "string", "minLength": 1, "maxLength": MAX_PATH_BYTES}
BLOCK_ID: Schema = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
MTIME_NS: Schema = count(minimum=INT64_MIN)
MODE: Schema = count(MAX_MODE)
BLOCK_LIST: Schema = {
    "type": "array",
    "items": {
        # [block id, size]: not `prefixItems`, which schemathesis 4 cannot validate answers by.
        "type": "array",
        "items": {"anyOf": [BLOCK_ID, count()]},
        "minItems": 2,
        "maxItems": 2,
    },
}

FILE_RECORD = obj(
    {
        "id": count(minimum=1),
        "parent_id": nullable(count()),
        "name": {"type": "string"},
        "path": PATH,
        "kind": {"enum": list(FILE_KINDS)},
        "mode": MODE,
        "size": count(),
        "mtime_ns": MTIME_NS,
        "rev": count(),
        "state": {"enum": list(FILE_STATES)},
        "content_hash": nullable(BLOCK_ID),
        "blocks": nullable(BLOCK_LIST),
        "target": nullable({"type": "string"}),
        "deleted": {"type": "boolean"},
    }
)

CHANGE = obj(
    {
        "seq": count(),
        "op": {"enum": list(CHANGE_OPS)},
        "file": ref("FileRecord"),
        "old_path": nullable(PATH),
        "device": {"type": "string"},
        "user": {"type": "string"},
        "time": {"type": "number"},
    },
    {"device_id": nullable(count()), "client": nullable({"type": "string"})},
)

REVISION = obj(
    {
        "revision": count(minimum=1),
        "size": count(),
        "time": {"type": "number"},
        "device": {"type": "string"},
        "content_hash": nullable(BLOCK_ID),
        "kept": {"type": "boolean"},
    }
)

ERROR = obj(
    {"error": {"enum": error_codes()}, "message": {"type": "string"}},
    {
        "request_id": {"type": "string"},
        "current": nullable(ref("FileRecord")),
        "missing": {"type": "array", "items": BLOCK_ID},
        "wrong_size": {"type": "array", "items": BLOCK_ID},
    },
)

COMMIT = obj(
    {"path": PATH, "blocks": BLOCK_LIST, "size": count()},
    {
        "base_rev": nullable(count()),
        "base_id": nullable(count()),
        "parent_id": nullable(count()),
        "mtime_ns": MTIME_NS,
        "mode": MODE,
        "commit_id": {"type": "string"},
    },
)

BLOCK_IDS = {"type": "array", "items": BLOCK_ID, "maxItems": MAX_MISSING_IDS}

COMPONENTS: dict[str, Schema] = {
    "FileRecord": FILE_RECORD,
    "Change": CHANGE,
    "Revision": REVISION,
    "Error": ERROR,
    "Commit": COMMIT,
    "Path": PATH,
    "BlockId": BLOCK_ID,
}
"""`components/schemas` of the document."""

LIST_LIMIT = count(LIST_LIMIT_MAX, minimum=1)
COMMIT_ID: Schema = {"type": "string", "minLength": 1, "maxLength": COMMIT_ID_MAX}
MOVE_MODE: Schema = {"enum": list(MOVE_MODES)}
