"""The changes a page can make: new folder, rename, move, delete, undelete, restore.

Each is a small urlencoded form (sent by htmx with the CSRF header, or plainly with the
CSRF field), checked for origin and token, then one service call as the signed-in device,
so it is journaled and reaches every mounted device like any other change. The answer is
a message for the page and the `drive-changed` event that makes it reload what it shows.
"""

from __future__ import annotations

import posixpath
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.errors import BadRequest
from server.metadata import Metadata
from server.routes_api import services
from server.services import Principal
from server.web import SQL_INT_MAX, check_path, parse_count
from server.webapp.pages import field, render, web_route
from server.webapp.session import posted_form

Action = Callable[[Metadata, Principal, dict[str, str]], Awaitable[str]]


def _path(form: dict[str, str], key: str = "path") -> str:
    return check_path(field(form, key), key, entry=True)


def _count(form: dict[str, str], key: str) -> int | None:
    """An optional whole-number field (400 if it is something else)."""
    raw = form.get(key) or None
    value = parse_count(raw)
    if raw is not None and (value is None or value > SQL_INT_MAX):
        raise BadRequest(f"form field {key!r} must be a number")
    return value


def _id(form: dict[str, str]) -> int | None:
    return _count(form, "id")


def _child(folder: str, name: str) -> str:
    if not name or "/" in name:
        raise BadRequest("a name must not be empty nor contain '/'")
    return check_path(posixpath.join(folder, name), "name", entry=True)


async def _mkdir(md: Metadata, who: Principal, form: dict[str, str]) -> str:
    rec = await md.mkdir(who, _child(check_path(field(form, "path")), field(form, "name")), 0o755)
    return f"Created folder {rec.name}."


async def _rename(md: Metadata, who: Principal, form: dict[str, str]) -> str:
    src = _path(form)
    dst = _child(posixpath.dirname(src), field(form, "name").strip())
    rec = await md.move(who, src, dst, "noreplace", src_id=_id(form))
    return f"Renamed to {rec.name}."


async def _move(md: Metadata, who: Principal, form: dict[str, str]) -> str:
    src = _path(form)
    folder = check_path(field(form, "to").strip() or "/", "to")
    rec = await md.move(who, src, _child(folder, posixpath.basename(src)), "noreplace",
                        src_id=_id(form))  # fmt: skip
    return f"Moved {rec.name} to {folder}."


async def _delete(md: Metadata, who: Principal, form: dict[str, str]) -> str:
    rec = await md.delete(who, _path(form), True, file_id=_id(form))
    return f"Moved {rec.name} to the trash."


async def _undelete(md: Metadata, who: Principal, form: dict[str, str]) -> str:
    item_id = _id(form)
    rec = await md.undelete(who, None if item_id else _path(form), item_id)
    return f"Restored {rec.path} from the trash."


async def _restore(md: Metadata, who: Principal, form: dict[str, str]) -> str:
    revision = _count(form, "revision")
    if not revision:
        raise BadRequest("form field 'revision' must be a revision number")
    rec = await md.restore(who, _path(form), revision)
    return f"Restored revision {revision} of {rec.name} as revision {rec.rev}."


def _action(act: Action) -> Callable[[Request], Awaitable[Response]]:
    @web_route
    async def handler(request: Request) -> Response:
        who, form = await posted_form(request)
        message = await act(services(request).metadata, who, form)
        return render("_message.html", headers={"HX-Trigger": "drive-changed"}, info=message)

    return handler


ROUTES = [
    Route("/web/mkdir", _action(_mkdir), methods=["POST"]),
    Route("/web/rename", _action(_rename), methods=["POST"]),
    Route("/web/move", _action(_move), methods=["POST"]),
    Route("/web/delete", _action(_delete), methods=["POST"]),
    Route("/web/undelete", _action(_undelete), methods=["POST"]),
    Route("/web/restore", _action(_restore), methods=["POST"]),
]
