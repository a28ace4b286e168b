"""Long polls parked outside hypercorn: a small record per waiting connection, one task for all.

Why: held through hypercorn and Starlette a long poll cost about 29 KiB of Python objects
(tasks, cancel scopes, hypercorn's and Starlette's per-request state) and each answer several
hundred microseconds of CPU, so 10,000 waiters could not be answered within seconds
(docs/performance.md "Long polls at scale"). Here a waiting connection is one slotted record
in the feed's set of its namespace and in one epoll descriptor; a change writes the shared,
pre-encoded answer (`routes_api.poll_answer`, with the headers hypercorn and our middleware
add) straight to each socket, without waking any task.

A record is in one of these states:
- PENDING: admitted by `server.longpoll_fast`, registered with the feed, reading the head.
- PARKED: waiting for a change, its hold deadline ("no change" answer) or its client leaving
  (end of stream: the record is freed).
- IDLE: answered (or new, `keep`); the connection is kept alive for its next request, which
  goes to `serve` (a task again: the fast path or hypercorn); closed after the keep-alive
  time, or at once when the server stops.

One task (`run`) waits on the epoll descriptor and the earliest deadline; deadlines are kept
in one-second buckets (a record leaves its bucket when it moves on), so a timeout answer may
come up to a second late (the hold time has jitter anyway). Everything runs on the trio
thread.
"""

from __future__ import annotations

import logging
import math
import select
from collections.abc import Callable
from functools import cache

import trio

from server.feed import ChangeFeed, PollResult
from server.metrics import Metrics
from server.routes_api import poll_answer
from server.tls_stream import TlsSocketStream

__all__ = ["ROUTE", "ParkedPolls", "poll_wire"]

log = logging.getLogger(__name__)

ROUTE = "/api/v1/longpoll"
"""The route's name in the request metrics (as the middleware counts it)."""
_EVENTS = select.EPOLLIN | select.EPOLLRDHUP
_HANG_UP = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_BATCH = 1024
_NEW, _PENDING, _WOKEN, _PARKED, _IDLE, _CLOSED = range(6)
_CHANGED = PollResult(True, None)
_UNCHANGED = PollResult(False, None)


@cache
def _head_and_body(result: PollResult) -> tuple[bytes, bytes]:
    """The status line and the response's own headers, and the body, as h11 writes them."""
    answer = poll_answer(result)
    lines = [b"HTTP/1.1 %d \r\n" % answer.status_code]
    lines += [name + b": " + value + b"\r\n" for name, value in answer.raw_headers]
    return b"".join(lines), bytes(answer.body)


def poll_wire(result: PollResult, extra: bytes, trailer: bytes) -> bytes:
    """A long poll's whole answer on the wire: what Starlette, our middleware (`extra`: the
    request id and rate headers) and hypercorn (`trailer`: date, server) would send."""
    head, body = _head_and_body(result)
    return b"".join((head, extra, trailer, b"\r\n", body))


def _close(stream: TlsSocketStream, prefix: bytes) -> None:
    stream.close()


class _Conn:
    """One connection held here (see the module docstring for its states)."""

    __slots__ = ("cursor", "due", "extra", "lot", "ns_id", "pending", "state", "stream")

    def __init__(self, lot: ParkedPolls, stream: TlsSocketStream, ns_id: int, cursor: int,
                 due: float, extra: bytes) -> None:  # fmt: skip
        self.lot = lot
        self.stream = stream
        self.ns_id = ns_id
        self.cursor = cursor
        self.due = due
        self.extra = extra
        self.state = _NEW
        self.pending = b""
        """Bytes of the client's next request that arrived while the poll was parked."""

    def wake(self) -> None:
        """The feed's call: the namespace changed (or may have)."""
        if self.state == _PENDING:
            self.state = _WOKEN
        elif self.state == _PARKED:
            self.lot.woken(self)


