"""The scale-out shape on one machine: PostgreSQL, an S3 endpoint, API servers and nginx.

Used by `scripts/scaleout-demo` and by the scale-out tests (tests/scaleout/), so both run
the same thing::

    with MotoS3() as s3, ScaleoutStack(base, s3.endpoint, s3.new_bucket()) as stack:
        stack.add_user("alice", "pw")
        stack.balancer.url, stack.balancer.fingerprint      # what clients log in to
        stack.servers[0].kill(); stack.servers[0].start()   # one API server dies, comes back
        stack.pg.restart()                                  # PostgreSQL restarts

The PostgreSQL cluster is a throwaway one of its own (tests/helpers/pg_cluster.py), one
master key file is shared by the API servers, each API server has its own data directory
(its TLS certificate and spool files) with a `server.toml` naming the shared database and
bucket, and nginx runs `deploy/nginx-drive.conf` with the upstream servers, the listen
address and the certificate paths filled in, as an unprivileged-style child process
(`daemon off`, everything under `base/nginx`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

from blockstore.keys import MasterKey
from server.tls import ensure_tls
from tests.helpers.moto_s3 import CREDENTIALS, REGION, free_port
from tests.helpers.pg_cluster import Cluster, start_cluster
from tests.helpers.server_proc import ServerProcess, toml_value

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "nginx-drive.conf"
READY_SECONDS = 30.0
_SERVERS = re.compile(r"(# servers: begin[^\n]*\n)(.*?)(\s*# servers: end)", re.S)


@dataclass(frozen=True, slots=True)
class Balancer:
    """What a client logs in to: the balancer's URL and its certificate."""

    url: str
    fingerprint: str
    cert_path: Path

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts exactly the balancer's certificate (what `drive login` pins)."""
        return ssl.create_default_context(cafile=str(self.cert_path))

    def client(self, token: str | None = None, **kwargs: object) -> httpx.Client:
        """An httpx client through the balancer (bearer token if given)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(
            base_url=self.url, verify=self.ssl_context(), headers=headers, timeout=30.0,
            **kwargs,  # type: ignore[arg-type]  # httpx's keyword arguments
        )  # fmt: skip


def nginx_binary() -> str:
    """Debian's nginx (scripts/bootstrap.sh installs it)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if found is None:
        raise RuntimeError("nginx not found: run scripts/bootstrap.sh (Debian's nginx)")
    return found


def render_site(template: str, upstreams: list[str], listen: str, cert: Path, key: Path) -> str:
    """`deploy/nginx-drive.conf` with this deployment's servers, address and certificate."""
    lines = "".join(f"    server {u} max_fails=2 fail_timeout=10s;\n" for u in upstreams)
    text, n = _SERVERS.subn(lambda m: m.group(1) + lines.rstrip("\n"), template)
    if n != 1:
        raise ValueError("the nginx template lost its '# servers: begin/end' lines")
    text = re.sub(r"listen 443 ssl;", f"listen {listen} ssl;", text, count=1)
    text = text.replace("/etc/drive/balancer/cert.pem", str(cert))
    return text.replace("/etc/drive/balancer/key.pem", str(key))


