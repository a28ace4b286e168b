"""The block routes through hypercorn: the operations of `server.block_ops` as Starlette
routes. The bulk transport (`server.bulk_conn`) serves the same operations."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from blockstore.aio import run_io
from server.block_ops import OPERATIONS, Operation, parse_block_id_text
from server.routes_api import principal, services
from server.web import read_body


def _endpoint(op: Operation) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        who = await principal(request)
        s = services(request)
        raw = request.path_params.get("block_id")
        bid = None if raw is None else parse_block_id_text(raw)
        body = await read_body(request, op.limit(s.config))
        answer = await run_io(op.handler, s, who, bid, body)
        parts = answer.body
        content = memoryview(parts[0]) if len(parts) == 1 else b"".join(parts)
        return Response(content, answer.status, media_type=answer.content_type)

    return endpoint


ROUTES = [Route(op.path, _endpoint(op), methods=[op.method]) for op in OPERATIONS]
