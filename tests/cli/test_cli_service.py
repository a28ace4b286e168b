"""Running as a service: the generated units, and readiness (READY=1) from server and mount.

systemd is not PID 1 here, so units are checked by content and `systemd-analyze verify`, and
readiness by running the real command with a NOTIFY_SOCKET this test binds.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from drive import sdnotify, service
from tests.helpers.mount_proc import drive, login_home
from tests.helpers.server_proc import ServerProcess, drive_command

READY_SECONDS = 30.0


def bind_notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    return sock


def wait_ready(sock: socket.socket, proc: subprocess.Popen[bytes]) -> str:
    """Collect datagrams until one says READY=1; fail if the process dies first."""
    deadline = time.monotonic() + READY_SECONDS
    got = []
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            assert proc.poll() is None, f"exited with {proc.returncode} before READY=1"
            continue
        if "READY=1" in got[-1].splitlines():
            return got[-1]
    raise AssertionError(f"no READY=1 within {READY_SECONDS}s; got {got}")


def test_notify_is_a_noop_outside_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready("x") is False


def test_notify_abstract_socket(monkeypatch):
    name = f"drive-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready("serving") is True
        assert sock.recv(4096).decode().startswith("READY=1\nSTATUS=serving\n")


@pytest.mark.parametrize("path", ["/home/alice/Drive", "/mnt/my drive/x-y", "/", "/srv/.hidden/ü"])
def test_escape_matches_systemd_escape(path):
    tool = shutil.which("systemd-escape")
    if tool is None:
        pytest.fail(
            "systemd-escape is missing (install systemd) : the escape is checked against it"
        )
    want = subprocess.run([tool, "--path", path], capture_output=True, text=True, check=True)
    assert service.systemd_escape_path(Path(path)) == want.stdout.strip()


def test_server_unit_content(tmp_path):
    text = service.server_unit(tmp_path / "my data", "127.0.0.1:9443")
    assert "Type=notify\n" in text
    assert "NotifyAccess=main\n" in text
    assert "WantedBy=default.target\n" in text
    exec_line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    assert exec_line.endswith(f'server serve --data "{tmp_path}/my data" --listen 127.0.0.1:9443')


def test_units_are_written_and_verify(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.json").write_text("{}")  # logged in, as far as the installer checks
    units = tmp_path / "units"
    data = tmp_path / "data"
    done = drive(home, "service", "server", "--data", str(data), "--unit-dir", str(units))
    assert done.returncode == 0, done.stderr
    assert "systemctl --user enable --now drive-server.service" in done.stdout
    mnt = tmp_path / "Drive"
    done = drive(home, "service", "mount", str(mnt), "--unit-dir", str(units))
    assert done.returncode == 0, done.stderr
    name = service.mount_unit_name(mnt)
    mount_text = (units / name).read_text()
    assert f"--home {home} mount {mnt} --foreground" in mount_text
    assert "After=network-online.target drive-server.service" in mount_text
    assert mnt.is_dir()
    printed = drive(home, "service", "mount", str(mnt), "--print").stdout
    assert printed == mount_text
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: the units are verified with it")
    for unit in ("drive-server.service", name):
        check = subprocess.run([analyze, "verify", str(units / unit)], capture_output=True,
                               text=True, check=False)  # fmt: skip
        assert check.returncode == 0, check.stderr
        assert check.stderr == "", check.stderr


def test_mount_unit_needs_a_login(tmp_path):
    done = drive(tmp_path / "home", "service", "mount", str(tmp_path / "mnt"), "--print")
    assert done.returncode != 0
    assert "not logged in" in done.stderr


@pytest.mark.e2e
def test_server_says_ready_once_listening(tmp_path):
    sock = bind_notify_socket(tmp_path / "notify")
    cfg = tmp_path / "server.toml"
    cfg.write_text('listen = "127.0.0.1:0"\n')
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115  # closed below
    proc = subprocess.Popen(
        drive_command("server", "serve", "--data", str(tmp_path / "data"), "--config", str(cfg)),
        stdout=log, stderr=log, env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")},
    )  # fmt: skip
    try:
        message = wait_ready(sock, proc)
        assert "STATUS=listening on https://127.0.0.1:" in message
        url = message.split("listening on ")[1].splitlines()[0]
        host, port = url.removeprefix("https://").split(":")
        with socket.create_connection((host, int(port)), timeout=5):
            pass  # READY=1 came once the socket accepts
        proc.terminate()
        assert proc.wait(15) == 0
        assert "STOPPING=1" in sock.recv(4096).decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(15)
        log.close()
        sock.close()


@pytest.mark.e2e
def test_mount_says_ready_once_mounted(tmp_path):
    with ServerProcess(tmp_path / "data") as srv:
        srv.add_user("alice", "pw")
        home = login_home(srv, tmp_path / "home", "alice", "pw")
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        sock = bind_notify_socket(tmp_path / "notify")
        log = open(tmp_path / "mount.log", "wb")  # noqa: SIM115  # closed below
        proc = subprocess.Popen(
            drive_command("--home", str(home), "mount", str(mnt), "--foreground"),
            stdout=log, stderr=log,
            env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")},
        )  # fmt: skip
        try:
            message = wait_ready(sock, proc)
            assert f"STATUS=mounted at {mnt}" in message
            assert os.path.ismount(mnt)
            (mnt / "a.txt").write_text("ready")
            proc.terminate()  # what systemd does on stop: unmount and exit cleanly
            assert proc.wait(30) == 0
            assert not os.path.ismount(mnt)
        finally:
            if os.path.ismount(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
            if proc.poll() is None:
                proc.kill()
                proc.wait(15)
            log.close()
            sock.close()
