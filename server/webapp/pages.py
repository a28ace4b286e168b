"""Rendering pages and fragments, the security headers every web answer carries, and the
error handling of the web routes (HTML for people, not the API's JSON).

Templates are autoescaped: names are data, never markup. The Content-Security-Policy allows
scripts and styles from this origin only, so no inline script or `on*` attribute can run
even if markup ever slipped through.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from urllib.parse import parse_qsl, quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from server.errors import ApiError, BadRequest, Unauthorized
from server.web import drain_body, read_body, request_id

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
FORM_LIMIT = 64 * 1024

_env = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


_env.filters["size"] = _size
_env.filters["when"] = _when
_env.filters["q"] = lambda value: quote(str(value), safe="")


def render(
    template: str,
    status: int = 200,
    headers: dict[str, str] | None = None,
    context: Mapping[str, object] | None = None,
    **more: object,
) -> HTMLResponse:
    """A template rendered (with `context` and `more`) with the page security headers."""
    body = _env.get_template(template).render({**(context or {}), **more})
    return HTMLResponse(body, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})


def is_htmx(request: Request) -> bool:
    """True for requests htmx makes (they get fragments, not whole pages)."""
    return request.headers.get("hx-request") == "true"


def redirect(request: Request, url: str) -> Response:
    """Go to `url`: an htmx request is told by header, a plain one by 303."""
    if is_htmx(request):
        return Response(status_code=200, headers={**PAGE_HEADERS, "HX-Redirect": url})
    return RedirectResponse(url, status_code=303, headers=PAGE_HEADERS)


def web_route(handler: Handler) -> Handler:
    """Wrap a web handler: no session sends the browser to the sign-in page, any other
    refusal becomes a message in the page with the API's status code."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Unauthorized:
            await drain_body(request, Unauthorized(""))
            return redirect(request, "/login")
        except ApiError as exc:
            if exc.status >= 500:
                log.error("request %s: %s", request_id(request), exc.message, exc_info=exc)
            await drain_body(request, exc)
            headers = {**exc.headers}
            if is_htmx(request):
                headers.update({"HX-Retarget": "#messages", "HX-Reswap": "innerHTML"})
                return render("_message.html", exc.status, headers, error=exc.message)
            return render("error.html", exc.status, headers, error=exc.message)

    return wrapped


async def read_form(request: Request) -> dict[str, str]:
    """A small urlencoded form body (htmx and plain forms send these); 400 if not UTF-8."""
    raw = await read_body(request, FORM_LIMIT)
    try:
        return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict"))
    except UnicodeDecodeError:
        raise BadRequest("the form is not valid UTF-8") from None


def field(form: dict[str, str], key: str) -> str:
    """A required form field (400 without it)."""
    value = form.get(key)
    if value is None:
        raise BadRequest(f"form field {key!r} is required")
    return value
