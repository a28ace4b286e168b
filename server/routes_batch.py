"""Batch routes for the sync client (docs/protocol.md "Batches"): many blocks or many commits
in one request, so saving 1,000 small files costs a handful of round trips, not 3,000 (and
stays far below the per-token rate limit).

Routes only parse and serialise; each item goes through the same service call as its
single-item route, so the rules (id check, optimistic concurrency, idempotent commit ids)
are the single-item rules.
"""

from __future__ import annotations

from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from blockstore.errors import WireFormatError
from blockstore.ids import BlockId, parse_block_id
from blockstore.wire import encode_block_records, parse_block_records
from server.db.versions import CommitRequest
from server.errors import ApiError, BadRequest, api_error_of
from server.routes_api import commit_request, principal, services
from server.web import json_response, read_body, read_json

MAX_BATCH_COMMITS = 1000
MAX_FETCH_IDS = 64
FETCH_BUDGET_BYTES = 32 * 1024 * 1024
"""A block fetch answers with the blocks in request order until this many bytes are
gathered; the client asks again for the ones left out."""
MAX_BATCH_BLOCK_BYTES = 64 * 1024 * 1024
BATCH_PARALLEL = 16
"""Blocks of one batch stored at once: storing is mostly waiting for the disk (an fsync
per block), so a batch of small blocks must not store them one after the other."""


def parse_block_batch(body: bytes | bytearray) -> list[tuple[BlockId, memoryview]]:
    """Split a batch body into `(block id, frame)` records (see docs/protocol.md); 400 if
    it is malformed. Shared with `server.bulk_conn`."""
    try:
        records = parse_block_records(body)
        return [(parse_block_id(text), frame) for text, frame in records]
    except (WireFormatError, ValueError) as exc:
        raise BadRequest(str(exc)) from None


def parse_fetch_ids(body: dict[str, Any]) -> list[BlockId]:
    """The block ids of a fetch request body; 400 unless 1 to MAX_FETCH_IDS valid ids."""
    raw_ids = body.get("ids")
    if not isinstance(raw_ids, list) or not 0 < len(raw_ids) <= MAX_FETCH_IDS:
        raise BadRequest(f"'ids' must be a list of 1 to {MAX_FETCH_IDS} block ids")
    try:
        ids = [parse_block_id(i) for i in raw_ids if isinstance(i, str)]
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if len(ids) != len(raw_ids):
        raise BadRequest("'ids' must hold block id strings")
    return ids


async def blocks_batch(request: Request) -> Response:
    who = await principal(request)
    s = services(request)
    body = await read_body(request, MAX_BATCH_BLOCK_BYTES)
    records = parse_block_batch(body)
    stored: list[bool] = [False] * len(records)
    limiter = trio.CapacityLimiter(BATCH_PARALLEL)

    async def put(i: int) -> None:
        async with limiter:
            stored[i] = await s.blocks.put_wire(who, *records[i])

    try:
        async with trio.open_nursery() as nursery:
            for i in range(len(records)):
                nursery.start_soon(put, i)
    except BaseExceptionGroup as group:
        first = api_error_of(group)
        if first is None:
            raise
        raise first from None
    return json_response({"stored": stored})


async def blocks_fetch(request: Request) -> Response:
    who = await principal(request)
    s = services(request)
    ids = parse_fetch_ids(await read_json(request, s.config.max_json_bytes))
    frames = await s.blocks.get_wire_many(who, ids, FETCH_BUDGET_BYTES)
    return Response(encode_block_records(frames), media_type="application/octet-stream")


async def commit_batch(request: Request) -> Response:
    who = await principal(request)
    s = services(request)
    body = await read_json(request, s.config.max_json_bytes * 16)
    items = body.get("commits")
    if not isinstance(items, list) or len(items) > MAX_BATCH_COMMITS:
        raise BadRequest(f"'commits' must be a list of at most {MAX_BATCH_COMMITS} commits")
    reqs: list[CommitRequest | ApiError] = []
    for item in items:
        try:
            reqs.append(commit_request(item))
        except ApiError as exc:
            reqs.append(exc)
    results = await s.metadata.commit_batch(who, reqs)
    out: list[dict[str, Any]] = []
    for res in results:
        if isinstance(res, ApiError):
            out.append(res.body())
        else:
            out.append({"record": res.to_json()})
    return json_response({"results": out})


ROUTES = [
    Route("/api/v1/blocks/batch", blocks_batch, methods=["POST"]),
    Route("/api/v1/blocks/fetch", blocks_fetch, methods=["POST"]),
    Route("/api/v1/commit/batch", commit_batch, methods=["POST"]),
]
