"""The `drive` command's surface: help texts, dispatch, and plain failures (no tracebacks)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from drive import cli
from drive.errors import NotLandedError, UserError
from drive.sizes import parse_size

DRIVE = [sys.executable, "-m", "drive.cli"]

SUBCOMMANDS = [
    "up",
    "login",
    "logout",
    "mount",
    "unmount",
    "status",
    "revisions",
    "restore",
    "trash",
    "undelete",
    "keep",
    "unkeep",
    "server",
    "service",
    "auth",
]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DRIVE, *args], capture_output=True, text=True, input=stdin, timeout=60, check=False
    )


def test_help_lists_every_subcommand():
    out = run("--help")
    assert out.returncode == 0
    for name in SUBCOMMANDS:
        assert f"    {name}" in out.stdout, name


@pytest.mark.parametrize(
    "argv",
    [[c] for c in SUBCOMMANDS]
    + [
        ["server", c]
        for c in ("serve", "adduser", "passwd", "deluser", "list-users", "list-devices", "revoke")
    ]
    + [["service", c] for c in ("server", "mount", "helper")]
    + [["auth", "token"]],
)
def test_every_subcommand_has_help(argv):
    parser = cli.build_parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([*argv, "--help"])
    assert exc.value.code == 0


def test_group_without_subcommand_prints_help_and_fails():
    out = run("server")
    assert out.returncode != 0
    assert "adduser" in out.stderr


def test_unknown_handler_module_reports_not_landed():
    with pytest.raises(NotLandedError, match="not available yet"):
        cli._resolve("drive.no_such_module:run")


def test_user_error_is_one_line_without_traceback(monkeypatch, capsys):
    def boom(args):
        raise UserError("server down: connection refused to https://127.0.0.1:1")

    monkeypatch.setattr(cli, "_resolve", lambda spec: boom)
    assert cli.main(["logout"]) == 1
    err = capsys.readouterr().err
    assert err == "drive: server down: connection refused to https://127.0.0.1:1\n"


def test_debug_adds_the_traceback(monkeypatch, capsys):
    def boom(args):
        raise UserError("wrong password")

    monkeypatch.setattr(cli, "_resolve", lambda spec: boom)
    assert cli.main(["--debug", "logout"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.rstrip().endswith("drive: wrong password")


@pytest.mark.parametrize(
    ("text", "size"),
    [("10G", 10 << 30), ("500M", 500 << 20), ("1.5KiB", 1536), ("123", 123), ("2 t", 2 << 40)],
)
def test_sizes_are_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "ten", "10X", "-1G", "1e3"])
def test_bad_sizes_say_what_is_expected(text):
    with pytest.raises(ValueError, match="examples: 500M"):
        parse_size(text)
