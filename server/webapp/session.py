"""Web sessions: the browser's signed, expiring cookie, and the CSRF rules.

A web sign-in is a device login (`Authenticator.login` as device "web browser"), so the
session is a device token: revocation (`drive server revoke`, signing out), token expiry and
the per-device rate limit apply exactly as on the API. The cookie carries the token and its
expiry, signed with a key derived from the master key (every server of a deployment accepts
it), so a cookie cannot be made to live longer by editing it. It is `Secure`, `HttpOnly`
and `SameSite=Strict`; on top of that every state-changing request must come from this
origin and carry the session's CSRF token (an HMAC of the session token, put in the pages).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from server.errors import ApiError, Unauthorized
from server.routes_api import principal, services
from server.services import Principal
from server.webapp.pages import read_form

COOKIE = "drive_session"
SESSION_SECONDS = 12 * 3600
"""How long a web session lives after signing in (then: sign in again)."""
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
DEVICE_NAME = "web browser"
_SAME_SITE = frozenset({"same-origin", "none"})


class Forbidden(ApiError):
    """A state-changing request from another origin or without the session's CSRF token."""

    status = 403
    code = "forbidden"


@dataclass(frozen=True, slots=True)
class WebSession:
    """A signed-in browser: its device token and when the session ends (unix seconds)."""

    token: str
    expires: int


def _key(request: Request) -> bytes:
    return services(request).blocks.keyring.derive(b"web session")


def _mac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("ascii"), hashlib.sha256).hexdigest()


def start_session(request: Request, response: Response, token: str) -> None:
    """Set the session cookie for a fresh device token."""
    expires = int(time.time()) + SESSION_SECONDS
    body = f"{token}.{expires}"
    response.set_cookie(
        COOKIE, f"{body}.{_mac(_key(request), body)}", max_age=SESSION_SECONDS, path="/",
        secure=True, httponly=True, samesite="strict",
    )  # fmt: skip


def end_session(response: Response) -> None:
    """Remove the session cookie."""
    response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")


def session_of(request: Request) -> WebSession:
    """The request's valid, unexpired session; 401 without one."""
    raw = request.cookies.get(COOKIE, "")
    token, _, rest = raw.partition(".")
    expires, _, mac = rest.partition(".")
    if not token or not expires.isascii() or not expires.isdigit():
        raise Unauthorized("sign in first")
    if not hmac.compare_digest(mac, _mac(_key(request), f"{token}.{expires}")):
        raise Unauthorized("sign in first")
    if int(expires) < time.time():
        raise Unauthorized("the session has expired: sign in again")
    return WebSession(token, int(expires))


def csrf_token(request: Request, session: WebSession) -> str:
    """The CSRF token of a session (the pages carry it; it is useless without the cookie)."""
    return _mac(_key(request), f"csrf {session.token}")[:40]


def as_device(request: Request, session: WebSession) -> Request:
    """The request as the API sees it: authenticated by the session's device token, so the
    API's own handlers (uploads, downloads) and `principal` serve it unchanged.

    The scope is changed in place (not copied): the outer middleware reads what the
    handlers leave in it (rate headers, the body budget taken)."""
    scope = request.scope
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"authorization"]
    scope["headers"] = [*headers, (b"authorization", f"Bearer {session.token}".encode())]
    return Request(scope, request.receive)


async def signed_in(request: Request) -> tuple[Principal, WebSession]:
    """The signed-in caller (401 without a session; 401/429 as on the API)."""
    session = session_of(request)
    return await principal(as_device(request, session)), session


def check_origin(request: Request) -> None:
    """403 unless a state-changing request comes from this origin (browsers send `Origin`
    and `Sec-Fetch-Site` with every POST)."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"https://{request.headers.get('host', '')}":
        raise Forbidden("request from another origin refused")
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in _SAME_SITE:
        raise Forbidden("cross-site request refused")


def check_csrf(request: Request, session: WebSession, form_token: str | None = None) -> None:
    """403 unless the request comes from this origin with the session's CSRF token (in the
    `X-CSRF-Token` header, or the form field for plain forms)."""
    check_origin(request)
    sent = request.headers.get(CSRF_HEADER) or form_token or ""
    if not hmac.compare_digest(sent, csrf_token(request, session)):
        raise Forbidden("missing or wrong CSRF token: reload the page")


async def posted_form(request: Request) -> tuple[Principal, dict[str, str]]:
    """The signed-in caller and the form of a state-changing request, once its origin and
    CSRF token (header or form field) are checked."""
    session = session_of(request)
    form = await read_form(request)
    check_csrf(request, session, form.get(CSRF_FIELD))
    who, _ = await signed_in(request)
    return who, form
