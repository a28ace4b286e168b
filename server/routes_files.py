"""Routes of the seeds' API (`/files/*`, R2-R4): uploads, download with Range, revisions.

Parse, call one service, serialise. Downloads stream block by block: each block is
decrypted and verified before any of its bytes are sent, the first one before the headers,
so a corrupt first block is a clean 500 and a corrupt later one aborts the body (short of
its Content-Length) instead of ever sending wrong bytes.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from blockstore.aio import run_io
from blockstore.ids import BlockId
from server.errors import ApiError, BadRequest
from server.routes_api import principal, revisions, services
from server.uploads import parse_content_range
from server.web import (
    body_stream,
    content_length,
    json_response,
    parse_count,
    query_int,
    query_path,
)

_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


async def upload(request: Request) -> Response:
    who = await principal(request)
    s = services(request)
    path = query_path(request, entry=True)
    base_rev = query_int(request, "base_rev", None, minimum=0)
    kind = request.query_params.get("uploadType", "media")
    if kind == "media":
        rec, created = await s.uploads.simple(
            who, path, base_rev, body_stream(request), content_length(request)
        )
        return json_response(rec.to_json(), 201 if created else 200)
    if kind == "resumable":
        raw_total = request.headers.get("x-upload-content-length")
        total = parse_count(raw_total)
        if raw_total is not None and total is None:
            raise BadRequest("X-Upload-Content-Length must be a byte count")
        session_id, expires = await s.uploads.start(who, path, base_rev, total)
        return json_response(
            {"session_id": session_id, "expires": expires},
            headers={"Location": f"/files/upload/sessions/{session_id}"},
        )
    raise BadRequest("uploadType must be 'media' or 'resumable'")


async def upload_part(request: Request) -> Response:
    who = await principal(request)
    s = services(request)
    cr = parse_content_range(request.headers.get("content-range"))
    result = await s.uploads.put_part(
        who, request.path_params["session_id"], cr, body_stream(request, partial_ok=True)
    )
    if result.record is not None:
        return json_response(result.record.to_json(), 201 if result.created else 200)
    headers = {"Range": f"bytes=0-{result.received - 1}"} if result.received > 0 else {}
    return Response(status_code=308, headers=headers)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single `Range: bytes=` header, None for the whole file."""
    if header is None:
        return None
    m = _RANGE_RE.fullmatch(header.strip())
    if m is None:
        return None  # multi-range or unknown units: answer with the whole file (RFC 9110)
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":
        n = int(last)
        if n == 0:
            raise _Unsatisfiable()
        return max(0, size - n), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or end < start:
        raise _Unsatisfiable()
    return start, end


class _Unsatisfiable(ApiError):
    status = 416
    code = "bad_request"

    def __init__(self) -> None:
        super().__init__("requested range not satisfiable")


async def download(request: Request) -> Response:
    who = await principal(request)
    s = services(request)
    path = query_path(request)
    revision = query_int(request, "revision", None, minimum=1)
    rec = await s.metadata.version_of(who, path, revision)
    assert rec.blocks is not None
    etag = f'"{rec.content_hash}"' if rec.content_hash else f'"{rec.id}-{rec.rev}"'
    try:
        rng = _parse_range(request.headers.get("range"), rec.size)
    except _Unsatisfiable as exc:
        exc.headers = {"Content-Range": f"bytes */{rec.size}"}
        raise
    start, end = (0, rec.size - 1) if rng is None else rng
    wanted: list[tuple[BlockId, int, int]] = []  # (block, from, to) within each block
    offset = 0
    for bid, size in rec.blocks:
        lo, hi = max(start, offset), min(end, offset + size - 1)
        if lo <= hi:
            wanted.append((bid, lo - offset, hi - offset + 1))
        offset += size
    first = await run_io(s.blocks.get_plain_sync, who, wanted[0][0]) if wanted else b""

    async def stream() -> AsyncIterator[bytes]:
        for i, (bid, lo, hi) in enumerate(wanted):
            data = first if i == 0 else await run_io(s.blocks.get_plain_sync, who, bid)
            piece = data[lo:hi]
            s.metrics.add("block_bytes_served", len(piece))
            yield piece

    length = end - start + 1 if rec.size else 0
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Length": str(length)}
    status = 200
    if rng is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{rec.size}"
    return StreamingResponse(
        stream(), status_code=status, headers=headers, media_type="application/octet-stream"
    )


async def restore(request: Request) -> Response:
    who = await principal(request)
    revision = query_int(request, "revision", None, minimum=1)
    if revision is None:
        raise BadRequest("query parameter 'revision' is required")
    rec = await services(request).metadata.restore(who, query_path(request), revision)
    return json_response(rec.to_json())


ROUTES = [
    Route("/files/upload", upload, methods=["POST"]),
    Route("/files/upload/sessions/{session_id}", upload_part, methods=["PUT"]),
    Route("/files/download", download, methods=["GET"]),
    # The seeds' name for the same call as GET /api/v1/revisions (R4).
    Route("/files/list_revisions", revisions, methods=["GET"]),
    Route("/files/restore", restore, methods=["POST"]),
]
