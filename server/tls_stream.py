"""TLS connections where OpenSSL talks to the socket itself, as trio streams.

Why not `trio.SSLStream`: it runs TLS over memory BIOs in Python and hands out at most one
16 KiB TLS record per `receive_some`, so an 8 MiB block upload became 512 trips through
hypercorn, h11 and the ASGI receive queue, and every record was copied twice more in
Python. Here the `ssl.SSLSocket` is non-blocking: OpenSSL reads and writes the kernel socket
directly, trio only waits for readiness, and one `receive_some` drains every record that
has already arrived (up to `max_bytes`). See docs/protocol.md "Transport".

`TlsListener` is a `trio.abc.Listener` that accepts, sets TCP_NODELAY (small answers must not
wait for Nagle's algorithm) and returns a `TlsSocketStream`; the handshake runs on the
connection's own task (`do_handshake`), as hypercorn expects of `trio.SSLStream`.
"""

from __future__ import annotations

import errno
import fcntl
import socket
import ssl
import sys
import termios

import trio

__all__ = ["TlsListener", "TlsSocketStream"]

RECEIVE_BUFFER_BYTES = 1 << 20
"""Largest single `receive_some` answer.

All streams of a listener share one buffer of this size: they all run on the trio thread,
and `receive_some` copies out of it before its first checkpoint after data arrived, so 10,000
idle long polls cost no buffer each."""


class _Transport:
    """What hypercorn reads from `stream.transport_stream`: the socket, for its addresses."""

    __slots__ = ("socket",)

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.socket = sock


