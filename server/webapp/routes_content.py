"""File content in and out of the browser: download, preview, a folder as a zip, uploads.

Downloads and uploads are the API's own handlers (`/files/download`, the resumable
`/files/upload` and its sessions) run as the signed-in device, so ranges, quotas, resumable
sessions and the journal behave exactly as for curl. User content is never served as part
of the app: downloads are attachments, previews carry `Content-Security-Policy: sandbox`
(a unique origin without scripts), and both `nosniff`.
"""

from __future__ import annotations

import functools
import mimetypes
import posixpath
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from blockstore.aio import run_io
from blockstore.wire import LIST_LIMIT_MAX
from server import routes_files
from server.errors import BadRequest, NotFound
from server.routes_api import services
from server.services import Principal, Services
from server.web import query_path
from server.webapp.listing import crumbs, parent_of
from server.webapp.pages import render, web_route
from server.webapp.session import as_device, check_csrf, csrf_token, session_of, signed_in
from server.webapp.zipstream import Member, zip_stream

CONTENT_CSP = "sandbox; default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"
PREVIEW_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf")
TEXT_PREVIEW_MAX = 4 * 1024 * 1024
_STATIC_DIR = Path(__file__).with_name("static")
STATIC = {
    "htmx.min.js": "text/javascript",
    "app.js": "text/javascript",
    "app.css": "text/css",
    "htmx.LICENSE.txt": "text/plain; charset=utf-8",
}


@functools.cache
def _static_bytes(name: str) -> bytes:
    """A file of the app (read once: they change only with the server)."""
    return (_STATIC_DIR / name).read_bytes()


def content_type(name: str) -> str:
    """The type a file's name suggests (octet-stream when unknown)."""
    return mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"


def preview_type(name: str) -> str | None:
    """The type a preview is served as, or None when there is no preview for the name
    (text is always plain text, so HTML and SVG are shown as their source)."""
    kind = content_type(name)
    if kind in PREVIEW_TYPES:
        return kind
    if kind.startswith("text/") or kind in ("application/json", "application/xml"):
        return "text/plain; charset=utf-8"
    return None


def _disposition(kind: str, name: str) -> str:
    fallback = name.encode("ascii", "replace").decode().replace('"', "_").replace("\\", "_")
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _content_headers(response: Response, kind: str, disposition: str) -> Response:
    response.headers["Content-Type"] = kind
    response.headers["Content-Disposition"] = disposition
    response.headers["Content-Security-Policy"] = CONTENT_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "private, no-cache"
    return response


@web_route
async def download(request: Request) -> Response:
    name = posixpath.basename(query_path(request, entry=True))
    response = await routes_files.download(as_device(request, session_of(request)))
    return _content_headers(response, content_type(name), _disposition("attachment", name))


@web_route
async def preview(request: Request) -> Response:
    name = posixpath.basename(query_path(request, entry=True))
    kind = preview_type(name)
    if kind is None:
        raise NotFound(f"no preview for {name}")
    response = await routes_files.download(as_device(request, session_of(request)))
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return _content_headers(response, kind, _disposition("inline", name))


@web_route
async def view(request: Request) -> Response:
    who, session = await signed_in(request)
    path = query_path(request, entry=True)
    rec = await services(request).metadata.meta(who, path, None)
    kind = preview_type(rec.name) if rec.kind == "file" else None
    shown = kind if kind is None or not kind.startswith("text/") or rec.size <= TEXT_PREVIEW_MAX \
        else None  # fmt: skip
    return render(
        "view.html", rec=rec, kind=shown, user=who.user, csrf=csrf_token(request, session),
        crumbs=crumbs(parent_of(path)),
    )  # fmt: skip


async def _members(s: Services, who: Principal, root: str) -> AsyncIterator[Member]:
    """Every folder and file under `root`, depth first, named relative to its parent."""
    base = posixpath.dirname(root.rstrip("/"))
    folders = [root]
    while folders:
        folder = folders.pop()
        after: str | None = None
        while True:
            entries, after = await s.metadata.list_dir(who, folder, LIST_LIMIT_MAX, after)
            for e in entries:
                name = posixpath.relpath(e.path, base)
                if e.kind == "dir":
                    folders.append(e.path)
                    yield Member(name, e.mtime_ns, None)
                elif e.kind == "file":
                    yield Member(name, e.mtime_ns, _content(s, who, e.path))
            if after is None:
                break


async def _content(s: Services, who: Principal, path: str) -> AsyncIterator[bytes]:
    rec = await s.metadata.version_of(who, path, None)
    for block_id, _size in rec.blocks or []:
        data = await run_io(s.blocks.get_plain_sync, who, block_id)
        s.metrics.add("block_bytes_served", len(data))
        yield data


@web_route
async def zip_folder(request: Request) -> Response:
    who, _ = await signed_in(request)
    s = services(request)
    path = query_path(request)
    folder = await s.metadata.meta(who, path, None)
    if folder.kind != "dir":
        raise BadRequest(f"{path} is not a folder")
    name = (folder.name or "drive") + ".zip"
    response = StreamingResponse(zip_stream(_members(s, who, path)))
    return _content_headers(response, "application/zip", _disposition("attachment", name))


async def upload(request: Request) -> Response:
    """`POST /files/upload` for a signed-in browser (with the CSRF header)."""
    session = session_of(request)
    check_csrf(request, session)
    return await routes_files.upload(as_device(request, session))


async def upload_part(request: Request) -> Response:
    """`PUT /files/upload/sessions/{id}` for a signed-in browser (with the CSRF header)."""
    session = session_of(request)
    check_csrf(request, session)
    return await routes_files.upload_part(as_device(request, session))


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    kind = STATIC.get(name)
    if kind is None:
        raise NotFound("no such file")
    body = _static_bytes(name)
    headers = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}
    return Response(body, media_type=kind, headers=headers)


ROUTES = [
    Route("/web/download", download, methods=["GET"]),
    Route("/web/preview", preview, methods=["GET"]),
    Route("/web/view", view, methods=["GET"]),
    Route("/web/zip", zip_folder, methods=["GET"]),
    Route("/web/upload", upload, methods=["POST"]),
    Route("/web/upload/sessions/{session_id}", upload_part, methods=["PUT"]),
    Route("/static/{name}", static, methods=["GET"]),
]
