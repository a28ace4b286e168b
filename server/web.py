"""HTTP plumbing shared by the routes: the outer ASGI middleware, JSON in and out, parsing.

The middleware gives every request an id (`X-Request-Id`), checks its optional
`X-Drive-Client` id (kept in the scope for the journal), counts it by route and status,
adds the rate-limit headers, and turns errors into the protocol's JSON: an `ApiError` into
its status and code, anything else into 500 `internal` with the request id, logged with the
traceback on the server and never shown to the client.
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any
from urllib.parse import parse_qsl

import trio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from blockstore.errors import InvalidPath
from blockstore.wire import ROOT_PATH, validate_path
from server.body_budget import BodyRules
from server.errors import (
    ApiError,
    BadRequest,
    BodyIncomplete,
    Internal,
    RequestTimeout,
    TooLarge,
)
from server.metrics import Metrics

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "drive.request_id"
RATE_HEADERS_KEY = "drive.rate_headers"
DRAIN_KEY = "drive.drain"
CLIENT_KEY = "drive.client"
CLIENT_HEADER = "x-drive-client"
_CLIENT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
DRAIN_SECONDS = 10.0
BODY_RULES_KEY = "drive.body_rules"
USER_KEY = "drive.user"
"""The authenticated user's id (for their share of the body budget)."""
HOLDS_KEY = "drive.body_holds"
"""Budget room this request took (given back when it ends)."""
STREAM_HOLD_BYTES = 2 * 1024 * 1024
"""Budget room of a body that goes to disk: the piece in hand plus the writer's buffer."""
SQL_INT_MAX = 2**63 - 1
SQL_INT_MIN = -(2**63)
"""The range of a database integer (SQLite and PostgreSQL BIGINT)."""
MAX_MODE = 0o7777
_DIGITS_RE = re.compile(r"[0-9]{1,30}")
_MAYBE_SURROGATE_RE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
"""Where a JSON body can carry a lone surrogate: an escape or raw (CESU-style) bytes."""


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A compact JSON response."""
    return Response(
        json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8"),
        status_code=status,
        headers=dict(headers or {}),
        media_type="application/json",
    )


def client_id(value: str | None) -> str | None:
    """The `X-Drive-Client` id of a request (None when absent); 400 unless 1-64 characters
    of [A-Za-z0-9_-], so the journal only ever stores a plain, bounded token."""
    if value is None:
        return None
    if not _CLIENT_RE.fullmatch(value):
        raise BadRequest(
            "header X-Drive-Client must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'"
        )
    return value


def _scope_client_id(scope: Scope) -> str | None:
    values = [v for k, v in scope.get("headers", []) if k.lower() == CLIENT_HEADER.encode()]
    if len(values) > 1:
        raise BadRequest("header X-Drive-Client given more than once")
    return client_id(values[0].decode("latin-1") if values else None)


def error_response(exc: ApiError, rid: str | None = None) -> Response:
    """The JSON answer of an ApiError (with its extra headers; 5xx also name the request)."""
    body = exc.body()
    if exc.status >= 500 and rid is not None:
        body.setdefault("request_id", rid)
    return json_response(body, exc.status, exc.headers)


def answer_headers(request_id: str, rate_headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """The headers every answer gets after its own: the request id, the rate-limit headers
    (the middleware's, and the parked long poll's, `server.parked`)."""
    headers = [(b"x-request-id", request_id.encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in rate_headers.items()]
    return headers


class DriveMiddleware:
    """Outermost ASGI layer: request ids, metrics, rate-limit headers, last-resort errors."""

    def __init__(self, app: ASGIApp, metrics: Metrics, bodies: BodyRules | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.bodies = bodies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = secrets.token_hex(8)
        scope[REQUEST_ID_KEY] = request_id
        scope[BODY_RULES_KEY] = self.bodies
        status = 500
        started = False
        declared = _declared_body(scope)
        body_done = trio.Event()  # the body ended (or the client left); set at once if none
        if declared == 0:
            body_done.set()

        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                body_done.set()
            return message

        async def drain() -> None:
            # Read (and drop) what the client is still sending before an early answer:
            # closing a socket with unread data makes TCP reset it, and the client would see
            # "connection reset" instead of our 4xx. Bounded in bytes and time. Another task
            # of the app may read the end of the body meanwhile (a streaming answer listens
            # for the disconnect), so this stops when the body ended, whoever read it.
            async def skip(done: trio.CancelScope) -> None:
                left = DRAIN_LIMIT_BYTES
                while not body_done.is_set() and left > 0:
                    message = await receive_wrapper()
                    left -= len(message.get("body", b""))
                done.cancel()

            with trio.move_on_after(DRAIN_SECONDS):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(skip, nursery.cancel_scope)
                    await body_done.wait()
                    nursery.cancel_scope.cancel()

        scope[DRAIN_KEY] = drain

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers += answer_headers(request_id, scope.get(RATE_HEADERS_KEY, {}))
                if not body_done.is_set() and not _says_close(headers):
                    # Answering before the body ended (a 405, a route that reads no body):
                    # hypercorn closes the connection after such an answer, and a client
                    # that already sent its next request on it loses that request. Read the
                    # rest of the body first, or announce the close.
                    if declared is None or declared <= DRAIN_LIMIT_BYTES:
                        await drain()
                    if not body_done.is_set():
                        headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            scope[CLIENT_KEY] = _scope_client_id(scope)
            check_query_string(scope.get("query_string", b""))
            await self.app(scope, receive_wrapper, send_wrapper)
        except ApiError as exc:
            if not started:
                if drains(exc):
                    await drain()
                await error_response(exc, request_id)(scope, receive, send_wrapper)
            else:
                log.warning("request %s failed after its answer started: %s", request_id, exc)
        except Exception:
            if not started:
                log.exception("request %s failed", request_id)
                body = Internal("internal error", request_id=request_id)
                await error_response(body)(scope, receive, send_wrapper)
            else:
                log.debug("request %s: exception after the answer started", request_id)
        finally:
            if self.bodies is not None:
                for taken in scope.pop(HOLDS_KEY, []):
                    self.bodies.budget.release(taken, scope.get(USER_KEY))
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.count_request(name, status)


def _declared_body(scope: Scope) -> int | None:
    """The request body's declared length: 0 without one, None when chunked (h11 has
    refused a request with a malformed Content-Length already)."""
    length = 0
    for name, value in scope.get("headers", []):
        if name.lower() == b"transfer-encoding":
            return None
        if name.lower() == b"content-length":
            length = parse_count(value.decode("latin-1").strip()) or 0
    return length


def _says_close(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether an answer's headers close the connection (`Connection: close`)."""
    return any(k.lower() == b"connection" and b"close" in v.lower() for k, v in headers)


