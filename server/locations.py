"""Where one deployment keeps its state, from the `database`, `blocks`, `archive`,
`s3_endpoint`, `s3_region`, `s3_access_key_id`, `s3_secret_access_key` and
`master_key_file` settings (docs/running.md "Storage").

The embedded default needs none of them: metadata in `DATA/drive.db`, blocks in
`DATA/blocks/`, the master key in `DATA/master.key` (made at first start). A scale-out
deployment names a PostgreSQL database, an S3 bucket and one master key file that every API
server reads. Everything is checked when the config is loaded, so a typo stops the server
(and the admin commands) at once with one line instead of failing at the first request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from blockstore import open_store
from blockstore.errors import S3StoreError
from blockstore.s3store import S3BlockStore, S3Settings
from blockstore.store import BlockStore
from server.db.url import DatabaseUrl, DatabaseUrlError, parse_database_url

if TYPE_CHECKING:
    from server.config import ServerConfig

BLOCKS_DIR = "blocks"
MASTER_KEY_FILE = "master.key"
ARCHIVE_STORAGE_CLASSES = frozenset(
    {"STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER", "GLACIER_IR", "DEEP_ARCHIVE"}
)
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class LocationError(ValueError):
    """A storage setting names something this server cannot use (message: one line)."""


@dataclass(frozen=True, slots=True)
class S3Location:
    """A bucket and key prefix on an S3-compatible endpoint (None: the SDK's default)."""

    bucket: str
    prefix: str
    endpoint: str | None
    region: str | None
    access_key_id: str | None = None
    """None: the standard AWS sources (`AWS_ACCESS_KEY_ID`, ...), as the secret."""
    secret_access_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class StorageClass:
    """An archive tier that is an S3 storage class of the blocks' own bucket."""

    name: str


BlockLocation = Path | S3Location
ArchiveLocation = Path | S3Location | StorageClass


@dataclass(frozen=True, slots=True)
class Locations:
    """The checked storage settings of one server process."""

    database: DatabaseUrl
    blocks: BlockLocation
    archive: ArchiveLocation | None
    """Where cold blocks move (server.archive); None: no archive tier."""
    master_key_file: Path
    master_key_configured: bool
    """True when the config names the key file (then it must exist: one key per deployment)."""

    @classmethod
    def from_config(cls, config: ServerConfig, data_dir: Path) -> Locations:
        """Check and resolve the settings (relative paths are under the data directory)."""
        try:
            database = parse_database_url(config.database, data_dir)
        except DatabaseUrlError as exc:
            raise LocationError(str(exc)) from None
        endpoint = _endpoint(config.s3_endpoint)
        region = config.s3_region or None
        blocks = _place("blocks", config.blocks or BLOCKS_DIR, data_dir, endpoint, region)
        archive = _archive(config.archive, data_dir, blocks, endpoint, region)
        on_s3 = isinstance(blocks, S3Location) or isinstance(archive, S3Location)
        key_id, secret = _credentials(config)
        if (endpoint or region or key_id) and not on_s3:
            raise LocationError(
                "s3_endpoint, s3_region and the s3_ credentials need blocks or archive = 's3://...'"
            )
        if isinstance(blocks, S3Location):
            blocks = replace(blocks, access_key_id=key_id, secret_access_key=secret)
        if isinstance(archive, S3Location):
            archive = replace(archive, access_key_id=key_id, secret_access_key=secret)
        key_file = data_dir / (config.master_key_file or MASTER_KEY_FILE)
        if config.master_key_file and not key_file.is_file():
            raise LocationError(
                f"master_key_file {str(key_file)!r} does not exist: every server of a "
                "deployment reads the same key, so copy it there from the first one"
            )
        return cls(database, blocks, archive, key_file, bool(config.master_key_file))


def _credentials(config: ServerConfig) -> tuple[str | None, str | None]:
    """The S3 key pair the config names (both or neither), else None for the AWS sources."""
    key_id, secret = config.s3_access_key_id, config.s3_secret_access_key
    if bool(key_id) != bool(secret):
        raise LocationError("s3_access_key_id and s3_secret_access_key go together: set both")
    return (key_id, secret) if key_id else (None, None)


def _endpoint(text: str) -> str | None:
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LocationError(f"s3_endpoint {text!r} is not an http:// or https:// URL")
    return text


def _place(
    key: str, text: str, data_dir: Path, endpoint: str | None, region: str | None
) -> Path | S3Location:
    """A local directory, or `s3://BUCKET[/PREFIX]`."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return data_dir / text
    if scheme != "s3":
        raise LocationError(f"{key} = {text!r}: use a directory or s3://BUCKET/PREFIX")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise LocationError(
            f"{key} = {text!r}: {bucket!r} is not a valid bucket name (3-63 lowercase "
            "letters, digits, '.' or '-')"
        )
    prefix = prefix.strip("/")
    return S3Location(bucket, f"{prefix}/" if prefix else "", endpoint, region)


def _archive(
    text: str, data_dir: Path, blocks: BlockLocation, endpoint: str | None, region: str | None
) -> ArchiveLocation | None:
    """Another directory, bucket or prefix, or a storage class of the blocks' bucket."""
    if not text:
        return None
    if text.isupper() or text in ARCHIVE_STORAGE_CLASSES:
        if text not in ARCHIVE_STORAGE_CLASSES:
            known = ", ".join(sorted(ARCHIVE_STORAGE_CLASSES))
            raise LocationError(f"archive = {text!r}: not an S3 storage class ({known})")
        if not isinstance(blocks, S3Location):
            raise LocationError(f"archive = {text!r}: a storage class needs blocks = 's3://...'")
        return StorageClass(text)
    place = _place("archive", text, data_dir, endpoint, region)
    if place == blocks:
        raise LocationError(f"archive = {text!r} is where the blocks are; name another place")
    return place


def open_block_store(blocks: BlockLocation) -> BlockStore:
    """The block store the settings name, checked (an S3 bucket must exist and take the
    credentials: one clear line at start, not an error on the first upload)."""
    if isinstance(blocks, Path):
        return open_store.open_block_store(blocks)
    return _checked("blocks", blocks, None)


def open_archive_store(archive: ArchiveLocation | None, blocks: BlockLocation) -> BlockStore | None:
    """The archive tier's store, checked as the blocks' is; None without an archive. A
    storage class keeps archived objects in the blocks' bucket under the sibling prefix
    `PREFIX.archive/` (`archive/` without a prefix), written with that class."""
    if archive is None:
        return None
    if isinstance(archive, Path):
        return open_store.open_block_store(archive)
    if isinstance(archive, StorageClass):
        assert isinstance(blocks, S3Location)  # Locations.from_config checked it
        base = blocks.prefix.rstrip("/")
        place = replace(blocks, prefix=f"{base}.archive/" if base else "archive/")
        return _checked("archive", place, archive.name)
    return _checked("archive", archive, None)


def _checked(key: str, place: S3Location, storage_class: str | None) -> BlockStore:
    settings = S3Settings(
        endpoint=place.endpoint, region=place.region, storage_class=storage_class,
        access_key_id=place.access_key_id, secret_access_key=place.secret_access_key,
    )  # fmt: skip
    store = S3BlockStore(place.bucket, place.prefix, settings)
    try:
        open_store.check_block_store(store)
    except S3StoreError as exc:
        raise LocationError(f"{key} = s3://{place.bucket}/{place.prefix}: {exc}") from None
    return store
