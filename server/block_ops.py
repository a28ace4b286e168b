"""The block operations, once, for both transports (docs/protocol.md "Blocks", "Batches").

Each operation takes the authenticated caller, the block id of its path (or None) and the
whole request body, and returns the answer; it runs in a worker thread (it hashes, seals,
reads and writes the disk). The hypercorn routes (`server.routes_blocks`) and the bulk
connections (`server.bulk_conn`) only frame requests and answers around these, after
admitting the caller through `Services.admit` and reading the body under
`server.body_budget`, so a rule or a fix here holds on both transports at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from blockstore.errors import WireFormatError
from blockstore.ids import BlockId, parse_block_id
from blockstore.wire import MAX_MISSING_IDS, Buffer, block_record_parts, parse_block_records
from server.config import ServerConfig
from server.db import blocks as block_rows
from server.db.accounts import Principal
from server.errors import BadRequest
from server.services import Services
from server.web import parse_json_object

__all__ = ["OPERATIONS", "BlockAnswer", "Operation", "parse_block_id_text"]

JSON = "application/json"
OCTET = "application/octet-stream"
MAX_FETCH_IDS = 64
FETCH_BUDGET_BYTES = 32 * 1024 * 1024
"""A block fetch answers with the blocks in request order until this many bytes are
gathered; the client asks again for the ones left out."""
MAX_BATCH_BLOCK_BYTES = 64 * 1024 * 1024
PREFIX = "/api/v1/blocks/"


@dataclass
class BlockAnswer:
    """A status, the body as buffers to send in turn, and its content type."""

    status: int
    body: Sequence[Buffer]
    content_type: str = JSON


def json_answer(value: Any, status: int = 200) -> BlockAnswer:
    """A compact JSON answer."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    return BlockAnswer(status, [text])


Handler = Callable[[Services, Principal, BlockId | None, Buffer], BlockAnswer]


@dataclass(frozen=True)
class Operation:
    """One block route: method, path template, body limit and handler."""

    method: str
    path: str
    handler: Handler
    limit: Callable[[ServerConfig], int]
    """The largest body accepted (413 above, refused before it is read)."""


def parse_block_id_text(text: str) -> BlockId:
    """A block id from a path; 400 if malformed."""
    try:
        return parse_block_id(text)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _ids(value: object, most: int, least: int = 0) -> list[BlockId]:
    if not isinstance(value, list) or not least <= len(value) <= most:
        raise BadRequest(f"'ids' must be a list of {least} to {most} block ids")
    if not all(isinstance(i, str) for i in value):
        raise BadRequest("'ids' must hold block id strings")
    return [parse_block_id_text(i) for i in value]


def get_block(s: Services, who: Principal, bid: BlockId | None, body: Buffer) -> BlockAnswer:
    """GET /blocks/{id}: one wire frame."""
    assert bid is not None
    [(_, frame)] = s.blocks.serve_wire_many_sync(who, [bid], 0)
    return BlockAnswer(200, [frame], OCTET)


def put_block(s: Services, who: Principal, bid: BlockId | None, body: Buffer) -> BlockAnswer:
    """PUT /blocks/{id}: verify and store one wire frame."""
    assert bid is not None
    new = s.blocks.put_wire_sync(who, bid, body)
    return json_answer({"id": bid, "stored": new}, 201 if new else 200)


def put_blocks(s: Services, who: Principal, bid: BlockId | None, body: Buffer) -> BlockAnswer:
    """POST /blocks/batch: store block records one after the other (the client keeps
    several batches in flight on their own connections)."""
    try:
        records = [(parse_block_id(t), frame) for t, frame in parse_block_records(body)]
    except (WireFormatError, ValueError) as exc:
        raise BadRequest(str(exc)) from None
    stored = [s.blocks.put_wire_sync(who, b, frame) for b, frame in records]
    return json_answer({"stored": stored})


def fetch_blocks(s: Services, who: Principal, bid: BlockId | None, body: Buffer) -> BlockAnswer:
    """POST /blocks/fetch: block records of the ids asked for (up to the fetch budget)."""
    ids = _ids(parse_json_object(body).get("ids"), MAX_FETCH_IDS, 1)
    frames = s.blocks.serve_wire_many_sync(who, ids, FETCH_BUDGET_BYTES)
    return BlockAnswer(200, block_record_parts([(b, (f,)) for b, f in frames]), OCTET)


def missing_blocks(s: Services, who: Principal, bid: BlockId | None, body: Buffer) -> BlockAnswer:
    """POST /blocks/missing: the ids (in request order, once each) `who` does not hold."""
    ids = _ids(parse_json_object(body).get("ids"), MAX_MISSING_IDS)
    have = s.db.call(block_rows.present, who.user_id, ids)
    return json_answer({"missing": [b for b in dict.fromkeys(ids) if b not in have]})


def _json_limit(c: ServerConfig) -> int:
    return c.max_json_bytes


OPERATIONS = [
    Operation("POST", PREFIX + "batch", put_blocks, lambda c: MAX_BATCH_BLOCK_BYTES),
    Operation("POST", PREFIX + "fetch", fetch_blocks, _json_limit),
    Operation("POST", PREFIX + "missing", missing_blocks, _json_limit),
    Operation("PUT", PREFIX + "{block_id}", put_block, lambda c: c.max_block_frame_bytes),
    Operation("GET", PREFIX + "{block_id}", get_block, lambda c: 0),
]
"""Every block route; fixed paths come before `{block_id}`."""
