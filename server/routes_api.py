"""Routes of `/api/v1/*` (docs/protocol.md): parse, call one service, serialise. No logic.

Every route except `info` and `login` authenticates first (`principal`), which also applies
the per-token rate limit.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping
from importlib import metadata as importlib_metadata

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from blockstore.errors import WireFormatError
from blockstore.wire import COMMIT_ID_MAX, LIST_LIMIT_MAX, MOVE_MODES, blocks_from_json
from server.errors import BadRequest, RateLimited
from server.feed import PollResult
from server.services import CommitRequest, Principal, Services
from server.web import (
    RATE_HEADERS_KEY,
    SQL_INT_MAX,
    USER_KEY,
    check_path,
    client_address,
    get_bool,
    get_int,
    get_mode,
    get_str,
    json_response,
    param_int,
    parse_count,
    query_int,
    query_path,
    read_json,
    request_client,
)

OCTET = "application/octet-stream"


def services(request: Request) -> Services:
    """The process's services (set on the app at startup)."""
    s: Services = request.app.state.services
    return s


async def principal(request: Request) -> Principal:
    """Admit the caller (`Services.admit`: 401, 429); the principal carries this request's
    `X-Drive-Client` id, which the journal records."""
    who, rate_headers = await services(request).admit(request.headers.get("authorization"))
    request.scope[RATE_HEADERS_KEY] = rate_headers
    request.scope[USER_KEY] = who.user_id
    client = request_client(request)
    return who if client is None else dataclasses.replace(who, client=client)


def server_version() -> str:
    """The installed package's version ("0" when run from an uninstalled tree)."""
    try:
        return importlib_metadata.version("drive")
    except importlib_metadata.PackageNotFoundError:
        return "0"


async def info(request: Request) -> Response:
    s = services(request)
    return json_response(
        {"server": "drive", "version": server_version(), "api": 1, "fingerprint": s.fingerprint}
    )


def take_login_slot(request: Request) -> int | None:
    """Count a sign-in attempt against its client address (the API's and the web app's
    share one limit); None if allowed, else the seconds to wait. Sets the rate headers."""
    s = services(request)
    who = client_address(request, s.config.trusted_proxy_addresses)
    verdict = s.login_limiter.take(f"login:{who}")
    request.scope[RATE_HEADERS_KEY] = verdict.headers()
    return None if verdict.allowed else verdict.retry_after


async def login(request: Request) -> Response:
    s = services(request)
    wait = take_login_slot(request)
    if wait is not None:
        raise RateLimited(f"too many requests; retry in {wait} s")
    body = await read_json(request, s.config.max_json_bytes)
    result = await s.auth.login(
        get_str(body, "user"), get_str(body, "password"), get_str(body, "device", "device")
    )
    return json_response(
        {"token": result.token, "user": result.user, "device_id": result.device_id,
         "device": result.device}
    )  # fmt: skip


async def logout(request: Request) -> Response:
    who = await principal(request)
    await services(request).auth.logout(who)
    return json_response({"ok": True})


async def whoami(request: Request) -> Response:
    who = await principal(request)
    s = services(request)
    u = await s.auth.usage(who)
    d = await s.metadata.usage_detail(who)
    return json_response(
        {"user": who.user, "device": who.device, "device_id": who.device_id,
         "quota_bytes": u.quota, "used_bytes": u.used, "staged_bytes": u.staged,
         "logical_bytes": d.logical, "dedupe_saved_bytes": max(0, d.logical - u.used),
         "stored_bytes": d.stored, "archived_bytes": d.archived}
    )  # fmt: skip


async def meta(request: Request) -> Response:
    who = await principal(request)
    commit_id = request.query_params.get("commit_id")
    if commit_id is not None:
        if not 0 < len(commit_id) <= COMMIT_ID_MAX:
            raise BadRequest(f"query parameter 'commit_id' must be 1 to {COMMIT_ID_MAX} characters")
        rec = await services(request).metadata.meta_by_commit(who, commit_id)
        return json_response(rec.to_json())
    file_id = query_int(request, "id", None, minimum=1)
    path = None if file_id is not None else query_path(request)
    rec = await services(request).metadata.meta(who, path, file_id)
    return json_response(rec.to_json())


async def list_dir(request: Request) -> Response:
    who = await principal(request)
    file_id = query_int(request, "id", None, minimum=1)
    path = None if file_id is not None else query_path(request)
    limit = query_int(request, "limit", 1000, minimum=1, maximum=LIST_LIMIT_MAX)
    assert limit is not None
    after = request.query_params.get("after")
    entries, nxt = await services(request).metadata.list_dir(who, path, limit, after, file_id)
    return json_response({"entries": [e.to_json() for e in entries], "next": nxt})


