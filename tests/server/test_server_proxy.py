"""Behind a load balancer: login attempts are counted per client address, which only the
balancer's `X-Forwarded-For` knows; it is believed from `trusted_proxies` and nobody else."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers.server_proc import ServerProcess, drive_command

LIMITS = {"login_rate_per_second": 0.001, "login_rate_burst": 2}


def _logins(srv: ServerProcess, forwarded_for: str) -> list[int]:
    with srv.client() as http:
        return [
            http.post("/api/v1/login", json={"user": "nobody", "password": "x"},
                      headers={"X-Forwarded-For": forwarded_for}).status_code
            for _ in range(3)
        ]  # fmt: skip


def test_a_trusted_balancer_names_the_client(tmp_path: Path) -> None:
    config = {**LIMITS, "trusted_proxies": "10.9.9.9, 127.0.0.1"}
    with ServerProcess(tmp_path / "d", config=config) as srv:
        assert _logins(srv, "192.0.2.1") == [401, 401, 429]
        # Another client behind the same balancer has its own allowance; what the client
        # itself wrote in front of the balancer's entry proves nothing.
        assert _logins(srv, "192.0.2.1, 192.0.2.2") == [401, 401, 429]


def test_an_untrusted_peer_is_counted_itself(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "d", config=LIMITS) as srv:
        assert _logins(srv, "192.0.2.1") == [401, 401, 429]
        assert _logins(srv, "192.0.2.2") == [429, 429, 429]


@pytest.mark.parametrize("value", ["nginx.local", "10.0.0.300"])
def test_a_proxy_that_is_not_an_address_is_one_line(tmp_path: Path, value: str) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / "server.toml").write_text(f'trusted_proxies = "{value}"\n')
    done = subprocess.run(
        drive_command("server", "serve", "--data", str(data), "--listen", "127.0.0.1:0"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1, done.stderr
    assert "trusted_proxies" in done.stderr