class ParkedPolls:
    """Every parked long poll and kept-alive connection of one server process."""

    def __init__(
        self,
        feed: ChangeFeed,
        metrics: Metrics,
        keep_alive_s: float,
        trailer: Callable[[], bytes],
    ) -> None:
        """`trailer()`: hypercorn's own answer headers (date, server), each line ending in
        CRLF. Call `serve_with` before `run`."""
        self._feed = feed
        self._metrics = metrics
        self._keep_alive_s = keep_alive_s
        self._trailer = trailer
        self._serve: Callable[[TlsSocketStream, bytes], None] = _close
        self._epoll = select.epoll()
        self._conns: dict[int, _Conn] = {}
        """Watched connections by descriptor (each is in the epoll set)."""
        self._due: dict[int, set[_Conn]] = {}
        """Connections by the second their deadline falls in (trio time, rounded up)."""
        self._rechecks: dict[int, list[_Conn]] = {}
        self._wait = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._closing = False

    def serve_with(self, serve: Callable[[TlsSocketStream, bytes], None]) -> None:
        """`serve(stream, prefix)` starts serving a held connection's next request (in a
        task), with the bytes already read from it (`server.http_conn` is built after this)."""
        self._serve = serve

    # -- the connection's task hands over -------------------------------------------------

    async def hold(self, stream: TlsSocketStream, ns_id: int, cursor: int, deadline: float,
                   extra: bytes) -> bool:  # fmt: skip
        """Answer a long poll opened with `ChangeFeed.start` (`deadline`) now if the journal
        is past `cursor`, else park it. True once the connection is ours; False if the head
        could not be read (the poll is closed again: the caller hands the request to
        hypercorn, which answers the error as it would)."""
        conn = _Conn(self, stream, ns_id, cursor, deadline, extra)
        while True:
            conn.state = _PENDING  # registered before the head is read: no change is missed
            self._feed.watch(ns_id, conn)
            try:
                head = await self._feed.head(ns_id)
            except BaseException as exc:
                self._feed.forget(ns_id, conn)
                self._feed.finish()
                conn.state = _CLOSED
                if isinstance(exc, Exception):
                    return False
                raise
            if head > cursor:
                self._feed.forget(ns_id, conn)
                self._answer(conn, _CHANGED)
                return True
            if conn.state == _PENDING:
                self._park(conn)
                return True

    def keep(self, stream: TlsSocketStream) -> None:
        """Hold a new connection until its first request arrives (as after an answer)."""
        self._idle(_Conn(self, stream, 0, 0, 0.0, b""))

    def answer_now(self, stream: TlsSocketStream, result: PollResult, extra: bytes) -> None:
        """Answer a poll that was never opened (the backoff answer), then keep the
        connection alive here."""
        self._answer(_Conn(self, stream, 0, 0, 0.0, extra), result)

    # -- the watcher ------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch every held connection until `shutdown`."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                fd = self._epoll.fileno()
                while not self._closing:
                    self._wait = trio.CancelScope(deadline=min(self._due, default=math.inf))
                    with self._wait:
                        await trio.lowlevel.wait_readable(fd)
                    self._ready()
                    self._expire(trio.current_time())
                nursery.cancel_scope.cancel()
        finally:
            trio.lowlevel.notify_closing(self._epoll.fileno())
            self._epoll.close()

    def shutdown(self) -> None:
        """The server stops: answer every parked poll ("no change"), close every connection."""
        self._closing = True
        for conn in list(self._conns.values()):
            if conn.state == _PARKED:
                self._feed.forget(conn.ns_id, conn)
                self._answer(conn, _UNCHANGED)
            self._drop(conn)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _ready(self) -> None:
        """Handle every connection the epoll set reports (data, end of stream)."""
        while True:
            events = self._epoll.poll(0, _BATCH)
            for fd, flags in events:
                conn = self._conns.get(fd)
                if conn is not None:
                    self._readable(conn, flags)
            if len(events) < _BATCH:
                return

    def _readable(self, conn: _Conn, flags: int) -> None:
        data: bytes | None = b""
        if not (flags & _HANG_UP and conn.stream.hung_up()):
            try:
                data = conn.stream.receive_nowait()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
        if data is None:
            return  # TLS records without data
        if conn.state == _IDLE:  # the next request (a task serves it), or the client left
            if data:
                self._release(conn)
                self._serve(conn.stream, data)
            else:
                self._drop(conn)
            return
        if data:  # the next request, sent before this answer: keep it for then
            conn.pending += data
            self._epoll.modify(conn.stream.fileno(), 0)
            return
        self._feed.forget(conn.ns_id, conn)  # the client left: nothing to answer
        self._feed.finish()
        self._metrics.add("longpolls_parked", -1)
        self._metrics.count_request(ROUTE, 499)
        self._drop(conn)

    def _expire(self, now: float) -> None:
        """Answer the polls whose hold time is over; close idle connections that timed out."""
        for second in sorted(s for s in self._due if s <= now):
            for conn in self._due.pop(second):
                if conn.state == _PARKED:
                    self._feed.forget(conn.ns_id, conn)
                    self._answer(conn, _UNCHANGED)
                elif conn.state == _IDLE:
                    self._drop(conn)

    # -- state changes ------------------------------------------------------------------------

    def woken(self, conn: _Conn) -> None:
        """A parked poll's namespace changed: answer it if it has news for it."""
        head = self._feed.known_head(conn.ns_id)
        if head is None:  # not cached (several servers, listener down): read it, once per ns
            batch = self._rechecks.get(conn.ns_id)
            if batch is None and self._nursery is not None:
                batch = self._rechecks[conn.ns_id] = []
                self._nursery.start_soon(self._recheck, conn.ns_id, batch)
            if batch is not None:
                batch.append(conn)
                return
            self._answer(conn, _CHANGED)  # not running (yet): the client reads the delta
        elif head > conn.cursor:
            self._answer(conn, _CHANGED)
        else:
            self._feed.watch(conn.ns_id, conn)  # the echo of a change it knows: wait on

    async def _recheck(self, ns_id: int, batch: list[_Conn]) -> None:
        """Read `ns_id`'s head for polls woken without one, and answer those it passes."""
        await trio.lowlevel.checkpoint()  # the rest of the wake joins the batch first
        del self._rechecks[ns_id]
        waiting = [c for c in batch if c.state == _PARKED]
        for conn in waiting:
            self._feed.watch(ns_id, conn)
        try:
            head: int | None = await self._feed.head(ns_id)
        except Exception:  # they are answered "changes": the client's delta meets the error
            log.exception("long polls of namespace %d: cannot read the journal head", ns_id)
            head = None
        for conn in waiting:
            if conn.state == _PARKED and (head is None or head > conn.cursor):
                self._feed.forget(ns_id, conn)
                self._answer(conn, _CHANGED)

    def _park(self, conn: _Conn) -> None:
        if self._closing:
            self._feed.forget(conn.ns_id, conn)
            self._answer(conn, _UNCHANGED)
            return
        conn.state = _PARKED
        self._metrics.add("longpolls_parked")
        self._watch(conn)
        self._schedule(conn, conn.due)

    def _answer(self, conn: _Conn, result: PollResult) -> None:
        """Send `result` (the feed already forgot `conn`), then keep the connection alive."""
        if conn.state in (_PENDING, _WOKEN, _PARKED):
            self._feed.finish()
        if conn.state == _PARKED:
            self._metrics.add("longpolls_parked", -1)
        self._metrics.count_request(ROUTE, 200)
        data = poll_wire(result, conn.extra, self._trailer())
        conn.extra = b""
        conn.state = _IDLE
        try:
            sent = conn.stream.send_nowait(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._drop(conn)
            return
        if sent < len(data):  # the socket is full (rare: an idle connection's is empty)
            self._release(conn)
            if self._nursery is None or self._closing:
                conn.stream.close()
            else:
                self._nursery.start_soon(self._send_rest, conn, data[sent:])
            return
        self._idle(conn)

    async def _send_rest(self, conn: _Conn, rest: bytes) -> None:
        try:
            with trio.fail_after(self._keep_alive_s):
                await conn.stream.send_all(rest)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            conn.stream.close()
            return
        self._idle(conn)

    def _idle(self, conn: _Conn) -> None:
        """Keep an answered connection for its next request."""
        if self._closing:
            self._drop(conn)
        elif conn.pending or conn.stream.pending():
            self._release(conn)
            self._serve(conn.stream, conn.pending)
        else:
            conn.state = _IDLE
            self._watch(conn)
            self._schedule(conn, trio.current_time() + self._keep_alive_s)

    def _watch(self, conn: _Conn) -> None:
        fd = conn.stream.fileno()
        if fd not in self._conns:
            self._epoll.register(fd, _EVENTS)
            self._conns[fd] = conn

    def _schedule(self, conn: _Conn, deadline: float) -> None:
        self._unschedule(conn)
        second = math.ceil(deadline)
        conn.due = second
        self._due.setdefault(second, set()).add(conn)
        if second < self._wait.deadline:
            self._wait.deadline = second

    def _release(self, conn: _Conn) -> None:
        """Stop holding `conn` (its stream goes on elsewhere, or is closed by `_drop`)."""
        conn.state = _CLOSED
        self._unschedule(conn)
        fd = conn.stream.fileno()
        if self._conns.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def _unschedule(self, conn: _Conn) -> None:
        """Take `conn` out of its deadline's bucket (a moved or closed one holds nothing)."""
        bucket = self._due.get(int(conn.due))
        if bucket is not None:
            bucket.discard(conn)
            if not bucket:
                del self._due[int(conn.due)]
        conn.due = -1

    def _drop(self, conn: _Conn) -> None:
        self._release(conn)
        conn.stream.close()