def commit_request(item: object) -> CommitRequest:
    """Parse one commit (the body of POST /commit, or an item of POST /commit/batch)."""
    if not isinstance(item, dict):
        raise BadRequest("a commit must be a JSON object")
    try:
        blocks = blocks_from_json(item.get("blocks"))
    except WireFormatError as exc:
        raise BadRequest(str(exc)) from None
    commit_id = item.get("commit_id")
    if commit_id is not None and not isinstance(commit_id, str):
        raise BadRequest("field 'commit_id' must be a string")
    return CommitRequest(
        path=check_path(item.get("path"), entry=True),
        base_rev=get_int(item, "base_rev", optional=True),
        base_id=get_int(item, "base_id", optional=True),
        parent_id=get_int(item, "parent_id", optional=True),
        blocks=blocks,
        size=get_int(item, "size") or 0,
        mtime_ns=get_int(item, "mtime_ns", optional=True, minimum=None) or time.time_ns(),
        mode=get_mode(item),
        commit_id=commit_id,
    )


async def commit(request: Request) -> Response:
    who = await principal(request)
    s = services(request)
    body = await read_json(request, s.config.max_json_bytes)
    rec, _ = await s.metadata.commit(who, commit_request(body))
    return json_response(rec.to_json())


async def mkdir(request: Request) -> Response:
    who = await principal(request)
    s = services(request)
    body = await read_json(request, s.config.max_json_bytes)
    mode = get_mode(body)
    path = check_path(body.get("path"), entry=True)
    rec = await s.metadata.mkdir(
        who, path, 0o755 if mode is None else mode, get_int(body, "parent_id", optional=True)
    )
    return json_response(rec.to_json())


async def symlink(request: Request) -> Response:
    who = await principal(request)
    s = services(request)
    body = await read_json(request, s.config.max_json_bytes)
    target = get_str(body, "target")
    if not target or "\x00" in target or len(target.encode("utf-8")) > 4096:
        raise BadRequest("symlink target must be 1-4096 bytes without NUL")
    rec = await s.metadata.symlink(
        who, check_path(body.get("path"), entry=True), target,
        get_int(body, "parent_id", optional=True),
    )  # fmt: skip
    return json_response(rec.to_json())


async def setattr_(request: Request) -> Response:
    who = await principal(request)
    s = services(request)
    body = await read_json(request, s.config.max_json_bytes)
    rec = await s.metadata.setattr(
        who, check_path(body.get("path")), get_mode(body),
        get_int(body, "mtime_ns", optional=True, minimum=None),
    )  # fmt: skip
    return json_response(rec.to_json())


async def move(request: Request) -> Response:
    who = await principal(request)
    s = services(request)
    body = await read_json(request, s.config.max_json_bytes)
    mode = get_str(body, "mode", "noreplace")
    if mode not in MOVE_MODES:
        raise BadRequest(f"mode must be one of {', '.join(MOVE_MODES)}")
    rec = await s.metadata.move(
        who, check_path(body.get("from"), "from"), check_path(body.get("to"), "to"), mode,
        src_rev=get_int(body, "src_rev", optional=True),
        dst_rev=get_int(body, "dst_rev", optional=True),
        src_id=get_int(body, "src_id", optional=True),
        dst_id=get_int(body, "dst_id", optional=True),
        dst_parent_id=get_int(body, "dst_parent_id", optional=True),
    )  # fmt: skip
    return json_response(rec.to_json())


async def delete(request: Request) -> Response:
    who = await principal(request)
    s = services(request)
    body = await read_json(request, s.config.max_json_bytes)
    rec = await s.metadata.delete(
        who, check_path(body.get("path")), get_bool(body, "recursive", False),
        get_int(body, "base_rev", optional=True), get_int(body, "id", optional=True),
    )  # fmt: skip
    return json_response({"deleted": rec.to_json()})


async def editing(request: Request) -> Response:
    who = await principal(request)
    s = services(request)
    body = await read_json(request, s.config.max_json_bytes)
    await s.metadata.mark_pending(who, check_path(body.get("path"), entry=True), reserve=False)
    return json_response({"ok": True})


async def revisions(request: Request) -> Response:
    who = await principal(request)
    limit = query_int(request, "limit", 100, minimum=1, maximum=10_000)
    assert limit is not None
    revs = await services(request).metadata.revisions(who, query_path(request), limit)
    return json_response({"revisions": [r.to_json() for r in revs]})


async def restore(request: Request) -> Response:
    who = await principal(request)
    s = services(request)
    body = await read_json(request, s.config.max_json_bytes)
    revision = get_int(body, "revision", minimum=1)
    assert revision is not None
    rec = await s.metadata.restore(who, check_path(body.get("path")), revision)
    return json_response(rec.to_json())