class TlsSocketStream(trio.abc.Stream):
    """One server-side TLS connection on a non-blocking `ssl.SSLSocket`.

    Sending and receiving may run concurrently (hypercorn writes answers while it reads the
    next request); each direction is used by one task at a time.
    """

    def __init__(self, raw: socket.socket, context: ssl.SSLContext, buffer: bytearray) -> None:
        raw.setblocking(False)
        self._sock = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        self._fd = self._sock.fileno()
        self._closed = False
        self._handshaken = False
        self._buffer = buffer
        self.transport_stream = _Transport(self._sock)

    # -- what hypercorn uses of trio.SSLStream ----------------------------------------

    async def do_handshake(self) -> None:
        """Complete the TLS handshake; a failure is `trio.BrokenResourceError`.

        A second call returns at once (the server looks at ALPN before hypercorn, which
        calls this again)."""
        while not self._handshaken:
            self._check_open()
            try:
                self._sock.do_handshake()
                break
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(self._fd)
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(self._fd)
            except (ssl.SSLError, OSError) as exc:
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
        self._handshaken = True
        await trio.lowlevel.checkpoint()

    def selected_alpn_protocol(self) -> str | None:
        """The protocol the client and we agreed on (hypercorn picks h11 or h2 by it)."""
        return self._sock.selected_alpn_protocol()

    def fileno(self) -> int:
        """The socket's descriptor (for watching many idle connections on one epoll)."""
        return self._fd

    def send_nowait(self, data: bytes) -> int:
        """Send what the socket takes now, without waiting; the bytes sent (0 when it is full:
        finish with `send_all` from the first unsent byte). Raises `trio.BrokenResourceError`.

        For answers written to thousands of parked connections in one go (`server.parked`)."""
        self._check_open()
        try:
            return self._sock.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0
        except (ssl.SSLError, OSError) as exc:
            raise self._broken(exc) from exc

    def receive_nowait(self) -> bytes | None:
        """The plaintext that has arrived (b"" at the end of the stream), or None when none has
        (a readable socket may carry only TLS records without data). Raises
        `trio.BrokenResourceError`."""
        self._check_open()
        view = memoryview(self._buffer)
        got = 0
        try:
            while got < len(view):
                try:
                    n = self._sock.recv_into(view[got:])
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return bytes(view[:got])
                except (ssl.SSLError, OSError) as exc:
                    raise self._broken(exc) from exc
                if n == 0:
                    return bytes(view[:got])
                got += n
            return bytes(view[:got]) if got else None
        finally:
            view.release()

    def pending(self) -> int:
        """Plaintext bytes OpenSSL has already read and decrypted (no epoll event will say so)."""
        return 0 if self._closed else self._sock.pending()

    def hung_up(self) -> bool:
        """Whether the client closed its side with nothing left to read: no TLS record in
        the kernel's queue nor in OpenSSL's buffer (after an epoll hang-up event). Cheaper than
        learning it from `receive_nowait`, where OpenSSL makes an error of the plain TCP close
        that HTTP clients use."""
        if self._closed or self._sock.pending():
            return False
        queued = fcntl.ioctl(self._fd, termios.FIONREAD, b"\0\0\0\0")
        return int.from_bytes(queued, sys.byteorder) == 0

    def close(self) -> None:
        """Close the connection now (what `aclose` does, for code that cannot wait)."""
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._fd)
            self._sock.close()

    def detach(self) -> ssl.SSLSocket:
        """Hand the socket over for blocking use in a worker thread (`server.bulk_conn`);
        this stream is closed, the caller owns the socket."""
        self._check_open()
        self._closed = True
        self._sock.setblocking(True)
        return self._sock

    # -- trio.abc.Stream ------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send all of `data`, waiting for socket space as needed."""
        view = memoryview(data).cast("B")
        sent = 0
        await trio.lowlevel.checkpoint_if_cancelled()
        while sent < len(view):
            self._check_open()
            try:
                # Without partial writes OpenSSL reports "want write" after queueing some
                # records and expects the same bytes again; with them it returns a count.
                # Retrying from `sent` is right in both cases.
                sent += self._sock.send(view[sent:])
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(self._fd)
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(self._fd)
            except (ssl.SSLError, OSError) as exc:
                raise self._broken(exc) from exc
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        """Return once the socket has room (a hint, as the ABC allows)."""
        self._check_open()
        await trio.lowlevel.wait_writable(self._fd)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to `max_bytes` of plaintext: every record already here, or wait for one.

        Returns b"" at the end of the stream (close_notify or a plain TCP close, which
        HTTP/1.1 framing makes safe, like `trio.SSLStream(https_compatible=True)`).
        """
        limit = min(max_bytes or len(self._buffer), len(self._buffer))
        view = memoryview(self._buffer)
        got = 0
        await trio.lowlevel.checkpoint_if_cancelled()
        while got < limit:
            self._check_open()
            try:
                n = self._sock.recv_into(view[got:limit])
            except ssl.SSLWantReadError:
                if got:
                    break
                await trio.lowlevel.wait_readable(self._fd)
                continue
            except ssl.SSLWantWriteError:
                if got:
                    break  # the bytes in hand first: waiting lets other streams use the buffer
                await trio.lowlevel.wait_writable(self._fd)
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            except (ssl.SSLError, OSError) as exc:
                if got:
                    break  # hand over what arrived; the error comes back on the next call
                raise self._broken(exc) from exc
            if n == 0:
                break
            got += n
        data = bytes(view[:got])
        view.release()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    async def aclose(self) -> None:
        """Close the connection (no close_notify wait: HTTP framing ends our messages)."""
        self.close()
        await trio.lowlevel.checkpoint()

    # -- helpers --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the TLS connection is closed")

    def _broken(self, exc: BaseException) -> Exception:
        if self._closed:
            return trio.ClosedResourceError("the TLS connection is closed")
        return trio.BrokenResourceError(f"TLS connection broke: {exc}")


class TlsListener(trio.abc.Listener[TlsSocketStream]):
    """Accept TCP connections on a listening socket and wrap each in TLS."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self._listen = trio.socket.from_stdlib_socket(sock)
        self._context = context
        self._buffer = bytearray(RECEIVE_BUFFER_BYTES)

    async def accept(self) -> TlsSocketStream:
        """The next connection, TLS not yet negotiated (see `do_handshake`)."""
        while True:
            try:
                conn, _ = await self._listen.accept()
            except OSError as exc:
                # A client that gave up while queued, or a full fd table: keep serving.
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EMFILE, errno.ENFILE,
                                 errno.ENOBUFS, errno.ENOMEM):  # fmt: skip
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        await trio.sleep(0.1)
                    continue
                raise
            raw = socket.socket(conn.family, conn.type, conn.proto, fileno=conn.detach())
            try:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return TlsSocketStream(raw, self._context, self._buffer)
            except OSError:  # ssl.SSLError too: e.g. reset right after sending a few bytes
                raw.close()  # that client is gone; the server must not go with it

    async def aclose(self) -> None:
        """Stop listening."""
        self._listen.close()
        await trio.lowlevel.checkpoint()