def drains(exc: ApiError) -> bool:
    """Whether to read what the client still sends before answering `exc`: not after a
    deadline passed (the connection closes) nor once the body has ended."""
    return not isinstance(exc, RequestTimeout | BodyIncomplete)


async def drain_body(request: Request, exc: ApiError) -> None:
    """Before an early error answer, read what the client is still sending (bounded)."""
    drain = request.scope.get(DRAIN_KEY)
    if drain is not None and drains(exc):
        await drain()


def request_client(request: Request) -> str | None:
    """This request's `X-Drive-Client` id (checked by the middleware), or None."""
    value = request.scope.get(CLIENT_KEY)
    return value if isinstance(value, str) else None


def client_address(request: Request, trusted_proxies: frozenset[str]) -> str:
    """The address of whoever sent the request: the peer, or, when the peer is a trusted
    proxy (a load balancer, `trusted_proxies`), the address that proxy appended last to
    `X-Forwarded-For` (earlier entries came from the client and prove nothing)."""
    peer = request.client.host if request.client else "-"
    if peer not in trusted_proxies:
        return peer
    forwarded = request.headers.get("x-forwarded-for", "")
    last = forwarded.rsplit(",", 1)[-1].strip()
    return last or peer


def request_id(request: Request) -> str:
    """This request's id (also in the log and the X-Request-Id header)."""
    return str(request.scope.get(REQUEST_ID_KEY, "-"))


