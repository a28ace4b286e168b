"""Where the metadata lives: the `database` setting parsed into a SQLite path or a
PostgreSQL URL, and the one-line error for a database that cannot be used.

`sqlite://PATH` (`sqlite:///var/lib/drive/drive.db`: an absolute path; `sqlite://meta.db`:
a path under the data directory; the default is `DATA/drive.db`) or
`postgresql://USER@HOST:PORT/DBNAME`. A PostgreSQL password may be in the URL; otherwise
libpq finds it as for every libpq program (`PGPASSWORD`, `~/.pgpass`), so it need not be
written into the config file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DB_FILE = "drive.db"


class DatabaseUrlError(ValueError):
    """The `database` setting is not a URL this server can use."""


class DatabaseUnavailable(Exception):
    """The configured database cannot be reached or used (message: one line, no secrets)."""


@dataclass(frozen=True, slots=True)
class SqliteUrl:
    """An SQLite database file."""

    path: Path

    def shown(self) -> str:
        """How messages name it."""
        return f"sqlite://{self.path}"


@dataclass(frozen=True, slots=True)
class PostgresUrl:
    """A PostgreSQL database, as a libpq connection URL."""

    conninfo: str

    def shown(self) -> str:
        """The URL without its password (for messages and logs)."""
        parts = urlsplit(self.conninfo)
        if parts.password is None:
            return self.conninfo
        host = parts.netloc.rpartition("@")[2]
        netloc = f"{parts.username or ''}:***@{host}"
        return urlunsplit(parts._replace(netloc=netloc))


DatabaseUrl = SqliteUrl | PostgresUrl


def parse_database_url(text: str, data_dir: Path) -> DatabaseUrl:
    """Parse the `database` setting (empty: the data directory's SQLite file)."""
    if not text:
        return SqliteUrl(data_dir / DB_FILE)
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise DatabaseUrlError(
            f"database {text!r} is not a URL: use sqlite:///PATH or "
            "postgresql://USER@HOST:PORT/DBNAME"
        )
    if scheme == "sqlite":
        if not rest or rest.endswith("/"):
            raise DatabaseUrlError(f"database {text!r} names no file: use sqlite:///PATH")
        return SqliteUrl(data_dir / rest)
    if scheme in ("postgresql", "postgres"):
        return PostgresUrl(_checked_postgres(text))
    raise DatabaseUrlError(
        f"database {text!r}: unknown scheme {scheme!r} (use sqlite:// or postgresql://)"
    )


def _checked_postgres(text: str) -> str:
    """The URL if libpq can parse it (a typo is reported at start, not at first query)."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(text)
    except ProgrammingError as exc:
        shown = PostgresUrl(text).shown() if "@" in text else text
        reason = " ".join(str(exc).split())
        raise DatabaseUrlError(
            f"database {shown!r} is not a valid PostgreSQL URL: {reason}"
        ) from None
    return text
