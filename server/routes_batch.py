"""Commit batches for the sync client (docs/protocol.md "Batches"): many commits in one
request, so saving 1,000 small files costs a handful of round trips, not 3,000 (and stays
far below the per-token rate limit). Block batches are a block operation
(`server.block_ops`).

Each item goes through the same service call as its single-item route, so the rules
(optimistic concurrency, idempotent commit ids) are the single-item rules.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.errors import ApiError, BadRequest
from server.routes_api import commit_request, principal, services
from server.services import CommitRequest
from server.web import json_response, read_json

MAX_BATCH_COMMITS = 1000


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
    Route("/api/v1/commit/batch", commit_batch, methods=["POST"]),
]