async def set_kept(request: Request, kept: bool) -> Response:
    who = await principal(request)
    s = services(request)
    body = await read_json(request, s.config.max_json_bytes)
    revision = get_int(body, "revision", minimum=1)
    assert revision is not None
    info = await s.metadata.set_kept(who, check_path(body.get("path")), revision, kept)
    return json_response(info.to_json())


async def keep(request: Request) -> Response:
    return await set_kept(request, True)


async def unkeep(request: Request) -> Response:
    return await set_kept(request, False)


async def trash(request: Request) -> Response:
    who = await principal(request)
    items = await services(request).metadata.trash(who)
    return json_response(
        {"entries": [{"id": t.id, "path": t.path, "kind": t.kind, "deleted_at": t.deleted_at,
                      "size": t.size, "device": t.device} for t in items]}
    )  # fmt: skip


async def undelete(request: Request) -> Response:
    who = await principal(request)
    s = services(request)
    body = await read_json(request, s.config.max_json_bytes)
    item_id = get_int(body, "id", optional=True, minimum=1)
    path = (
        None if item_id is not None and body.get("path") is None else check_path(body.get("path"))
    )
    rec = await s.metadata.undelete(who, path, item_id)
    return json_response(rec.to_json())


async def cursor(request: Request) -> Response:
    who = await principal(request)
    return json_response({"cursor": str(await services(request).metadata.cursor(who))})


def _cursor(params: Mapping[str, str]) -> int:
    value = parse_count(params.get("cursor"))
    if value is None or value > SQL_INT_MAX:
        raise BadRequest("query parameter 'cursor' must be a cursor from /cursor or /delta")
    return value


async def delta(request: Request) -> Response:
    who = await principal(request)
    limit = query_int(request, "limit", 1000, minimum=1, maximum=LIST_LIMIT_MAX)
    assert limit is not None
    d = await services(request).metadata.delta(who, _cursor(request.query_params), limit)
    return json_response(
        {"entries": d.entries, "cursor": str(d.cursor), "has_more": d.has_more, "reset": d.reset}
    )


def longpoll_query(params: Mapping[str, str]) -> tuple[int, int]:
    """A long poll's cursor and requested hold time in seconds (400 unless valid). The
    route and the parked fast path (`server.longpoll_fast`) both parse here."""
    cursor = _cursor(params)
    timeout = param_int(params, "timeout", 120, minimum=0, maximum=86400)
    assert timeout is not None
    return cursor, timeout


async def longpoll(request: Request) -> Response:
    who = await principal(request)
    cur, timeout = longpoll_query(request.query_params)

    async def wait_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    result = await services(request).feed.longpoll(who.ns_id, cur, timeout, wait_disconnect)
    if result is None:
        return Response(status_code=499)  # the client is gone; nothing will read this
    return poll_answer(result)


@functools.cache
def poll_answer(result: PollResult) -> Response:
    """The answer to a long poll, encoded once and shared: a commit wakes thousands of polls
    at the same moment, and they all answer the same few bytes (the middleware copies the
    headers before it adds its own)."""
    return json_response({"changes": result.changes, "backoff": result.backoff})


async def healthz(request: Request) -> Response:
    """No auth, no rate limit: for load balancers and monitors (docs/running.md)."""
    await services(request).check_health()
    return json_response({"ok": True})


async def metrics(request: Request) -> Response:
    return Response(services(request).metrics.render(), media_type="text/plain; version=0.0.4")


ROUTES = [
    Route("/api/v1/info", info, methods=["GET"]),
    Route("/api/v1/login", login, methods=["POST"]),
    Route("/api/v1/logout", logout, methods=["POST"]),
    Route("/api/v1/whoami", whoami, methods=["GET"]),
    Route("/api/v1/meta", meta, methods=["GET"]),
    Route("/api/v1/list", list_dir, methods=["GET"]),
    Route("/api/v1/commit", commit, methods=["POST"]),
    Route("/api/v1/mkdir", mkdir, methods=["POST"]),
    Route("/api/v1/symlink", symlink, methods=["POST"]),
    Route("/api/v1/setattr", setattr_, methods=["POST"]),
    Route("/api/v1/move", move, methods=["POST"]),
    Route("/api/v1/delete", delete, methods=["POST"]),
    Route("/api/v1/editing", editing, methods=["POST"]),
    Route("/api/v1/revisions", revisions, methods=["GET"]),
    Route("/api/v1/restore", restore, methods=["POST"]),
    Route("/api/v1/keep", keep, methods=["POST"]),
    Route("/api/v1/unkeep", unkeep, methods=["POST"]),
    Route("/api/v1/trash", trash, methods=["GET"]),
    Route("/api/v1/undelete", undelete, methods=["POST"]),
    Route("/api/v1/cursor", cursor, methods=["GET"]),
    Route("/api/v1/delta", delta, methods=["GET"]),
    Route("/api/v1/longpoll", longpoll, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
]
