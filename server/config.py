"""Server configuration: limits and tunables, read from TOML (`DATA/server.toml` or `--config`).

`listen` (HOST:PORT, used when `drive server serve` gets no `--listen`), where the
database, blocks, archive and master key live (server.locations), and
`default_quota_bytes` (the quota `drive server adduser` gives without `--quota`; 0 = none) sit
next to the limits (`max_staged_bytes`: see server/quota.py), rate limits and retention
(`revisions_kept`, `thin_*`, `trash_keep_seconds`, `journal_keep_*`), the archive tier's ages
(`archive_after_seconds`, `archive_idle_seconds`) and the idle lifetime of device tokens
(`token_idle_seconds`).
Every knob has a default that suits one machine; tests override a few (a low rate limit, a
short long-poll clamp) by writing a small TOML file. Unknown keys are an error, so a typo in
the config never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


class ConfigError(Exception):
    """The config file is unreadable or holds an unknown key or a value of the wrong type."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Limits and tunables of one server process (see docs/protocol.md for their effects)."""

    listen: str = "127.0.0.1:8443"
    # Where state lives (server.locations; empty: in the data directory).
    database: str = ""
    blocks: str = ""
    archive: str = ""
    s3_endpoint: str = ""
    s3_region: str = ""
    # Else the standard AWS sources (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ...).
    s3_access_key_id: str = ""
    s3_secret_access_key: str = dataclasses.field(default="", repr=False)
    master_key_file: str = ""
    default_quota_bytes: int = 0
    max_file_bytes: int = 10 * 10**9
    max_json_bytes: int = 1 * MIB
    max_block_bytes: int = 8 * MIB
    max_block_frame_overhead_bytes: int = 64 * 1024
    # Per token. A sync client moves 1 MiB blocks one request each, so the default must let a
    # single device read or write about 1 GiB/s; it still stops a runaway script.
    rate_per_second: float = 1000.0
    rate_burst: int = 2000
    login_rate_per_second: float = 5.0
    login_rate_burst: int = 20
    journal_keep_entries: int = 100_000
    journal_keep_days: float = 30.0
    revisions_kept: int = 100
    # Staggered thinning of each file's versions (server.thinning): every version younger
    # than `thin_all_seconds`, then one per hourly interval until `thin_hourly_until_seconds`,
    # one per daily interval until `thin_daily_until_seconds`, one per weekly interval after.
    thin_all_seconds: float = 3600.0
    thin_hourly_interval_seconds: float = 3600.0
    thin_hourly_until_seconds: float = 86400.0
    thin_daily_interval_seconds: float = 86400.0
    thin_daily_until_seconds: float = 30 * 86400.0
    thin_weekly_interval_seconds: float = 7 * 86400.0
    # Deleted entries stay restorable this long, then their versions are released.
    trash_keep_seconds: float = 30 * 86400.0
    # Blocks only versions older than `archive_after_seconds` use, and not read for
    # `archive_idle_seconds`, move to the archive tier (when `archive` is set).
    archive_after_seconds: float = 90 * 86400.0
    archive_idle_seconds: float = 90 * 86400.0
    # A tier move recorded this long ago belongs to a dead process: its leftover copy goes.
    archive_move_stale_seconds: float = 600.0
    longpoll_min_seconds: float = 30.0
    longpoll_max_seconds: float = 480.0
    longpoll_jitter_fraction: float = 0.1
    longpoll_max_open: int = 50_000
    longpoll_backoff_seconds: int = 60
    upload_session_days: float = 7.0
    # Per user: unfinished resumable upload sessions; one without a part for
    # `upload_session_idle_seconds` is abandoned and swept with its part file.
    max_upload_sessions: int = 64
    upload_session_idle_seconds: float = 86400.0
    block_gc_grace_seconds: float = 24 * 3600.0
    # Per user: bytes of blocks no kept version references (uploads awaiting their commit,
    # or left by a refused one until collected). The cap is never below the user's quota
    # (without one, max_file_bytes), so any file that could be committed can be uploaded.
    max_staged_bytes: int = 1024 * MIB
    maintenance_interval_seconds: float = 600.0
    # Device tokens expire after this long unused (server.tokens); a use is written back to
    # the database at most every `token_touch_seconds` per token.
    token_idle_seconds: float = 90 * 86400.0
    token_touch_seconds: float = 300.0
    # Request bodies held in memory at once, server-wide and per user (both transports); a
    # body waits for room instead of allocating (server.body_budget).
    body_memory_bytes: int = 256 * MIB
    body_memory_per_user_bytes: int = 128 * MIB
    # A bulk request head must arrive whole within this after its first byte; a body within
    # `request_body_seconds` plus its length at `request_body_min_bytes_per_second`
    # (waiting for memory room counts). Later: 408 and the connection is closed.
    request_head_seconds: float = 30.0
    request_body_seconds: float = 60.0
    request_body_min_bytes_per_second: int = 256 * 1024
    # Addresses of load balancers (comma-separated IPs) whose X-Forwarded-For names the
    # client: per-address limits (logins) then count the client, not the balancer.
    trusted_proxies: str = ""
    db_threads: int = 8
    keep_alive_seconds: float = 75.0
    backlog: int = 4096

    def __post_init__(self) -> None:
        for address in self.trusted_proxy_addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ConfigError(f"trusted_proxies: {address!r} is not an IP address") from None

    @property
    def trusted_proxy_addresses(self) -> frozenset[str]:
        """`trusted_proxies` as a set of addresses."""
        return frozenset(t.strip() for t in self.trusted_proxies.split(",") if t.strip())

    @property
    def max_block_frame_bytes(self) -> int:
        """The largest PUT /blocks body accepted: the plaintext limit plus frame overhead."""
        return self.max_block_bytes + self.max_block_frame_overhead_bytes

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> ServerConfig:
        """Build a config from a parsed TOML table, checking names and types."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in fields:
                raise ConfigError(f"unknown server config key {key!r}")
            default = getattr(cls(), name)
            if (
                isinstance(default, float)
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                value = float(value)
            if type(value) is not type(default):
                raise ConfigError(
                    f"server config key {key!r} must be {type(default).__name__}, "
                    f"not {type(value).__name__}"
                )
            kwargs[name] = value
        return cls(**kwargs)


def load_config(path: Path | None, data_dir: Path) -> ServerConfig:
    """Load `path`, else `DATA/server.toml` if it exists, else the defaults; the storage
    settings are checked too (`server.locations`)."""
    from server.locations import LocationError, Locations

    if path is None:
        candidate = data_dir / "server.toml"
        if not candidate.exists():
            return ServerConfig()
        path = candidate
    try:
        with path.open("rb") as f:
            table = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read server config {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"server config {path} is not valid TOML: {exc}") from exc
    config = ServerConfig.from_mapping(table)
    try:
        Locations.from_config(config, data_dir)
    except LocationError as exc:
        raise ConfigError(f"server config {path}: {exc}") from None
    return config
