"""`drive server serve`: run hypercorn's trio worker (`server.http_worker`), announce readiness.

Readiness is two lines on stdout (flushed), parsed by tests and `drive up`::

    drive server: certificate fingerprint (SHA-256) AB:CD:...
    drive server: listening on https://127.0.0.1:8443

and `DATA/server.json` (`url`, `fingerprint`, `pid`), removed again on a clean exit.
The listener sets TCP_NODELAY on every accepted connection, so small answers are not held
back by Nagle's algorithm (44 ms per response without it). SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import trio
from hypercorn.config import Config as HyperConfig

from blockstore.wire import BULK_ALPN
from server import private
from server.app import build_app
from server.bulk_conn import BulkConnections
from server.config import ConfigError, load_config
from server.db.schema import SchemaTooNew
from server.db.url import DatabaseUnavailable
from server.gc_tuning import tune_gc
from server.http_head import MAX_HEAD_BYTES
from server.http_worker import bind_sockets, serve_https
from server.locations import LocationError
from server.services import Services
from server.tls import ensure_tls

log = logging.getLogger(__name__)

SERVER_JSON = "server.json"


class ServeError(Exception):
    """The server cannot start (bad address, config or certificate)."""


def _hyper_config(
    listen: str, cert: Path, key: Path, keep_alive: float, backlog: int
) -> HyperConfig:
    cfg = HyperConfig()
    cfg.bind = [listen]
    cfg.certfile = str(cert)
    cfg.keyfile = str(key)
    # The server's order decides: our bulk client offers both and gets BULK_ALPN; everyone
    # else offers no BULK_ALPN and gets http/1.1.
    cfg.alpn_protocols = [BULK_ALPN, "http/1.1"]
    cfg.keep_alive_timeout = keep_alive
    cfg.backlog = backlog
    cfg.graceful_timeout = 5.0
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("hypercorn.error")
    cfg.h11_max_incomplete_size = MAX_HEAD_BYTES  # request line and headers
    return cfg


async def _serve(
    services: Services,
    hyper: HyperConfig,
    sockets: list[socket.socket],
    data_dir: Path,
    on_ready: Callable[[str], object],
) -> None:
    shutdown = trio.Event()
    bulk = BulkConnections(services, hyper.keep_alive_timeout)

    async def wait_shutdown() -> None:
        await shutdown.wait()

    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

            async def on_signal() -> None:
                async for signum in signals:
                    log.info("received signal %d, stopping", signum)
                    shutdown.set()
                    return

            nursery.start_soon(on_signal)
            binds = await nursery.start(
                lambda task_status: serve_https(
                    build_app(services), hyper, sockets, shutdown_trigger=wait_shutdown,
                    bulk=bulk.serve, services=services,
                    task_status=task_status,
                )
            )  # fmt: skip
            url = str(binds[0])
            info = {"url": url, "fingerprint": services.fingerprint, "pid": os.getpid()}
            tmp = data_dir / (SERVER_JSON + ".tmp")
            tmp.write_text(json.dumps(info))
            os.replace(tmp, data_dir / SERVER_JSON)
            sys.stdout.write(
                f"drive server: certificate fingerprint (SHA-256) {services.fingerprint}\n"
                f"drive server: listening on {url}\n"
            )
            sys.stdout.flush()
            on_ready(url)
            background = trio.CancelScope()

            async def run_background() -> None:
                with background:
                    await services.background()

            nursery.start_soon(run_background)
            await shutdown.wait()
            bulk.stop()
            background.cancel()


def run_server(
    data_dir: Path,
    listen: str | None,
    cert: Path | None,
    key: Path | None,
    config_path: Path | None,
    on_ready: Callable[[str], object] = lambda url: None,
) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status.

    `listen` None means the config's `listen`; `on_ready(url)` runs once the server accepts
    connections (the `drive` command tells systemd there).
    """
    faulthandler.enable()
    os.umask(private.UMASK)  # a backstop: what this process creates is private by default
    faulthandler.register(signal.SIGUSR1)
    try:
        config = load_config(config_path, data_dir)
    except ConfigError as exc:
        raise ServeError(str(exc)) from exc
    listen = listen or config.listen
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ServeError(f"--listen must be HOST:PORT, not {listen!r}")
    try:
        private.private_dir(data_dir)
        tls = ensure_tls(data_dir, cert, key)
    except (OSError, ValueError) as exc:
        raise ServeError(f"cannot set up TLS: {exc}") from exc
    hyper = _hyper_config(listen, tls.cert, tls.key, config.keep_alive_seconds, config.backlog)
    try:
        sockets = bind_sockets(hyper)  # before anything opens: a busy port changes nothing
    except OSError as exc:
        raise ServeError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
    try:
        services = Services.open(data_dir, config, tls.fingerprint)
    except (DatabaseUnavailable, SchemaTooNew, LocationError) as exc:
        raise ServeError(str(exc)) from None
    tune_gc()
    try:
        trio.run(_serve, services, hyper, sockets, data_dir, on_ready)
    finally:
        (data_dir / SERVER_JSON).unlink(missing_ok=True)
        services.close()
    return 0