def parse_count(text: str | None) -> int | None:
    """A byte count or other non-negative integer written in ASCII digits, else None.

    Not `str.isdigit()`: it accepts digits such as '\xb2' that `int()` refuses, and `int()`
    alone accepts signs, spaces, underscores and non-ASCII digits."""
    if text is None or not _DIGITS_RE.fullmatch(text):
        return None
    return int(text)


def content_length(request: Request) -> int | None:
    """The declared body length (None when absent or not a count; the server that parsed
    the request has framed the body already)."""
    return parse_count(request.headers.get("content-length"))


async def read_body(request: Request, limit: int) -> bytearray:
    """The whole body, refusing (413) more than `limit` bytes before reading them.

    Room for it is taken from the server's body budget first (waiting while there is none;
    given back when the request ends), the bytes are kept as they arrive, and the whole
    body must arrive by its deadline (else 408, and the connection closes). A body that
    ends short of its Content-Length is 400 (`BodyIncomplete`)."""
    declared = content_length(request)
    if declared is not None and declared > limit:
        raise TooLarge(f"request body over {limit} bytes")
    size = limit if declared is None else declared
    body = bytearray()
    async with aclosing(_pieces(request, size, declared)) as pieces:
        async for piece in pieces:
            if len(body) + len(piece) > limit:
                raise TooLarge(f"request body over {limit} bytes")
            body += piece
    return body


async def body_stream(request: Request, *, partial_ok: bool = False) -> AsyncIterator[bytes]:
    """The body as it arrives, for bodies that go to disk (uploads): the same budget (for
    the piece in hand and the writer's buffer) and deadline as `read_body`. A body that
    ends short of its Content-Length raises `BodyIncomplete`, so nothing commits, unless
    `partial_ok` (a resumable part: what arrived is kept and the client resumes)."""
    declared = content_length(request)
    hold = min(declared, STREAM_HOLD_BYTES) if declared is not None else STREAM_HOLD_BYTES
    try:
        async with aclosing(_pieces(request, hold, declared)) as pieces:
            async for piece in pieces:
                yield piece
    except BodyIncomplete:
        if not partial_ok:
            raise


async def _pieces(request: Request, hold: int, length: int | None) -> AsyncGenerator[bytes, None]:
    """The body's pieces under the body rules: `hold` bytes of the budget are taken for
    the request (till it ends); the deadline is for `length` bytes (unknown: it moves
    on with what arrived, so a long upload only has to keep the minimum rate)."""
    scope = request.scope
    rules = scope.get(BODY_RULES_KEY)
    started = trio.current_time()
    deadline = math.inf
    if isinstance(rules, BodyRules):
        deadline = rules.body_deadline(started, length or 0)
        with trio.move_on_at(deadline) as waited:
            taken = await rules.budget.take(hold, scope.get(USER_KEY))
            scope.setdefault(HOLDS_KEY, []).append(taken)
        if waited.cancelled_caught:
            raise RequestTimeout("timed out waiting for room for the request body")
    received = 0
    stream = request.stream()
    while True:
        try:
            with trio.move_on_at(deadline) as waited:
                piece = await anext(stream, None)
        except ClientDisconnect:
            raise BodyIncomplete("the connection ended in the middle of the body") from None
        if waited.cancelled_caught:
            raise RequestTimeout("the request body did not arrive in time")
        if piece is None:
            break
        if piece:
            received += len(piece)
            if length is None and isinstance(rules, BodyRules):
                deadline = rules.body_deadline(started, received)
            yield piece
    if length is not None and received < length:
        raise BodyIncomplete(f"the body ended after {received} of {length} bytes")


