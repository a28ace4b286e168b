"""hypercorn's trio worker, serving HTTPS through `server.tls_stream` instead of trio.SSLStream.

This is `hypercorn.trio.run.worker_serve` cut down to what `drive server serve` uses (one
or more TLS binds, no QUIC, no plain HTTP, no statsd, no max-requests) with our listener
put where hypercorn builds `trio.SSLListener`. It leans on hypercorn's `TCPServer`,
`Lifespan` and `WorkerContext`, so hypercorn is pinned in constraints.txt and every server
test goes through here.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

from blockstore.wire import BULK_ALPN
from server.http_conn import HttpConnections
from server.longpoll_fast import FastLongPoll
from server.parked import ParkedPolls
from server.services import Services
from server.tls_stream import TlsListener, TlsSocketStream

__all__ = ["bind_sockets", "serve_https"]

RECEIVE_CHUNK_BYTES = 1 << 20
"""How much hypercorn asks of a connection per read (its default is 64 KiB)."""


def bind_sockets(config: Config) -> list[socket.socket]:
    """The listening sockets for `config.bind` (call before `trio.run`, so that a busy port
    is a plain `OSError` the command can report in one line)."""
    sockets = config.create_sockets().secure_sockets
    for sock in sockets:
        sock.listen(config.backlog)
    return sockets


async def serve_https(
    app: Any,
    config: Config,
    sockets: list[socket.socket],
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    bulk: Callable[[TlsSocketStream], Awaitable[bool]] | None = None,
    services: Services | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI `app` over TLS on `sockets` (from `bind_sockets`) until
    `shutdown_trigger` returns.

    A connection that negotiated ALPN `BULK_ALPN` goes to `bulk` instead of the app
    (`server.bulk_conn`); without `bulk`, or when `bulk` declines it (returns False), it is
    an ordinary HTTP/1.1 connection. With `services`, long polls on those are parked outside
    hypercorn (`server.http_conn`, `server.parked`).

    Reports the bound URLs (``https://host:port``) through `task_status`.
    """
    import hypercorn.trio.tcp_server as tcp_server

    tcp_server.MAX_RECV = RECEIVE_CHUNK_BYTES  # read bodies in large pieces, not 64 KiB
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(asgi, config, lifespan_state)
    context = WorkerContext(None)
    ssl_context = config.create_ssl_context()
    if ssl_context is None:
        raise ValueError("serve_https needs a certificate and key")

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            listeners = []
            binds = []
            for sock in sockets:
                listeners.append(TlsListener(sock, ssl_context))
                binds.append(f"https://{repr_socket_addr(sock.family, sock.getsockname())}")
            task_status.started(binds)
            state = ConnectionState(lifespan_state.copy())  # as hypercorn does
            hypercorn = partial(TCPServer, asgi, config, context, state)
            connections, parked = _connections(hypercorn, config, services, server_nursery)
            if parked is not None:
                server_nursery.start_soon(parked.run)
            handler = partial(_dispatch, connections.accept, bulk, config.ssl_handshake_timeout)
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    for listener in listeners:
                        nursery.start_soon(_accept, listener, handler, server_nursery)
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, others = error.split((ShutdownError, KeyboardInterrupt))
                if others is not None:
                    raise others from None
            finally:
                if parked is not None:
                    parked.shutdown()
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


def _connections(
    hypercorn: Callable[[trio.abc.Stream], Any],
    config: Config,
    services: Services | None,
    nursery: trio.Nursery,
) -> tuple[HttpConnections, ParkedPolls | None]:
    """How HTTP/1.1 connections are served: with `services`, long polls are parked."""
    if services is None:
        return HttpConnections(hypercorn, None, config.keep_alive_timeout), None
    trailer = _Trailer(config)
    parked = ParkedPolls(services.feed, services.metrics, config.keep_alive_timeout, trailer)
    connections = HttpConnections(
        hypercorn, FastLongPoll(services, parked), config.keep_alive_timeout
    )
    parked.serve_with(connections.start(nursery))
    return connections, parked


class _Trailer:
    """hypercorn's own answer headers (date, server) as wire lines, made once a second."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._second = -1
        self._lines = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            headers = self._config.response_headers("h11")
            self._lines = b"".join(k + b": " + v + b"\r\n" for k, v in headers)
            self._second = now
        return self._lines


async def _accept(
    listener: TlsListener,
    handler: Callable[[TlsSocketStream], Awaitable[None]],
    nursery: trio.Nursery,
) -> None:
    """Start `handler` on every connection `listener` accepts.

    Not `trio.serve_listeners`: it closes a connection when its handler returns, and a
    connection whose long poll was parked lives on without a task (`server.parked`)."""
    while True:
        stream = await listener.accept()
        nursery.start_soon(handler, stream)


async def _dispatch(
    http: Callable[[TlsSocketStream], Awaitable[None]],
    bulk: Callable[[TlsSocketStream], Awaitable[bool]] | None,
    handshake_timeout: float,
    stream: TlsSocketStream,
) -> None:
    """Handshake, then serve the connection as bulk (by ALPN) or as HTTP/1.1 (`http` closes
    it, or hands it on)."""
    try:
        with trio.fail_after(handshake_timeout):
            await stream.do_handshake()
        bulk_alpn = bulk is not None and stream.selected_alpn_protocol() == BULK_ALPN
        if bulk is not None and bulk_alpn and await bulk(stream):
            return
    except (trio.BrokenResourceError, trio.TooSlowError):
        stream.close()
        return
    except BaseException:
        stream.close()
        raise
    await http(stream)
