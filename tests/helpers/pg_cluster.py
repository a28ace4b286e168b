"""A throwaway PostgreSQL cluster for the tests, and the switch that puts servers on it.

`DRIVE_TEST_DATABASE=postgres` runs every server the tests start (`ServerProcess`, and the
in-process tests that call `use_test_database`) on PostgreSQL instead of SQLite: each data
directory gets a fresh database of one cluster, named in its `server.toml`.

The cluster is Debian's `postgresql` binaries (`/usr/lib/postgresql/*/bin`): `initdb` into a
temporary directory, `pg_ctl start` on a free 127.0.0.1 port with its unix socket in that
directory, fsync off (a test cluster need not survive a crash). PostgreSQL refuses to run
as root, so as root the cluster belongs to the `postgres` user the package creates (else
`nobody`). Password authentication over TCP, so the tests also cover URLs with passwords.
The session's cluster starts on first use and stops when the test session ends
(`stop_cluster`); `start_cluster` makes one of its own (scripts/scaleout-demo, the
scale-out tests); `restart` restarts one in place (tests of reconnection).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "DRIVE_TEST_DATABASE"
SUPERUSER = "postgres"
PASSWORD = "drive-test-pw"
_numbers = itertools.count(1)


def wanted() -> bool:
    """True when this test run puts its servers on PostgreSQL."""
    return os.environ.get(ENV, "sqlite") == "postgres"


def pg_bin(name: str) -> str:
    """A PostgreSQL server binary (they are not on PATH in Debian)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} not found: install Debian's postgresql")
    return found[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _owner() -> pwd.struct_passwd | None:
    """Who runs the cluster: None (this user) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("no unprivileged user to run PostgreSQL as")


@dataclass
class Cluster:
    """A running cluster (see the module docstring)."""

    base: Path
    port: int
    owner: pwd.struct_passwd | None

    @property
    def data(self) -> Path:
        return self.base / "data"

    def _run(self, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        if self.owner is not None:
            kw.update(user=self.owner.pw_uid, group=self.owner.pw_gid, extra_groups=[])
        return subprocess.run(
            argv, capture_output=True, text=True, check=True, cwd=self.base, timeout=120, **kw
        )

    def url(self, dbname: str, password: str | None = PASSWORD) -> str:
        """A URL of a database of this cluster (the password in it, unless None)."""
        auth = SUPERUSER if password is None else f"{SUPERUSER}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        pwfile = self.base / "pw"
        pwfile.write_text(PASSWORD + "\n")
        self._own(pwfile)
        self._run(
            pg_bin("initdb"), "-D", str(self.data), "-U", SUPERUSER, "--pwfile", str(pwfile),
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
        )  # fmt: skip
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.base}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=400 -c shared_buffers=32MB"
        )
        self._run(
            pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.base / "log"), "-w",
            "-t", "60", "-o", opts, "start",
        )  # fmt: skip

    def restart(self) -> None:
        """Restart the server (`pg_ctl restart -m fast`: every connection is closed), on the
        same port and options; returns once it accepts connections again."""
        self._run(
            pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.base / "log"), "-m", "fast",
            "-w", "-t", "60", "restart",
        )  # fmt: skip

    def _own(self, path: Path) -> None:
        if self.owner is not None:
            os.chown(path, self.owner.pw_uid, self.owner.pw_gid)

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = f"drive_{os.getpid()}_{next(_numbers)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)


_cluster: Cluster | None = None


def start_cluster() -> Cluster:
    """A new cluster in a fresh temporary directory, started (stop it with `stop()`)."""
    owner = _owner()
    base = Path(tempfile.mkdtemp(prefix="drive-test-pg-"))
    os.chmod(base, 0o755)
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    made = Cluster(base, _free_port(), owner)
    try:
        made.start()
    except subprocess.CalledProcessError as exc:
        log = (base / "log").read_text() if (base / "log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"test PostgreSQL did not start: {exc.stderr}\n{log}") from exc
    return made


def cluster() -> Cluster:
    """The session's cluster, started on first use."""
    global _cluster
    if _cluster is None:
        _cluster = start_cluster()
    return _cluster


def stop_cluster() -> None:
    """Stop the cluster if one was started (end of the test session)."""
    global _cluster
    if _cluster is not None:
        _cluster.stop()
        _cluster = None


def use_test_database(data_dir: Path) -> None:
    """Under `DRIVE_TEST_DATABASE=postgres`, point `data_dir`'s server.toml at a fresh
    database (kept when it names one already); otherwise leave SQLite, the default."""
    if not wanted():
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    toml = data_dir / "server.toml"
    text = toml.read_text() if toml.exists() else ""
    if any(line.startswith("database") for line in text.splitlines()):
        return
    toml.write_text(text + f'database = "{cluster().create_database()}"\n')


def database_line(data_dir: Path) -> str:
    """The `database = ...` line of `data_dir`'s server.toml ("" if none)."""
    toml = data_dir / "server.toml"
    if not toml.exists():
        return ""
    lines = [ln for ln in toml.read_text().splitlines() if ln.startswith("database")]
    return lines[0] + "\n" if lines else ""