def parse_json_object(raw: bytes | bytearray | memoryview) -> dict[str, Any]:
    """A JSON object body (400 unless it is one, in valid UTF-8 throughout)."""
    try:
        value = json.loads(raw if not isinstance(raw, memoryview) else bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object")
    if _MAYBE_SURROGATE_RE.search(raw) and not _encodable(value):
        raise BadRequest("body has a string that is not valid UTF-8 (a lone surrogate)")
    return value


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """A JSON object body (at most `limit` bytes)."""
    return parse_json_object(await read_body(request, limit))


def _encodable(value: object) -> bool:
    """True if every string in a parsed JSON value is valid UTF-8: `json.loads` lets lone
    surrogates through (as `\\ud800` escapes or as raw bytes), and the database, the
    journal and every client would choke on them later."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_encodable(k) and _encodable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_encodable(v) for v in value)
    return True


def check_query_string(raw: bytes) -> None:
    """400 if a percent-decoded query value is not UTF-8, where Starlette would silently
    put U+FFFD in it (and a path would then name another file). Raw non-ASCII bytes never
    get here: h11 refuses them in the request line."""
    try:
        parse_qsl(raw.decode("latin-1"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("the query string is not valid UTF-8") from None


def check_path(value: object, what: str = "path", *, entry: bool = False) -> str:
    """A valid drive path, else 400. `entry`: the path names an entry to create or
    change, so the root directory (which has no parent and no name) is refused too."""
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string")
    try:
        path = validate_path(value)
    except InvalidPath as exc:
        raise BadRequest(f"invalid {what}: {exc}") from None
    if entry and path == ROOT_PATH:
        raise BadRequest(f"{what} must name a file or folder, not the root directory '/'")
    return path


def get_str(obj: Mapping[str, Any], key: str, default: str | None = None) -> str:
    """A required (or defaulted) string field."""
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise BadRequest(f"field {key!r} must be a string")
    return value


def get_int(
    obj: Mapping[str, Any],
    key: str,
    *,
    optional: bool = False,
    minimum: int | None = 0,
    maximum: int = SQL_INT_MAX,
) -> int | None:
    """An integer field (None if optional and absent or null) within `minimum` (None: the
    database's smallest integer) and `maximum`: every integer of a body ends up in a 64-bit
    database column, so a larger one is a 400 here, not an overflow in SQLite."""
    value = obj.get(key)
    if value is None:
        if optional:
            return None
        raise BadRequest(f"field {key!r} is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"field {key!r} must be an integer")
    low = SQL_INT_MIN if minimum is None else minimum
    if not low <= value <= maximum:
        raise BadRequest(f"field {key!r} must be from {low} to {maximum}")
    return value


def get_mode(obj: Mapping[str, Any]) -> int | None:
    """The optional permission bits of a body (0 to 0o7777; a larger mode is refused, not
    masked, so the caller never gets other bits than it asked for)."""
    return get_int(obj, "mode", optional=True, maximum=MAX_MODE)


def get_bool(obj: Mapping[str, Any], key: str, default: bool = False) -> bool:
    """A boolean field."""
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"field {key!r} must be true or false")
    return value


def query_int(
    request: Request, key: str, default: int | None = None, *, minimum: int = 0,
    maximum: int = SQL_INT_MAX,
) -> int | None:  # fmt: skip
    """A non-negative integer query parameter (ASCII digits), else 400."""
    return param_int(request.query_params, key, default, minimum=minimum, maximum=maximum)


def param_int(
    params: Mapping[str, str], key: str, default: int | None = None, *, minimum: int = 0,
    maximum: int = SQL_INT_MAX,
) -> int | None:  # fmt: skip
    """`query_int` of parsed query parameters (a request's, or a head read without one)."""
    raw = params.get(key)
    if raw is None or raw == "":
        return default
    value = parse_count(raw)
    if value is None:
        raise BadRequest(f"query parameter {key!r} must be a non-negative integer")
    if value < minimum or value > maximum:
        raise BadRequest(f"query parameter {key!r} must be from {minimum} to {maximum}")
    return value


def query_path(request: Request, key: str = "path", *, entry: bool = False) -> str:
    """A required path query parameter (`entry`: as in `check_path`)."""
    raw = request.query_params.get(key)
    if raw is None:
        raise BadRequest(f"query parameter {key!r} is required")
    return check_path(raw, key, entry=entry)
