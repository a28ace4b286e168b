"""The metadata schema as an ordered list of migrations, and the code that applies them.

Each migration is a list of portable SQL statements that SQLite and PostgreSQL both run; the
few words the engines spell differently are written `{serial_pk}` (an id the database
assigns), `{bytes}` (BLOB / BYTEA) and `{bytewise}` (names compare and sort by their UTF-8
bytes: SQLite's default, `COLLATE "C"` on PostgreSQL), see `server.db.conn.Dialect`.
`schema_version` holds the number of migrations applied; a database newer than this code is
refused rather than guessed at. A statement may use one `?`: the time (unix seconds) its
migration runs.

Identity: user-facing file ids are per namespace (`files` is keyed by `(ns_id, id)`), so every
namespace's root is id 1 and one user can never name another user's file by its number.
"""

from __future__ import annotations

import time

from server.db.conn import Conn

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE users (
            id {serial_pk},
            name TEXT NOT NULL UNIQUE,
            account TEXT NOT NULL UNIQUE,
            pw_hash TEXT NOT NULL,
            quota_bytes BIGINT,
            used_bytes BIGINT NOT NULL DEFAULT 0,
            wrapped_key {bytes} NOT NULL,
            root_ns INTEGER,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE devices (
            id {serial_pk},
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            created_at DOUBLE PRECISION NOT NULL,
            last_seen DOUBLE PRECISION,
            revoked_at DOUBLE PRECISION
        )""",
        "CREATE INDEX devices_user ON devices (user_id)",
        """CREATE TABLE namespaces (
            id {serial_pk},
            owner_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            head_seq BIGINT NOT NULL DEFAULT 0,
            trimmed_seq BIGINT NOT NULL DEFAULT 0,
            next_file_id BIGINT NOT NULL DEFAULT 2
        )""",
        """CREATE TABLE files (
            ns_id INTEGER NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
            id BIGINT NOT NULL,
            parent_id BIGINT,
            name TEXT{bytewise} NOT NULL,
            kind TEXT NOT NULL,
            mode INTEGER NOT NULL,
            mtime_ns BIGINT NOT NULL,
            rev INTEGER NOT NULL DEFAULT 0,
            size BIGINT NOT NULL DEFAULT 0,
            content_hash TEXT,
            target TEXT,
            deleted_at DOUBLE PRECISION,
            trash_root BIGINT,
            trash_path TEXT,
            PRIMARY KEY (ns_id, id)
        )""",
        """CREATE UNIQUE INDEX files_live_name ON files (ns_id, parent_id, name)
            WHERE deleted_at IS NULL""",
        "CREATE INDEX files_trash ON files (ns_id, trash_root)",
        """CREATE TABLE file_versions (
            ns_id INTEGER NOT NULL,
            file_id BIGINT NOT NULL,
            rev INTEGER NOT NULL,
            state TEXT NOT NULL,
            size BIGINT NOT NULL,
            content_hash TEXT,
            mtime_ns BIGINT NOT NULL,
            device TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            commit_id TEXT,
            PRIMARY KEY (ns_id, file_id, rev),
            FOREIGN KEY (ns_id, file_id) REFERENCES files(ns_id, id) ON DELETE CASCADE
        )""",
        """CREATE UNIQUE INDEX file_versions_commit ON file_versions (ns_id, commit_id)
            WHERE commit_id IS NOT NULL""",
        """CREATE TABLE version_blocks (
            ns_id INTEGER NOT NULL,
            file_id BIGINT NOT NULL,
            rev INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            block_id TEXT NOT NULL,
            size INTEGER NOT NULL,
            PRIMARY KEY (ns_id, file_id, rev, idx),
            FOREIGN KEY (ns_id, file_id, rev)
                REFERENCES file_versions(ns_id, file_id, rev) ON DELETE CASCADE
        )""",
        """CREATE TABLE blocks (
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            block_id TEXT NOT NULL,
            size INTEGER NOT NULL,
            stored_size INTEGER NOT NULL,
            refcount INTEGER NOT NULL DEFAULT 0,
            tier TEXT NOT NULL DEFAULT 'hot',
            created_at DOUBLE PRECISION NOT NULL,
            last_access DOUBLE PRECISION NOT NULL,
            zero_since DOUBLE PRECISION,
            PRIMARY KEY (user_id, block_id)
        )""",
        "CREATE INDEX blocks_zero ON blocks (zero_since)",
        """CREATE TABLE journal (
            ns_id INTEGER NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
            seq BIGINT NOT NULL,
            op TEXT NOT NULL,
            file_id BIGINT NOT NULL,
            record TEXT NOT NULL,
            old_path TEXT,
            device TEXT NOT NULL,
            user_name TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (ns_id, seq)
        )""",
        """CREATE TABLE upload_sessions (
            id TEXT PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            ns_id INTEGER NOT NULL,
            path TEXT NOT NULL,
            base_rev INTEGER,
            total_size BIGINT,
            reserved_id BIGINT,
            device TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            result TEXT
        )""",
        "CREATE INDEX upload_sessions_expiry ON upload_sessions (expires_at)",
        """CREATE TABLE shares (
            ns_id INTEGER NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            access TEXT NOT NULL,
            PRIMARY KEY (ns_id, user_id)
        )""",
    ],
    # 2: credit journal entries to a device id, not only its name (two devices may share a
    # name, and a follower must skip exactly its own changes).
    ["ALTER TABLE journal ADD COLUMN device_id BIGINT"],
    # 3: credit journal entries to the client program that made them (`X-Drive-Client`), so
    # a follower can skip exactly its own echoes and still see what its device's CLI did.
    ["ALTER TABLE journal ADD COLUMN client TEXT"],
    # 4: `used_bytes` counts only blocks some kept version references (refcount > 0);
    # blocks nothing references yet (uploads awaiting a commit, or left by a refused one)
    # are `staged_bytes`, bounded on their own (server.quota). Recount both from the rows.
    [
        "ALTER TABLE users ADD COLUMN staged_bytes BIGINT NOT NULL DEFAULT 0",
        """UPDATE users SET
            used_bytes = (SELECT COALESCE(SUM(b.size), 0) FROM blocks b
                          WHERE b.user_id = users.id AND b.refcount > 0),
            staged_bytes = (SELECT COALESCE(SUM(b.size), 0) FROM blocks b
                            WHERE b.user_id = users.id AND b.refcount <= 0)""",
    ],
    # 5: device tokens expire after an idle time counted from `last_seen` (server.tokens),
    # which was never written back before: give every live token a full idle period from
    # the upgrade rather than expiring every device logged in long ago at once.
    ["UPDATE devices SET last_seen = ? WHERE revoked_at IS NULL"],
    # 6: the storage lifecycle (server.lifecycle): versions a user marked "keep" (never
    # thinned), who deleted a trash item, the blocks each namespace's versions use (archive
    # and usage queries), the tier moves in flight (repaired after a crash), and indexes
    # for the trash's expiry and the archive's candidates.
    [
        "ALTER TABLE file_versions ADD COLUMN kept INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE files ADD COLUMN deleted_by TEXT",
        "CREATE INDEX version_blocks_block ON version_blocks (ns_id, block_id)",
        "CREATE INDEX files_deleted ON files (deleted_at) WHERE deleted_at IS NOT NULL",
        "CREATE INDEX blocks_tier ON blocks (tier, last_access)",
        """CREATE TABLE block_moves (
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            block_id TEXT NOT NULL,
            to_tier TEXT NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (user_id, block_id)
        )""",
    ],
    # 7: the received bytes of a resumable upload as pieces in the block store, when several
    # API servers share the database (server.upload_parts): any of them continues a session.
    [
        """CREATE TABLE upload_parts (
            session_id TEXT NOT NULL REFERENCES upload_sessions(id) ON DELETE CASCADE,
            start_at BIGINT NOT NULL,
            size BIGINT NOT NULL,
            block_id TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (session_id, start_at)
        )""",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(Exception):
    """The database was written by a newer server than this one."""


def migrate(conn: Conn) -> int:
    """Apply the migrations this database lacks, each in its own transaction (one process
    migrates at a time: SQLite's writer lock, PostgreSQL's `Dialect.lock_schema`).

    Returns:
        The schema version now in place.
    """
    current = _version_row(conn)
    if current > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"database schema version {current} is newer than this server ({SCHEMA_VERSION})"
        )
    for version in range(current, SCHEMA_VERSION):
        _begin(conn)
        try:
            (now,) = conn.execute("SELECT version FROM schema_version").fetchone()
            if now == version:
                for stmt in MIGRATIONS[version]:
                    sql = stmt.format(**conn.dialect.ddl_words)
                    conn.execute(sql, (time.time(),) if "?" in sql else ())
                conn.execute("UPDATE schema_version SET version = ?", (version + 1,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION


def _begin(conn: Conn) -> None:
    conn.execute(conn.dialect.begin_write)
    if conn.dialect.lock_schema:
        conn.execute(conn.dialect.lock_schema)


def _version_row(conn: Conn) -> int:
    """The applied schema version, creating the table that holds it (0) if missing."""
    _begin(conn)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            current = 0
        else:
            current = int(row[0])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return current
