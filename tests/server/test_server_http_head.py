"""The strict request-head reader of the long-poll fast path (server.http_head)."""

from __future__ import annotations

import pytest

from server.http_head import complete_head, parse_head

POLL = (
    b"GET /api/v1/longpoll?cursor=5&timeout=60 HTTP/1.1\r\n"
    b"Host: x\r\nAuthorization: Bearer t\r\n\r\n"
)


def test_a_plain_head_is_read() -> None:
    head = parse_head(POLL)
    assert head is not None
    assert (head.method, head.target) == (b"GET", b"/api/v1/longpoll?cursor=5&timeout=60")
    assert head.headers == [(b"host", b"x"), (b"authorization", b"Bearer t")]
    assert head.values(b"authorization") == [b"Bearer t"]


@pytest.mark.parametrize(
    "data",
    [
        POLL[:-2],  # incomplete
        POLL + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # a second request behind it
        POLL.replace(b"HTTP/1.1", b"HTTP/1.0"),
        POLL.replace(b"GET /api", b"GET  /api"),
        POLL.replace(b"GET /api/v1/longpoll", b"GET http://x/api/v1/longpoll"),
        POLL.replace(b"Host: x\r\n", b"Host: x\r\n folded\r\n"),
        POLL.replace(b"Host: x", b"Ho st: x"),
        POLL.replace(b"Host: x", b"Host x"),
        POLL.replace(b"Bearer t", "Bearer \u00e9".encode()),
        POLL.replace(b"Bearer t", b"Bearer\x00t"),
        POLL.replace(b"Host: x", b"Host: x\r\nX-Big: " + b"b" * (64 * 1024)),  # over h11's limit
    ],
)
def test_anything_unusual_is_left_to_hypercorn(data: bytes) -> None:
    assert parse_head(data) is None


def test_complete_head_wants_exactly_one_head() -> None:
    assert complete_head(POLL)
    assert not complete_head(POLL[:-1])
    assert not complete_head(POLL + b"x")
