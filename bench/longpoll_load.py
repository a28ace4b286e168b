"""Load generator: hold N idle long polls over real TLS connections, in a process of its own.

Run by `bench/server_bench.py` (and `bench/scaleout_bench.py`), not by hand:
`python bench/longpoll_load.py URLS CAFILES TOKEN CURSOR N` (URLS and CAFILES comma-separated).
It raises RLIMIT_NOFILE, opens N connections (round-robin over the URLs), handshakes, sends one
`GET /api/v1/longpoll` on each and prints `ready` once every request is sent. It then
waits for the answers and prints one JSON line: how many were answered 200, and the
CLOCK_MONOTONIC times (shared by all processes of the machine) of the first and last
complete answer, so the caller can time them against its own commit.

Why a raw epoll loop on non-blocking `ssl` sockets: a trio or httpx client costs more CPU per
connection than the server does, and on two cores that would be what the wake time measures.
"""

from __future__ import annotations

import json
import resource
import selectors
import socket
import ssl
import sys
import time
from urllib.parse import urlsplit

HANDSHAKES_IN_FLIGHT = 200
ANSWER_DEADLINE_SECONDS = 300.0


def raise_nofile() -> None:
    """Allow as many descriptors as the hard limit lets this process have."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Poll:
    """One connection: connect, handshake, send the request, read one answer."""

    __slots__ = ("done", "got", "request", "sent", "sock", "status")

    def __init__(self, sock: ssl.SSLSocket, request: bytes) -> None:
        self.sock = sock
        self.request = request
        self.sent = False
        self.got = b""
        self.done = False
        self.status = 0

    def step(self) -> int:
        """Advance as far as the socket allows; the selector events to wait for next."""
        try:
            if not self.sent:
                self.sock.do_handshake()
                self.sock.sendall(self.request)
                self.sent = True
            while not self.done:
                chunk = self.sock.recv(65536)
                if not chunk:
                    self.done = True
                    break
                self.got += chunk
                self.done = _complete(self.got)
        except ssl.SSLWantReadError:
            return selectors.EVENT_READ
        except ssl.SSLWantWriteError:
            return selectors.EVENT_WRITE
        except OSError:
            self.done = True
        if self.done:
            head = self.got.split(b"\r\n", 1)[0].split()
            self.status = int(head[1]) if len(head) > 1 and head[1].isdigit() else 0
        return 0


def _complete(data: bytes) -> bool:
    """True once `data` holds a whole HTTP/1.1 answer with a Content-Length body."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


def run(urls: list[str], cafiles: list[str], token: str, cursor: str, n: int) -> dict[str, object]:
    """Hold `n` long polls; return the answer times (see the module docstring)."""
    raise_nofile()
    # One context per server: self-signed certificates with the same name in one store
    # would be taken for each other.
    contexts = [ssl.create_default_context(cafile=cafile) for cafile in cafiles]
    for ctx in contexts:
        ctx.set_alpn_protocols(["http/1.1"])
    targets = [urlsplit(u) for u in urls]
    sel = selectors.EpollSelector()
    polls: list[Poll] = []
    pending = 0
    opened = 0
    answered_at: list[float] = []
    statuses: dict[int, int] = {}
    ready = False
    deadline = time.monotonic() + ANSWER_DEADLINE_SECONDS
    while len(answered_at) < n and time.monotonic() < deadline:
        while opened < n and pending < HANDSHAKES_IN_FLIGHT:
            t, ctx = targets[opened % len(targets)], contexts[opened % len(targets)]
            host, port = t.hostname or "127.0.0.1", t.port or 443
            raw = socket.create_connection((host, port))
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.setblocking(False)
            sock = ctx.wrap_socket(raw, server_hostname=host, do_handshake_on_connect=False)
            request = (
                f"GET /api/v1/longpoll?cursor={cursor}&timeout=480 HTTP/1.1\r\n"
                f"Host: {host}\r\nAuthorization: Bearer {token}\r\n\r\n"
            ).encode()
            poll = Poll(sock, request)
            polls.append(poll)
            sel.register(sock, selectors.EVENT_WRITE, poll)
            opened += 1
            pending += 1
        if not ready and opened == n and pending == 0:
            print("ready", flush=True)
            ready = True
        for key, _ in sel.select(timeout=1.0):
            poll = key.data
            was_sent = poll.sent
            want = poll.step()
            if not was_sent and (poll.sent or poll.done):
                pending -= 1  # handshake over (or failed)
            if poll.done:
                sel.unregister(poll.sock)
                answered_at.append(time.monotonic())
                statuses[poll.status] = statuses.get(poll.status, 0) + 1
                poll.sock.close()
            elif want:
                sel.modify(poll.sock, want, poll)
    return {
        "answered": len(answered_at),
        "statuses": statuses,
        "first": min(answered_at, default=0.0),
        "last": max(answered_at, default=0.0),
    }


def main() -> None:
    urls, cafiles, token, cursor, n = sys.argv[1:6]
    result = run(urls.split(","), cafiles.split(","), token, cursor, int(n))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
