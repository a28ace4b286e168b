"""Every failure a user can cause: one line on stderr, a non-zero exit, nothing half-done.

Real `drive` processes against a real server: bad URL, wrong password, an unknown
certificate (no --trust-fingerprint, stdin not a terminal), a changed certificate (another
server on the same port), the server down, a missing or busy mount point, not logged in.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.server_proc import ServerProcess, drive_command

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse"


def drive(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        drive_command("--home", str(home), *args),
        input=stdin, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def assert_one_line(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode != 0, done.stdout
    assert done.stderr.startswith("drive: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


def login(home: Path, srv: ServerProcess, password: str = PASSWORD, *extra: str):
    return drive(home, "login", srv.url, "--user", "alice", "--password-stdin", *extra,
                 stdin=password + "\n")  # fmt: skip


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("errors") / "data") as server:
        server.add_user("alice", PASSWORD)
        yield server


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("url", "needle"),
    [("http://127.0.0.1:8443", "bad URL"), ("127.0.0.1:8443", "https://HOST"),
     ("https://", "https://HOST"), ("https://no-such-host.invalid:8443", "cannot reach")],
)  # fmt: skip
def test_bad_url(home, url, needle):
    done = drive(home, "login", url, "--user", "alice", "--password-stdin", stdin="pw\n")
    assert_one_line(done, needle)
    assert not (home / "config.json").exists()


def test_wrong_password_writes_nothing(home, srv):
    assert_one_line(login(home, srv, "wrong", "--trust-fingerprint", srv.fingerprint),
                    "wrong user name or password")  # fmt: skip
    assert not (home / "config.json").exists()


def test_unknown_certificate_needs_trust_on_a_pipe(home, srv):
    done = login(home, srv)
    flat = srv.fingerprint.replace(":", "").lower()
    assert_one_line(done, "not trusted", f"--trust-fingerprint {flat}")
    assert not (home / "config.json").exists()


def test_wrong_trust_fingerprint(home, srv):
    assert_one_line(login(home, srv, PASSWORD, "--trust-fingerprint", "ab" * 32), "mismatch")
    assert_one_line(login(home, srv, PASSWORD, "--trust-fingerprint", "xyz"), "64 hex digits")
    assert not (home / "config.json").exists()


def test_server_down(home, srv):
    url = f"https://127.0.0.1:{free_port()}"
    done = drive(home, "login", url, "--user", "alice", "--password-stdin", stdin="pw\n")
    assert_one_line(done, "server down", "connection refused")
    assert not (home / "config.json").exists()


def test_not_logged_in(home, tmp_path):
    for args in (["revisions", "/a"], ["restore", "/a", "1"], ["logout"], ["auth", "token"],
                 ["trash"], ["mount", str(tmp_path)], ["unmount", str(tmp_path)]):  # fmt: skip
        assert_one_line(drive(home, *args), "not logged in", "drive login")


def test_not_found_and_bad_path(home, srv):
    assert login(home, srv, PASSWORD, "--trust-fingerprint", srv.fingerprint).returncode == 0
    assert_one_line(drive(home, "revisions", "/no-such-file"), "not found", "/no-such-file")
    assert_one_line(drive(home, "revisions", "relative/path"), "neither inside a mounted drive")
    assert_one_line(drive(home, "restore", "/no-such-file", "1"), "not found")


def test_mount_point_missing_or_busy(home, srv, tmp_path):
    assert login(home, srv, PASSWORD, "--trust-fingerprint", srv.fingerprint).returncode == 0
    assert_one_line(drive(home, "mount", str(tmp_path / "nope")), "does not exist")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep")
    assert_one_line(drive(home, "mount", str(busy)), "not empty")
    assert_one_line(drive(home, "mount", str(busy / "mine.txt")), "not a directory")
    assert_one_line(drive(home, "unmount", str(busy)), "not mounted")
    assert (busy / "mine.txt").read_text() == "keep"
    assert not os.path.ismount(busy)


def test_server_stopped_and_certificate_changed(tmp_path):
    """A logged-in client whose server is down, then replaced by another on the same port."""
    home = tmp_path / "home"
    with ServerProcess(tmp_path / "first") as first:
        first.add_user("alice", PASSWORD)
        done = login(home, first, PASSWORD, "--trust-fingerprint", first.fingerprint)
        assert done.returncode == 0, done.stderr
        port, pinned = first.port, first.fingerprint
    assert_one_line(drive(home, "revisions", "/a"), "server down", "is the server running?")

    with ServerProcess(tmp_path / "second", listen=f"127.0.0.1:{port}") as second:
        second.add_user("alice", PASSWORD)
        assert second.fingerprint != pinned
        refused = drive(home, "revisions", "/a")
        assert_one_line(refused, "certificate", "changed", "nothing was sent")
        before = (home / "config.json").read_text()
        assert_one_line(login(home, second), "changed since this device logged in")
        assert (home / "config.json").read_text() == before  # still pinned to the first
        ok = login(home, second, PASSWORD, "--trust-fingerprint", second.fingerprint)
        assert ok.returncode == 0, ok.stderr
        assert drive(home, "revisions", "/a").stderr.startswith("drive: not found")


def test_debug_shows_the_traceback(home):
    done = drive(home, "--debug", "revisions", "/a")
    assert done.returncode != 0
    assert "Traceback" in done.stderr
    assert done.stderr.rstrip().splitlines()[-1].startswith("drive: not logged in")


def test_bad_client_settings_are_one_line(home):
    home.mkdir()
    (home / "config.toml").write_text('cache_sise = "1G"\n')
    assert_one_line(drive(home, "revisions", "/a"), "unknown setting 'cache_sise'")
    (home / "config.toml").write_text("cache_size = [\n")
    assert_one_line(drive(home, "revisions", "/a"), "not valid TOML")


def test_server_on_a_busy_port_or_unknown_host_is_one_line(home, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = drive(home, "server", "serve", "--data", str(tmp_path / "busy"),
                     "--listen", f"127.0.0.1:{port}")  # fmt: skip
        assert_one_line(done, f"cannot listen on 127.0.0.1:{port}", "in use")
    assert not (tmp_path / "busy" / "server.json").exists()
    done = drive(home, "server", "serve", "--data", str(tmp_path / "nohost"),
                 "--listen", "no-such-host.invalid:8443")  # fmt: skip
    assert_one_line(done, "cannot listen on no-such-host.invalid:8443")


def test_login_as_another_user_keeps_a_home_with_unsynced_changes(
    shared_server: ServerProcess, tmp_path: Path
) -> None:
    """Switching accounts drops the local state, so it is refused while that state holds a
    change the server refused for now (parked, not in the queue any more)."""
    from syncd.home import Home
    from syncd.queue_ops import Commit
    from syncd.state import StateDB
    from tests.helpers.mount_proc import login_home

    for name in ("swap1", "swap2"):
        shared_server.add_user(name, "pw-" + name)
    home = Home(login_home(shared_server, tmp_path / "home", "swap1", "pw-swap1"))
    st = StateDB(home.state_path)
    try:
        with st.write() as w:
            seq = w.add_op(Commit(5, "/big.iso"))
        with st.write() as w:
            w.park(seq, Commit(5, "/big.iso"), "over quota")
    finally:
        st.close()
    with pytest.raises(RuntimeError, match="not uploaded yet"):
        login_home(shared_server, home.root, "swap2", "pw-swap2")
    st = StateDB(home.state_path)
    try:
        assert [(op.path, why) for _, op, why, _ in st.parked()] == [("/big.iso", "over quota")]
    finally:
        st.close()
