"""One HTTPS connection after its handshake: long polls to the fast path, the rest to hypercorn.

A new connection waits for its first request among the parked ones (`ParkedPolls.keep`, no
task); its first bytes come here: a long poll the fast path takes (`server.longpoll_fast`)
is parked, anything else goes to hypercorn with the bytes already read replayed in front
(`HandoffStream`). While hypercorn serves the connection, a long poll
arriving between two requests (hypercorn idle: no request in flight, no answer being sent,
nothing buffered) is taken back from it the same way: hypercorn sees the client close, and
the connection goes on here. So a client that mixes requests and long polls on one pooled
connection still has its polls parked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h11
import trio
from hypercorn.protocol.h11 import H11Protocol

from server.longpoll_fast import FastLongPoll, looks_like_longpoll
from server.tls_stream import TlsSocketStream

__all__ = ["HandoffStream", "HttpConnections"]

RECEIVE_BYTES = 1 << 20
"""The first read of a connection (as much as hypercorn reads at a time)."""
IDLE_WAIT_S = 1.0
"""Longest wait for hypercorn to finish the last request before taking a long poll back."""
IDLE_POLL_S = 0.002
IDLE, FINISHING, BUSY = "idle", "finishing", "busy"


class HandoffStream(trio.abc.Stream):
    """The stream hypercorn serves: `prefix` first, then the connection; at a long poll
    between two requests it tells hypercorn the client left and keeps the connection."""

    def __init__(self, inner: TlsSocketStream, prefix: bytes, scope: trio.CancelScope) -> None:
        self.inner = inner
        self.transport_stream = inner.transport_stream
        self.taken: bytes | None = None
        """The long poll's head, once the connection was taken back."""
        self.state: Callable[[], str] = lambda: BUSY
        """hypercorn's state (`hypercorn_state`)."""
        self._prefix = prefix
        self._scope = scope

    async def do_handshake(self) -> None:
        await self.inner.do_handshake()

    def selected_alpn_protocol(self) -> str | None:
        return self.inner.selected_alpn_protocol()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.taken is not None:
            raise trio.ClosedResourceError("the connection went back to the fast path")
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.taken is not None:
            await trio.lowlevel.checkpoint()
            return b""
        if self._prefix:
            data = self._prefix[:max_bytes] if max_bytes else self._prefix
            self._prefix = self._prefix[len(data) :]
            await trio.lowlevel.checkpoint()
            return data
        data = await self.inner.receive_some(max_bytes)
        if looks_like_longpoll(data) and await self._wait_idle():
            self.taken = data
            self._scope.cancel()  # hypercorn is idle: nothing of it is left to run
            return b""
        return data

    async def _wait_idle(self) -> bool:
        """Whether hypercorn is idle, or becomes so shortly: a client sends its next request
        as soon as the last answer arrived, usually before hypercorn has finished that
        request's task. Only waited for once the last request was read whole (`finishing`),
        so what is held back cannot be a part hypercorn still needs."""
        waited = 0.0
        while (state := self.state()) == FINISHING and waited < IDLE_WAIT_S:
            await trio.sleep(IDLE_POLL_S if waited else 0)
            waited += IDLE_POLL_S
        return state == IDLE

    async def aclose(self) -> None:
        if self.taken is None:
            await self.inner.aclose()
        else:
            await trio.lowlevel.checkpoint()


def hypercorn_state(server: Any) -> str:
    """Where hypercorn's HTTP/1.1 connection `server` is: IDLE between two requests (none
    in flight, no answer being sent, nothing buffered), FINISHING once the last request was
    read whole (its answer or task may still run), else BUSY."""
    protocol = getattr(getattr(server, "protocol", None), "protocol", None)
    if not isinstance(protocol, H11Protocol):
        return BUSY
    conn = protocol.connection
    if not isinstance(conn, h11.Connection) or conn.trailing_data[0]:
        return BUSY
    if protocol.stream is None and conn.our_state is h11.IDLE and conn.their_state is h11.IDLE:
        return IDLE
    return FINISHING if conn.their_state is h11.DONE else BUSY


class HttpConnections:
    """Serves HTTP/1.1 connections: the fast path first, hypercorn for the rest."""

    def __init__(
        self,
        hypercorn: Callable[[trio.abc.Stream], Any],
        fast: FastLongPoll | None,
        keep_alive_s: float,
    ) -> None:
        """`hypercorn(stream)`: hypercorn's TCPServer for a stream (awaitable: serves it)."""
        self._hypercorn = hypercorn
        self._fast = fast
        self._keep_alive_s = keep_alive_s

    async def accept(self, stream: TlsSocketStream) -> None:
        """Serve a new connection (handshake done): with the fast path, it waits for its
        first request among the parked connections, without a task."""
        if self._fast is None:
            await self._through_hypercorn(stream, b"")
        else:
            self._fast.parked.keep(stream)
            await trio.lowlevel.checkpoint()

    async def serve(self, stream: TlsSocketStream, prefix: bytes = b"") -> None:
        """Serve `stream` (handshake done; `prefix`: bytes already read from it) until the
        client leaves, the connection is parked or hypercorn closes it."""
        if self._fast is None:
            await self._through_hypercorn(stream, prefix)
            return
        try:
            if not prefix:
                with trio.move_on_after(self._keep_alive_s):  # as hypercorn waits for one
                    prefix = await stream.receive_some(RECEIVE_BYTES)
                if not prefix:
                    stream.close()
                    return
            while True:
                if await self._fast.take(stream, prefix):
                    return
                taken = await self._through_hypercorn(stream, prefix)
                if taken is None:
                    return
                prefix = taken
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            stream.close()
        except BaseException:
            stream.close()
            raise

    async def _through_hypercorn(self, stream: TlsSocketStream, prefix: bytes) -> bytes | None:
        """Let hypercorn serve `stream`; the long poll it gave back, or None once it closed
        the connection."""
        with trio.CancelScope() as scope:
            handoff = HandoffStream(stream, prefix, scope)
            server = self._hypercorn(handoff)
            if self._fast is not None:
                handoff.state = lambda: hypercorn_state(server)
            await server
        return handoff.taken

    def start(self, nursery: trio.Nursery) -> Callable[[TlsSocketStream, bytes], None]:
        """A function that serves a connection's next request in a new task of `nursery`
        (for `ParkedPolls`, when a kept-alive connection sends one)."""

        def spawn(stream: TlsSocketStream, prefix: bytes) -> None:
            nursery.start_soon(self.serve, stream, prefix)

        return spawn
