"""The pages: sign in and out, browse a folder, search, trash, history, recent changes.

Each handler reads through the services as the signed-in device and renders a template;
the fragments (`/web/rows`, `/web/actions`, `/web/activity`, `/web/wait`) are what htmx
loads into a page.
"""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.errors import BadRequest, RateLimited, Unauthorized
from server.metadata import Metadata
from server.routes_api import services, take_login_slot
from server.services import Principal
from server.web import check_path, parse_count, query_path
from server.webapp import listing
from server.webapp.pages import field, read_form, redirect, render, web_route
from server.webapp.session import (
    DEVICE_NAME,
    check_origin,
    csrf_token,
    end_session,
    posted_form,
    signed_in,
    start_session,
)

ACTIVITY_ROWS = 30
WAIT_SECONDS = 30


def _folder(request: Request) -> str:
    raw = request.query_params.get("path") or "/"
    return check_path(raw)


def _order(request: Request) -> tuple[str, bool]:
    sort = request.query_params.get("sort", "name")
    if sort not in listing.SORTS:
        raise BadRequest(f"sort must be one of {', '.join(listing.SORTS)}")
    return sort, request.query_params.get("desc") == "1"


async def login_page(request: Request) -> Response:
    return render("login.html")


@web_route
async def login(request: Request) -> Response:
    check_origin(request)
    s = services(request)
    wait = take_login_slot(request)
    if wait is not None:
        message = f"Too many sign-in attempts: try again in {wait} s."
        return render("login.html", RateLimited.status, error=message)
    form = await read_form(request)
    user = field(form, "user")
    try:
        done = await s.auth.login(user, field(form, "password"), DEVICE_NAME)
    except Unauthorized:
        return render("login.html", 401, error="Wrong user name or password.", user=user)
    response = redirect(request, "/")
    start_session(request, response, done.token)
    return response


@web_route
async def logout(request: Request) -> Response:
    who, _ = await posted_form(request)
    await services(request).auth.logout(who)
    response = redirect(request, "/login")
    end_session(response)
    return response


@web_route
async def browse(request: Request) -> Response:
    who, session = await signed_in(request)
    md = services(request).metadata
    path = _folder(request)
    sort, desc = _order(request)
    folder = await md.meta(who, path, None)
    if folder.kind != "dir":
        return redirect(request, f"/web/view?path={quote(folder.path, safe='')}")
    return render(
        "browse.html", path=path, crumbs=listing.crumbs(path), sort=sort, desc=desc,
        user=who.user, csrf=csrf_token(request, session), cursor=await md.cursor(who),
        context=await _rows_context(md, who, path, sort, desc, None),
    )  # fmt: skip


async def _rows_context(
    md: Metadata, who: Principal, path: str, sort: str, desc: bool, after: str | None
) -> dict[str, object]:
    page = await listing.folder_page(md, who, path, sort, desc, after)
    changes = await listing.recent_changes(md, who, listing.RECENT)
    return {
        "rows": page.rows, "next": page.next, "path": path, "sort": sort, "desc": desc,
        "devices": await listing.last_devices(md, who, page.rows),
        "pending": listing.pending(changes),
    }  # fmt: skip


@web_route
async def rows(request: Request) -> Response:
    who, _ = await signed_in(request)
    sort, desc = _order(request)
    after = request.query_params.get("after")
    md = services(request).metadata
    context = await _rows_context(md, who, _folder(request), sort, desc, after)
    return render("_rows.html", context=context)


@web_route
async def actions(request: Request) -> Response:
    """A row's actions, loaded when it is opened (a page of rows stays small)."""
    who, _ = await signed_in(request)
    path = query_path(request, entry=True)
    rec = await services(request).metadata.meta(who, path, None)
    return render("_actions.html", r=rec, path=listing.parent_of(path))


@web_route
async def search(request: Request) -> Response:
    who, session = await signed_in(request)
    query = request.query_params.get("q", "").strip()
    path = _folder(request)
    hits = await listing.search(services(request).metadata, who, path, query) if query else []
    return render(
        "search.html", query=query, path=path, hits=hits, user=who.user,
        csrf=csrf_token(request, session),
    )  # fmt: skip


@web_route
async def activity(request: Request) -> Response:
    who, _ = await signed_in(request)
    changes = await listing.recent_changes(services(request).metadata, who, ACTIVITY_ROWS)
    return render("_activity.html", changes=list(reversed(changes)))


@web_route
async def wait(request: Request) -> Response:
    """A long poll for the page: answers when the drive changed (telling the page to reload
    what it shows) or after a while, and sets up the next poll either way."""
    who, _ = await signed_in(request)
    s = services(request)
    cursor = parse_count(request.query_params.get("cursor"))
    if cursor is None:
        raise BadRequest("query parameter 'cursor' is required")

    async def wait_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    result = await s.feed.longpoll(who.ns_id, cursor, WAIT_SECONDS, wait_disconnect)
    if result is None:
        return Response(status_code=499)
    headers = {"HX-Trigger": "drive-changed"} if result.changes else {}
    delay = result.backoff or 0
    return render("_wait.html", headers=headers, cursor=await s.metadata.cursor(who), delay=delay)


@web_route
async def trash(request: Request) -> Response:
    who, session = await signed_in(request)
    items = await services(request).metadata.trash(who)
    return render("trash.html", items=items, user=who.user, csrf=csrf_token(request, session))


@web_route
async def history(request: Request) -> Response:
    who, session = await signed_in(request)
    md = services(request).metadata
    path = query_path(request, entry=True)
    rec = await md.meta(who, path, None)
    revisions = await md.revisions(who, path, 1000)
    return render(
        "history.html", rec=rec, revisions=revisions, path=path, user=who.user,
        crumbs=listing.crumbs(listing.parent_of(path)), csrf=csrf_token(request, session),
    )  # fmt: skip


ROUTES = [
    Route("/", browse, methods=["GET"]),
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/web/rows", rows, methods=["GET"]),
    Route("/web/actions", actions, methods=["GET"]),
    Route("/web/search", search, methods=["GET"]),
    Route("/web/activity", activity, methods=["GET"]),
    Route("/web/wait", wait, methods=["GET"]),
    Route("/web/trash", trash, methods=["GET"]),
    Route("/web/history", history, methods=["GET"]),
]
