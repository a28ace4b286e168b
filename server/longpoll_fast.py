"""The long poll's fast path: admit a `GET /api/v1/longpoll` read off the connection, and
park it (`server.parked`) instead of holding it through hypercorn and Starlette.

Only a poll that would be answered 200 takes this path, checked by the same functions the
route and our middleware use (`routes_api.longpoll_query`, `web.client_id`,
`web.check_query_string`, `Services.admit`, `ChangeFeed.start`). Anything else (a bad token,
cursor or client id, a rate limit, an unusual head) is declined, untouched, and the caller
hands the request to hypercorn: every error has one implementation, the route's.
"""

from __future__ import annotations

import secrets

from starlette.datastructures import QueryParams

from server.errors import ApiError
from server.feed import PollResult
from server.http_head import RequestHead, complete_head, parse_head
from server.parked import ROUTE, ParkedPolls
from server.routes_api import longpoll_query
from server.services import Services
from server.tls_stream import TlsSocketStream
from server.web import CLIENT_HEADER, answer_headers, check_query_string, client_id

__all__ = ["FastLongPoll", "looks_like_longpoll"]

_PREFIX = b"GET " + ROUTE.encode()
_ONCE = (b"host", b"authorization", CLIENT_HEADER.encode())
"""Headers a fast-path head has at most once (Host exactly once, as h11 wants)."""
_REFUSED = (b"content-length", b"transfer-encoding", b"upgrade", b"expect")


def looks_like_longpoll(data: bytes) -> bool:
    """Whether `data` is one whole request head that may be a long poll (cheap test)."""
    return data.startswith(_PREFIX) and complete_head(data)


class FastLongPoll:
    """Admits long polls without hypercorn and parks them."""

    def __init__(self, services: Services, parked: ParkedPolls) -> None:
        self._services = services
        self.parked = parked

    async def take(self, stream: TlsSocketStream, data: bytes) -> bool:
        """Serve the request in `data` (a whole head read from `stream`) if it is a long
        poll the fast path may answer: True once `stream` belongs to the parked polls;
        False, with nothing sent, for hypercorn to serve it."""
        if not looks_like_longpoll(data):
            return False
        head = parse_head(data)
        query = _plain_query(head) if head is not None else None
        if head is None or query is None:
            return False
        try:
            check_query_string(query)
            client_id(_one(head, CLIENT_HEADER.encode()))
            cursor, timeout = longpoll_query(QueryParams(query))
        except ApiError:
            return False
        s = self._services
        auth = _one(head, b"authorization")
        try:
            who, rate_headers = await s.admit(auth)
        except ApiError:
            return False  # 401 or 429: the route answers it (no rate token was taken)
        headers = answer_headers(secrets.token_hex(8), rate_headers)
        extra = b"".join(k + b": " + v + b"\r\n" for k, v in headers)
        deadline = s.feed.start(timeout)
        if isinstance(deadline, PollResult):  # too many open: the backoff answer
            self.parked.answer_now(stream, deadline, extra)
            return True
        return await self.parked.hold(stream, who.ns_id, cursor, deadline, extra)


def _one(head: RequestHead, name: bytes) -> str | None:
    values = head.values(name)
    return values[0].decode("latin-1") if values else None


def _plain_query(head: RequestHead) -> bytes | None:
    """The query string of a plain keep-alive `GET /api/v1/longpoll` head, else None."""
    path, _, query = head.target.partition(b"?")
    if head.method != b"GET" or path != ROUTE.encode():
        return None
    names = [name for name, _ in head.headers]
    if names.count(b"host") != 1 or any(names.count(n) > 1 for n in _ONCE):
        return None
    if any(n in _REFUSED for n in names):
        return None
    if any(v.lower() != b"keep-alive" for v in head.values(b"connection")):
        return None  # "close" and the rest: hypercorn's handling
    return query