class Nginx:
    """nginx in the foreground under `prefix`, serving the rendered template."""

    def __init__(self, prefix: Path, site: str) -> None:
        self.prefix = prefix
        self.proc: subprocess.Popen[bytes] | None = None
        for sub in ("tmp", "logs"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        (prefix / "drive.conf").write_text(site)
        temp = "".join(
            f"    {kind}_temp_path {prefix}/tmp/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        user = "user root;\n" if os.geteuid() == 0 else ""
        (prefix / "nginx.conf").write_text(
            f"{user}worker_processes 1;\npid {prefix}/nginx.pid;\ndaemon off;\n"
            f"error_log {prefix}/logs/error.log warn;\n"
            "events { worker_connections 4096; }\n"
            "http {\n"
            "    log_format up '$remote_addr $request_method $uri $status $upstream_addr';\n"
            f"    access_log {prefix}/logs/access.log up;\n{temp}"
            f"    include {prefix}/drive.conf;\n}}\n"
        )

    def start(self, port: int) -> None:
        """Start and wait until the port accepts TLS."""
        argv = [nginx_binary(), "-p", str(self.prefix), "-e", str(self.prefix / "logs/error.log"),
                "-c", str(self.prefix / "nginx.conf")]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + READY_SECONDS
        while not self._listening(port):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err}{self.error_log()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx not listening after {READY_SECONDS} s")
            time.sleep(0.05)

    def _listening(self, port: int) -> bool:
        """True once this nginx wrote its pid file (it has bound its ports) and the port
        accepts connections (not another process's: the pid must be ours)."""
        assert self.proc is not None
        try:
            if int((self.prefix / "nginx.pid").read_text()) != self.proc.pid:
                return False
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except (OSError, ValueError):
            return False
        return True

    def error_log(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return (self.prefix / "logs/error.log").read_text(errors="replace")
        return ""

    def access_log(self) -> list[str]:
        """One line per request: address, method, path, status, the upstream that served it."""
        with contextlib.suppress(FileNotFoundError):
            return (self.prefix / "logs/access.log").read_text().splitlines()
        return []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


class ScaleoutStack:
    """PostgreSQL + API servers + nginx over an S3 bucket (see the module docstring)."""

    def __init__(
        self,
        base: Path,
        s3_endpoint: str,
        bucket: str,
        *,
        servers: int = 2,
        listen_port: int = 0,
        config: dict[str, object] | None = None,
    ) -> None:
        self.base = base
        self.s3_endpoint = s3_endpoint
        self.bucket = bucket
        self.count = servers
        self.port = listen_port or free_port()
        self.extra = config or {}
        self.pg: Cluster | None = None
        self.servers: list[ServerProcess] = []
        self.nginx: Nginx | None = None
        self.balancer: Balancer | None = None
        self.database_url = ""

    def server_toml(self) -> str:
        """The `server.toml` every API server reads (the shared state)."""
        assert self.pg is not None
        values: dict[str, object] = {
            "database": self.database_url,
            "blocks": f"s3://{self.bucket}/drive",
            "s3_endpoint": self.s3_endpoint,
            "s3_region": REGION,
            "s3_access_key_id": CREDENTIALS["access_key_id"],
            "s3_secret_access_key": CREDENTIALS["secret_access_key"],
            "master_key_file": str(self.base / "master.key"),
            "trusted_proxies": "127.0.0.1",  # nginx: its X-Forwarded-For names the client
            **self.extra,
        }
        return "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())

    def start(self) -> ScaleoutStack:
        self.base.mkdir(parents=True, exist_ok=True)
        self.pg = start_cluster()
        self.database_url = self.pg.create_database()
        MasterKey.load_or_create(self.base / "master.key")
        toml = self.server_toml()
        for i in range(self.count):
            data = self.base / f"api{i + 1}"
            data.mkdir(parents=True, exist_ok=True)
            (data / "server.toml").write_text(toml)
            self.servers.append(ServerProcess(data).start())
        tls = ensure_tls(self.base / "balancer")
        site = render_site(
            TEMPLATE.read_text(), [f"127.0.0.1:{s.port}" for s in self.servers],
            f"127.0.0.1:{self.port}", tls.cert, tls.key,
        )  # fmt: skip
        self.nginx = Nginx(self.base / "nginx", site)
        self.nginx.start(self.port)
        self.balancer = Balancer(f"https://127.0.0.1:{self.port}", tls.fingerprint, tls.cert)
        return self

    def add_user(self, name: str, password: str) -> None:
        """`drive server adduser` against the shared database (through any server's DATA)."""
        self.servers[0].add_user(name, password)

    def stop(self) -> None:
        """Stop everything that started (nginx first, PostgreSQL last)."""
        if self.nginx is not None:
            self.nginx.stop()
        for srv in self.servers:
            srv.stop()
        if self.pg is not None:
            self.pg.stop()

    def __enter__(self) -> ScaleoutStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
