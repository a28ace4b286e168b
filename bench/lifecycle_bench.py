"""Storage lifecycle benchmark: a drive with 10,000 versions, then `drive server maintenance`.

Run: `.venv/bin/python bench/lifecycle_bench.py [--data DIR] [--files 100] [--versions 100]
[--days 120]`. Builds a data directory on a fake clock through the service layer (the
same commits, block puts and deletes the API makes, each its own transaction, with
SQLite's fsyncs off while building): `--files` files of `--versions` versions each, spread
over `--days` days, 10 of them kept, a few folders in the trash, blocks from a pool so
versions share some. Then runs `drive server maintenance --dry-run` and the real pass, and
prints their output and wall times (then passes 40 and 200 days ahead: more thinning, and
blocks moving to the archive directory `DATA/archive`).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from blockstore.ids import BlockId
from blockstore.store import LocalDirStore
from server import admin
from server.blocks import BlockService
from server.db import Database, accounts, files, moves, versions
from server.db import blocks as block_rows
from server.db import lifecycle as rows
from server.db.conn import Conn
from server.db.journal import Actor
from server.keyring import Keyring, load_master
from server.locations import MASTER_KEY_FILE
from server.metrics import Metrics
from tests.helpers.server_proc import drive_command

DAY = 86400.0


def build(data: Path, n_files: int, n_versions: int, days: float) -> None:
    """The drive: versions made on a fake clock that ends now."""
    clock = [time.time() - days * DAY]
    fake = SimpleNamespace(time=lambda: clock[0], time_ns=lambda: int(clock[0] * 1e9))
    versions.time = fake  # type: ignore[assignment]  # made, stored and deleted at fake times
    block_rows.time = fake  # type: ignore[assignment]
    moves.time = fake  # type: ignore[assignment]
    admin.add_user(data, "bench", "pw")
    db = Database(admin.locations(data).database, threads=1)
    keyring = Keyring(load_master(data / MASTER_KEY_FILE))
    blocks = BlockService(db, LocalDirStore(data / "blocks"), keyring, Metrics(), 8 << 20)
    found = db.call(accounts.password_hash_of, "bench")
    assert found is not None
    account, _ = db.call(accounts.account_key, found[0])
    ns_id = db.call(lambda c: c.execute("SELECT root_ns FROM users").fetchone()[0])
    who = accounts.Principal(found[0], "bench", account, ns_id, 0, "bench", "-")
    actor = Actor(ns_id, found[0], "bench", "bench")
    rng = random.Random(16)
    pool: list[tuple[BlockId, int]] = []
    for _ in range(n_files * 20):
        data_ = rng.randbytes(rng.randrange(2_000, 40_000))
        bid = BlockId(hashlib.sha256(data_).hexdigest())
        blocks.store_plain_sync(who, bid, data_)
        pool.append((bid, len(data_)))
    limits = versions.Limits(10**12, 10**6)
    step = days * DAY / (n_files * n_versions)

    def commit_all(conn: Conn) -> None:
        conn.raw.execute("PRAGMA synchronous = OFF")
        files.mkdir(conn, actor, "/docs", 0o755)
        for folder in range(5):
            files.mkdir(conn, actor, f"/old{folder}", 0o755)
        for i in range(n_files * n_versions):
            clock[0] += step
            path = f"/docs/f{i % n_files:04d}.txt"
            refs = tuple(rng.sample(pool, rng.randrange(1, 4)))
            req = versions.CommitRequest(path, None, refs, sum(s for _, s in refs), 0, None,
                                         None, overwrite=True)  # fmt: skip
            versions.commit(conn, actor, req, limits)
            if i % 997 == 0 and i // 997 < 5:
                req = versions.CommitRequest(f"/old{i // 997}/x.bin", None, refs,
                                             sum(s for _, s in refs), 0, None, None)  # fmt: skip
                versions.commit(conn, actor, req, limits)
                moves.delete(conn, actor, f"/old{i // 997}", True)
        for k in range(10):
            rows.set_kept(conn, ns_id, f"/docs/f{k:04d}.txt", 1 + k, True)

    db.call(commit_all)
    db.close()


def run(data: Path, *args: str) -> None:
    start = time.perf_counter()
    done = subprocess.run(drive_command("server", "maintenance", "--data", str(data), *args),
                          capture_output=True, text=True, check=False)  # fmt: skip
    took = time.perf_counter() - start
    print(f"$ drive server maintenance --data DIR {' '.join(args)}   # {took:.1f} s wall")
    print(done.stdout + done.stderr, end="")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--files", type=int, default=100)
    p.add_argument("--versions", type=int, default=100)
    p.add_argument("--days", type=float, default=120.0)
    a = p.parse_args()
    data = a.data or Path(tempfile.mkdtemp(prefix="drive-lifecycle-")) / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "server.toml").write_text('archive = "archive"\n')
    start = time.perf_counter()
    build(data, a.files, a.versions, a.days)
    print(f"built {a.files * a.versions} versions of {a.files} files over {a.days:.0f} days "
          f"in {time.perf_counter() - start:.1f} s ({data})")  # fmt: skip
    run(data, "--dry-run")
    run(data)
    run(data, "--now", "+40d")
    run(data, "--now", "+200d")


if __name__ == "__main__":
    main()
