"""`TlsSocketStream.receive_some` and the receive buffer all streams of a listener share.

The sharing is safe only while a stream copies its bytes out before its next checkpoint.
OpenSSL can ask to write in the middle of a read (a TLS 1.3 KeyUpdate to answer, a full
socket): a stream that already holds bytes must hand them over then, not wait for the
socket while another stream reads into the same buffer.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import trio
import trio.testing

from server.tls_stream import TlsSocketStream


class _FakeTls:
    """What `receive_some` uses of `ssl.SSLSocket`: `recv_into`, scripted."""

    def __init__(self, script: list[bytes | type[ssl.SSLError]]) -> None:
        self._script: Iterator[bytes | type[ssl.SSLError]] = iter(script)

    def recv_into(self, view: memoryview) -> int:
        step = next(self._script, ssl.SSLWantReadError)
        if not isinstance(step, bytes):
            raise step()
        view[: len(step)] = step
        return len(step)


def _stream(fake: _FakeTls, fd: int, buffer: bytearray) -> TlsSocketStream:
    stream = TlsSocketStream.__new__(TlsSocketStream)  # no real TLS: only the read loop runs
    stream._sock = fake  # type: ignore[assignment]
    stream._fd = fd
    stream._closed = False
    stream._handshaken = True
    stream._buffer = buffer
    return stream


def _full_socketpair() -> tuple[socket.socket, socket.socket]:
    """A pair whose first socket cannot send until the second reads."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        while True:
            a.send(b"x" * 65536)
    except BlockingIOError:
        pass
    return a, b


async def test_bytes_in_hand_are_returned_before_waiting_to_write() -> None:
    buffer = bytearray(1024)
    blocked, peer = _full_socketpair()
    other, other_peer = socket.socketpair()
    first = _stream(_FakeTls([b"first", ssl.SSLWantWriteError]), blocked.fileno(), buffer)
    second = _stream(_FakeTls([b"SECOND"]), other.fileno(), buffer)
    got: dict[str, bytes] = {}

    async def read_first() -> None:
        got["first"] = await first.receive_some()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_first)
            await trio.testing.wait_all_tasks_blocked()
            # The first stream, if it waits for its socket, waits now: another stream reads.
            got["second"] = await second.receive_some()
            while True:  # let the first stream's socket take data again
                try:
                    peer.recv(1 << 20)
                except BlockingIOError:
                    break
    finally:
        for s in (blocked, peer, other, other_peer):
            s.close()
    assert got == {"first": b"first", "second": b"SECOND"}
