"""PostgreSQL metadata: two API servers on one database, and the one-line refusals of a
database that cannot be used. These start the test cluster themselves (in either pass)."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from tests.helpers import pg_cluster
from tests.helpers.server_proc import ServerProcess, drive_command

pytestmark = pytest.mark.e2e


def _serve_fails(data: Path, toml: str, env: dict[str, str] | None = None) -> str:
    """Start `drive server serve` on a data directory with this server.toml; it must exit
    non-zero with one line on stderr (no traceback). Returns that line."""
    data.mkdir(parents=True, exist_ok=True)
    (data / "server.toml").write_text(toml)
    done = subprocess.run(
        drive_command("server", "serve", "--data", str(data), "--listen", "127.0.0.1:0"),
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    admin = subprocess.run(
        drive_command("server", "list-users", "--data", str(data)),
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert admin.returncode != 0
    assert admin.stderr.count("\n") == 1, admin.stderr
    return done.stderr


def test_two_servers_on_one_database_give_one_winner_per_revision(tmp_path: Path) -> None:
    """Both servers commit a new revision of the same file from the same base at once,
    round after round: exactly one commit wins (200) and the other gets 409 each time."""
    url = pg_cluster.cluster().create_database()
    for name, extra in (("a", ""), ("b", f'master_key_file = "{tmp_path}/a/master.key"\n')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "server.toml").write_text(f'database = "{url}"\n{extra}')
    first = ServerProcess(tmp_path / "a")
    with first:
        second = ServerProcess(tmp_path / "b")
        with second:
            first.add_user("race", "pw")
            token = first.login("race", "pw")
            with first.client(token) as a, second.client(token) as b:
                body = {"path": "/f", "base_rev": None, "blocks": [], "size": 0,
                        "mtime_ns": 1, "mode": 0o600}  # fmt: skip
                rev = a.post("/api/v1/commit", json=body).json()["rev"]
                for round_ in range(15):
                    statuses: list[int] = []
                    start = threading.Barrier(2)

                    def commit(http, name, base=rev, n=round_, out=statuses, go=start):
                        go.wait()
                        answer = http.post(
                            "/api/v1/commit",
                            json={**body, "base_rev": base, "mtime_ns": 10 * n + len(name)},
                        )
                        out.append(answer.status_code)

                    threads = [
                        threading.Thread(target=commit, args=(http, name))
                        for http, name in ((a, "a"), (b, "bb"))
                    ]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join(60)
                    assert sorted(statuses) == [200, 409], (round_, statuses)
                    rev = b.get("/api/v1/meta", params={"path": "/f"}).json()["rev"]
                assert rev == 16


def test_admin_commands_use_the_configured_database(tmp_path: Path) -> None:
    """`drive server adduser --data DIR` writes where DIR's server.toml points; the password
    may come from PGPASSWORD instead of the URL."""
    cluster = pg_cluster.cluster()
    url = cluster.create_database()
    bare = url.replace(f":{pg_cluster.PASSWORD}@", "@")
    data = tmp_path / "data"
    data.mkdir()
    (data / "server.toml").write_text(f'database = "{bare}"\n')
    env = {**os.environ, "PGPASSWORD": pg_cluster.PASSWORD}
    added = subprocess.run(
        drive_command("server", "adduser", "carol", "--password-stdin", "--data", str(data)),
        input="pw\n", capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert not (data / "drive.db").exists()
    import psycopg

    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT name FROM users").fetchall() == [("carol",)]


def test_bad_password_is_one_line_without_the_password(tmp_path: Path) -> None:
    url = pg_cluster.cluster().create_database().replace(pg_cluster.PASSWORD, "wrong-secret")
    line = _serve_fails(tmp_path / "data", f'database = "{url}"\n')
    assert line.startswith("drive: cannot use database postgresql://postgres:***@127.0.0.1:")
    assert "password authentication failed" in line
    assert "wrong-secret" not in line


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    port = pg_cluster._free_port()
    line = _serve_fails(tmp_path / "data", f'database = "postgresql://u@127.0.0.1:{port}/x"\n')
    assert line.startswith(f"drive: cannot use database postgresql://u@127.0.0.1:{port}/x: ")


def test_missing_database_is_one_line(tmp_path: Path) -> None:
    url = pg_cluster.cluster().url("no_such_db")
    line = _serve_fails(tmp_path / "data", f'database = "{url}"\n')
    assert '"no_such_db" does not exist' in line


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ('database = "mysql://x@y/z"\n', "unknown scheme 'mysql'"),
        ('database = "postgresql://u@h/d?bogus=1"\n', "not a valid PostgreSQL URL"),
        ('database = "drive.db"\n', "is not a URL"),
        ('blocks = "s3://No_Such/x"\n', "not a valid bucket name"),
        ('s3_region = "eu-west-1"\n', "need blocks or archive = 's3://...'"),
        ('archive = "GLACIER_IR"\n', "a storage class needs blocks = 's3://...'"),
        ('archive = "COLD"\n', "not an S3 storage class"),
        ('archive = "blocks"\n', "is where the blocks are"),
        ('master_key_file = "/nonexistent/master.key"\n', "does not exist"),
    ],
)
def test_bad_storage_settings_are_one_line(tmp_path: Path, toml: str, says: str) -> None:
    assert says in _serve_fails(tmp_path / "data", toml)


def test_a_deadlocked_transaction_is_run_again(tmp_path: Path) -> None:
    """Two transactions lock two rows in opposite orders: PostgreSQL aborts one of them
    (DeadlockDetected), the data layer runs it again, and both changes land."""
    from server.db import Database, write_txn
    from server.db.conn import Conn
    from server.db.url import parse_database_url

    db = Database(parse_database_url(pg_cluster.cluster().create_database(), tmp_path), 2)
    db.call(lambda c: c.execute("CREATE TABLE pair (id INTEGER PRIMARY KEY, v INTEGER)"))
    db.call(lambda c: c.execute("INSERT INTO pair VALUES (1, 0), (2, 0)"))
    both_hold_one = threading.Barrier(2)
    attempts = {1: 0, 2: 0}

    def bump(conn: Conn, first: int) -> None:
        attempts[first] += 1
        with write_txn(conn):
            conn.execute("UPDATE pair SET v = v + 1 WHERE id = ?", (first,))
            if attempts[first] == 1:
                both_hold_one.wait(30)  # each holds its first row: the next lock deadlocks
            conn.execute("UPDATE pair SET v = v + 1 WHERE id = ?", (3 - first,))

    errors: list[Exception] = []

    def run(first: int) -> None:
        try:
            db.call(bump, first)
        except Exception as exc:  # noqa: BLE001  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == [], errors
        assert sorted(attempts.values()) == [1, 2]  # one of them was aborted and ran again
        rows = db.call(lambda c: c.execute("SELECT v FROM pair ORDER BY id").fetchall())
        assert [r[0] for r in rows] == [2, 2]
    finally:
        db.close()


def test_a_retry_never_repeats_a_committed_transaction(tmp_path: Path) -> None:
    """A call that committed one transaction and then deadlocked in its second is not run
    again (the first would be done twice): the error reaches the caller."""
    from psycopg import errors as pg_errors

    from server.db import Database, write_txn
    from server.db.conn import Conn
    from server.db.url import parse_database_url

    db = Database(parse_database_url(pg_cluster.cluster().create_database(), tmp_path), 1)
    db.call(lambda c: c.execute("CREATE TABLE n (v INTEGER)"))
    calls: list[int] = []

    def twice(conn: Conn, fail_after_commit: bool) -> None:
        calls.append(1)
        with write_txn(conn):
            conn.execute("INSERT INTO n VALUES (1)")
        if fail_after_commit or len(calls) == 1:
            raise pg_errors.DeadlockDetected("simulated")

    try:
        with pytest.raises(pg_errors.DeadlockDetected):
            db.call(twice, True)
        assert len(calls) == 1
        assert db.call(lambda c: c.execute("SELECT count(*) FROM n").fetchone()[0]) == 1
    finally:
        db.close()
