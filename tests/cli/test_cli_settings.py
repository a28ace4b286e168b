"""Client settings (HOME/config.toml), log files, sizes for people, and progress bars."""

from __future__ import annotations

import io

import pytest

from drive.errors import UserError
from drive.progress import Progress
from drive.settings import Settings, load_settings
from drive.sizes import format_size
from tests.helpers.mount_proc import drive


def test_missing_file_means_defaults(tmp_path):
    assert load_settings(tmp_path) == Settings()


def test_settings_are_read(tmp_path):
    (tmp_path / "config.toml").write_text(
        'cache_size = "10G"\nallow-other = true\nlog_level = "info"\nmountpoint = "/mnt/d"\n'
    )
    s = load_settings(tmp_path)
    assert (s.cache_size, s.allow_other, s.log_level, s.mountpoint) == (
        "10G",
        True,
        "info",
        "/mnt/d",
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [("cache_size = 10\n", "must be a str"), ('log_level = "loud"\n', "log_level must be one of"),
     ("nope = 1\n", "unknown setting 'nope'"), ("x = [\n", "not valid TOML")],
)  # fmt: skip
def test_bad_settings_name_the_file(tmp_path, text, needle):
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(UserError, match=needle) as exc:
        load_settings(tmp_path)
    assert "config.toml" in str(exc.value)


def test_log_file_in_the_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('log_level = "debug"\nlog_file = "drive.log"\n')
    done = drive(home, "revisions", "/a")
    assert done.returncode != 0
    assert "not logged in" in done.stderr
    assert (home / "drive.log").exists()
    other = tmp_path / "other.log"
    drive(home, "--log-file", str(other), "--log-level", "info", "revisions", "/a")
    assert other.exists()


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 << 30, "5.0 GiB")]
)
def test_format_size(n, text):
    assert format_size(n) == text


def test_progress_is_silent_off_a_terminal():
    out = io.StringIO()
    with Progress("uploading", unit="changes", stream=out) as bar:
        bar.remaining(5)
        bar.remaining(0)
        bar.advance(3)
    assert out.getvalue() == ""
    assert bar.enabled is False


def test_progress_draws_on_a_terminal():
    out = io.StringIO()
    with Progress("uploading", unit="changes", stream=out, force=True) as bar:
        bar.remaining(4)
        bar.remaining(1)
    assert "uploading" in out.getvalue()
    assert "3/4" in out.getvalue()
    with Progress("restoring", total=2048, unit="bytes", stream=out, force=True) as bytes_bar:
        bytes_bar.advance(2048)
    assert "restoring" in out.getvalue()
