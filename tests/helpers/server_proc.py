"""A real `drive server serve` in a subprocess, for end-to-end tests of any component.

Usage::

    with ServerProcess(tmp_path / "data") as srv:          # starts, waits for readiness
        srv.add_user("alice", "pw")                          # `drive server adduser`
        token = srv.login("alice", "pw", device="laptop")    # POST /api/v1/login
        with srv.client(token) as http:                      # httpx.Client, cert pinned
            http.get("/api/v1/whoami").raise_for_status()
        srv.kill(); srv.restart()                            # SIGKILL, then same port again

`config` (a dict) is written as TOML and passed with `--config` (see server/config.py for
the keys, e.g. `{"rate_burst": 5}`). Under `DRIVE_TEST_DATABASE=postgres` the server's
metadata is a fresh PostgreSQL database (tests/helpers/pg_cluster.py), under
`DRIVE_TEST_BLOCKS=s3` its blocks are in a fresh bucket of moto's S3 server
(tests/helpers/moto_s3.py): a test looks at what is stored through `srv.block_store()`,
whichever it is. The server's stderr goes to `srv.log_path`. Every wait has a deadline;
`stop()` falls back to SIGKILL.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from tests.helpers.moto_s3 import blocks_lines, use_test_blocks
from tests.helpers.pg_cluster import database_line, use_test_database

if TYPE_CHECKING:
    from blockstore.store import BlockStore

READY_SECONDS = 30.0
STOP_SECONDS = 10.0
_FINGERPRINT_PREFIX = "drive server: certificate fingerprint (SHA-256) "
_LISTEN_PREFIX = "drive server: listening on "


def drive_command(*args: str) -> list[str]:
    """The argv that runs the `drive` CLI of this checkout with this interpreter."""
    return [sys.executable, "-bb", "-m", "drive.cli", *args]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


class ServerProcess:
    """One server subprocess over a data directory (see the module docstring)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        config: dict[str, Any] | None = None,
        listen: str = "127.0.0.1:0",
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        use_test_database(self.data_dir)
        use_test_blocks(self.data_dir, config or ())
        self.listen = listen
        self.env = env
        self.config_path: Path | None = None
        if config:
            self.config_path = self.data_dir.parent / f"{self.data_dir.name}-server.toml"
            self.config_path.write_text(
                "".join(f"{k} = {toml_value(v)}\n" for k, v in config.items())
                + ("" if "database" in config else database_line(self.data_dir))
                + blocks_lines(self.data_dir, config)
            )
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.fingerprint = ""
        self.port = 0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = READY_SECONDS) -> ServerProcess:
        """Start the server and wait for its two readiness lines."""
        args = ["server", "serve", "--data", str(self.data_dir), "--listen", self.listen]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        env = {**os.environ, **(self.env or {})}
        log = open(self.log_path, "ab")  # noqa: SIM115  # handed to the child
        try:
            self.proc = subprocess.Popen(
                drive_command(*args), stdout=subprocess.PIPE, stderr=log, env=env
            )
        finally:
            log.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while _LISTEN_PREFIX.encode() not in buf or not buf.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    self._fail(f"server not ready within {timeout} s; stdout so far: {buf!r}")
                if sel.select(min(left, 0.5)):
                    chunk = os.read(self.proc.stdout.fileno(), 4096)
                    if not chunk:
                        self._fail(f"server exited before it was ready; stdout: {buf!r}")
                    buf += chunk
        for line in buf.decode().splitlines():
            if line.startswith(_FINGERPRINT_PREFIX):
                self.fingerprint = line[len(_FINGERPRINT_PREFIX) :].strip()
            elif line.startswith(_LISTEN_PREFIX):
                self.url = line[len(_LISTEN_PREFIX) :].strip()
        self.port = int(self.url.rsplit(":", 1)[1])
        self.listen = f"127.0.0.1:{self.port}"  # a restart keeps the port clients know
        return self

    def _fail(self, message: str) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_SECONDS)
        raise RuntimeError(f"{message}\n--- server log ---\n{self.log_text()[-4000:]}")

    def log_text(self) -> str:
        """Everything the server wrote on stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the server (a crash: nothing is cleaned up)."""
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(STOP_SECONDS)
        self._close_pipe()

    def stop(self, timeout: float = STOP_SECONDS) -> int | None:
        """SIGTERM and wait (SIGKILL after `timeout`); returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_SECONDS)
        self._close_pipe()
        return self.proc.returncode

    def restart(self, timeout: float = READY_SECONDS) -> ServerProcess:
        """Stop (if running) and start again on the same port and data directory."""
        self.stop()
        return self.start(timeout)

    def _close_pipe(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self.start() if not self.running() else self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def block_store(self) -> BlockStore:
        """The store the server keeps its blocks in (a directory or a bucket, as its config
        says): what tests count, read or corrupt, on either backend."""
        from server.config import load_config
        from server.locations import Locations, open_block_store

        config = load_config(self.config_path, self.data_dir)
        return open_block_store(Locations.from_config(config, self.data_dir).blocks)

    # -- administration ---------------------------------------------------------------------

    def admin(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `drive server ARGS --data DATA` and return the finished process."""
        return subprocess.run(
            drive_command("server", *args, "--data", str(self.data_dir)),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def add_user(self, name: str, password: str, quota: str | None = None) -> None:
        """Create a user (works while the server runs)."""
        extra = ["--quota", quota] if quota else []
        done = self.admin("adduser", name, "--password-stdin", *extra, stdin=password + "\n")
        if done.returncode != 0:
            raise RuntimeError(f"adduser {name} failed: {done.stderr.strip()}")

    # -- clients -------------------------------------------------------------------------------

    @property
    def cert_path(self) -> Path:
        """The self-signed certificate clients pin."""
        return self.data_dir / "tls" / "cert.pem"

    def ssl_context(self) -> ssl.SSLContext:
        """An SSL context that trusts exactly this server's certificate."""
        return ssl.create_default_context(cafile=str(self.cert_path))

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        """A synchronous httpx client for this server (cert pinned, bearer token if given)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        kwargs.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.url, verify=self.ssl_context(), headers=headers, **kwargs)

    def async_client(self, token: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        """An httpx.AsyncClient (works under trio) for this server."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        kwargs.setdefault("timeout", 30.0)
        return httpx.AsyncClient(
            base_url=self.url, verify=self.ssl_context(), headers=headers, **kwargs
        )

    def login(self, user: str, password: str, device: str = "test-device") -> str:
        """Log a device in and return its bearer token."""
        with self.client() as http:
            r = http.post(
                "/api/v1/login", json={"user": user, "password": password, "device": device}
            )
            r.raise_for_status()
            token: str = r.json()["token"]
            return token
