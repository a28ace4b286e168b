"""systemd's readiness protocol (`Type=notify`), without a dependency.

systemd passes `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace) and waits for a
datagram `READY=1` before it counts the service as started, so units that depend on the server
or the mount start only once it really serves. Outside systemd the variable is absent and
every call is a no-op. Failures to notify are logged, never raised: a service that serves
but cannot tell systemd is better than one that dies.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["notify", "ready", "stopping"]

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send `message` (e.g. `"READY=1\\nSTATUS=serving"`) to `$NOTIFY_SOCKET`; True if sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ["NOTIFY_SOCKET"], exc)
        return False
    return True


def ready(status: str) -> bool:
    """Tell systemd the service is up; `status` is shown by `systemctl status`."""
    return notify(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")


def stopping(status: str) -> bool:
    """Tell systemd the service is shutting down."""
    return notify(f"STOPPING=1\nSTATUS={status}")
