"""The ASGI application: the route table, error handlers and the outer middleware.

Starlette (not FastAPI) because the routes parse their own small JSON bodies against
`blockstore.wire` and the per-connection footprint matters for thousands of long polls.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from server import openapi, routes_api, routes_batch, routes_blocks, routes_files
from server.errors import ApiError, BadRequest, Internal, NotFound, api_error_of
from server.metrics import Metrics
from server.services import Services
from server.web import DriveMiddleware, drain_body, error_response, request_id
from server.webapp.routes import ROUTES as WEB_ROUTES

log = logging.getLogger(__name__)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if exc.status >= 500:
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        log.error("request %s: %s%s", request_id(request), exc.message, cause)
    await drain_body(request, exc)
    return error_response(exc, request_id(request))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound("no such endpoint"))
    err = BadRequest(exc.detail or "bad request")
    err.status = exc.status_code
    return error_response(err)


async def _unexpected(request: Request, exc: Exception) -> Response:
    known = api_error_of(exc)
    if known is not None:  # a full disk, or an ApiError inside an exception group
        if known is not exc:
            known.__cause__ = exc
        return await _api_error(request, known)
    rid = request_id(request)
    log.error("request %s failed", rid, exc_info=exc)
    return error_response(Internal("internal error", request_id=rid))


def assemble(routes: list[BaseRoute], metrics: Metrics, services: Services | None) -> ASGIApp:
    """Routes with the protocol's error handling and the outer middleware."""
    app = Starlette(
        routes=routes,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    app.state.services = services
    return DriveMiddleware(app, metrics, services.bodies if services is not None else None)


def api_routes() -> list[BaseRoute]:
    """Every route of the HTTP API (server.openapi describes each one)."""
    return [*routes_blocks.ROUTES, *routes_batch.ROUTES, *routes_api.ROUTES, *routes_files.ROUTES,
            *openapi.ROUTES]  # fmt: skip


def build_app(services: Services) -> ASGIApp:
    """The whole HTTP API over `services`, and the web app (R19; not part of the API
    schema: pages, not operations)."""
    return assemble([*api_routes(), *WEB_ROUTES], services.metrics, services)
