"""Maintenance racing clients loses nothing: a server that runs its lifecycle pass every 50 ms
with a policy that thins, archives and collects within seconds, while clients upload blocks
and commit (some after a pause, some reusing blocks that thinning just released) and upload
whole files, and `drive server maintenance` runs beside it. Afterwards every retained
revision reads back byte for byte, every file's content is its last commit, and no request
failed with a 5xx."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from blockstore.codec import encode_wire
from tests.server.test_server_lifecycle import configured, upload

pytestmark = pytest.mark.e2e

SECONDS = 4.0
RACE = {
    "maintenance_interval_seconds": 0.05,
    "block_gc_grace_seconds": 1.5,
    "revisions_kept": 6,
    "thin_all_seconds": 0.3,
    "thin_hourly_interval_seconds": 0.25,
    "thin_hourly_until_seconds": 1.0,
    "thin_daily_interval_seconds": 0.5,
    "thin_daily_until_seconds": 2.0,
    "thin_weekly_interval_seconds": 1.0,
    "archive": "archive",
    "archive_after_seconds": 0.3,
    "archive_idle_seconds": 0.3,
    "rate_burst": 100_000,
}


class Writer(threading.Thread):
    """Commits versions of one file and remembers each revision's content."""

    def __init__(self, http: httpx.Client, path: str, seed: int, whole_files: bool) -> None:
        super().__init__(daemon=True)
        self.http, self.path, self.whole = http, path, whole_files
        self.rng = random.Random(seed)
        self.pool = [self.rng.randbytes(self.rng.randrange(1000, 30_000)) for _ in range(6)]
        self.by_rev: dict[int, bytes] = {}
        self.last = b""
        self.errors: list[str] = []
        self.stop_at = time.monotonic() + SECONDS

    def run(self) -> None:
        try:
            while time.monotonic() < self.stop_at:
                self.one()
        except (AssertionError, httpx.HTTPError) as exc:  # reported by the test
            self.errors.append(repr(exc))

    def one(self) -> None:
        # Old content again (its blocks may be released, archived or collected by now) or new.
        parts = [self.rng.choice(self.pool) if self.rng.random() < 0.5 else self.rng.randbytes(
            self.rng.randrange(100, 20_000)) for _ in range(self.rng.randrange(1, 4))]  # fmt: skip
        content = b"".join(parts)
        rec = upload(self.http, self.path, content) if self.whole else self.commit(parts)
        self.by_rev[int(rec["rev"])] = content
        self.last = content

    def commit(self, parts: list[bytes]) -> dict[str, Any]:
        blocks = [[hashlib.sha256(p).hexdigest(), len(p)] for p in parts]
        for _ in range(20):
            missing = self.http.post("/api/v1/blocks/missing", json={"ids": [b[0] for b in blocks]})
            self.check(missing)
            wanted = set(missing.json()["missing"])
            for p, (bid, _) in zip(parts, blocks, strict=True):
                if bid in wanted:
                    self.check(self.http.put(f"/api/v1/blocks/{bid}", content=encode_wire(p)))
            time.sleep(self.rng.uniform(0, 0.3))  # a commit that comes a little later
            r = self.http.post("/api/v1/commit", json={
                "path": self.path, "base_rev": None, "blocks": blocks,
                "size": sum(b[1] for b in blocks), "mtime_ns": 1, "mode": 0o644})  # fmt: skip
            self.check(r)
            if r.status_code == 409:  # it exists: commit on top of what is there
                cur = r.json()["current"]
                r = self.http.post("/api/v1/commit", json={
                    "path": self.path, "base_rev": cur["rev"], "blocks": blocks,
                    "size": sum(b[1] for b in blocks), "mtime_ns": 1})  # fmt: skip
                self.check(r)
            if r.status_code == 200:
                rec: dict[str, Any] = r.json()
                return rec
            # 400 with `missing`: collected after their grace period; send them again.
            assert r.status_code == 400, r.text
            assert "missing" in r.json(), r.text
        raise AssertionError("no commit in 20 tries")

    def check(self, r: httpx.Response) -> None:
        if r.status_code >= 500:
            self.errors.append(f"{r.request.url.path}: {r.status_code} {r.text}")
            raise AssertionError(r.text)


def test_maintenance_racing_uploads_and_commits_loses_nothing(tmp_path: Path) -> None:
    with configured(tmp_path / "data", **RACE) as srv:
        srv.add_user("race", "pw")
        token = srv.login("race", "pw")
        clients = [srv.client(token) for _ in range(4)]
        writers = [Writer(c, f"/w{i}.bin", i, whole_files=i == 3) for i, c in enumerate(clients)]
        for w in writers:
            w.start()
        passes = 0
        while any(w.is_alive() for w in writers):  # the command beside the server's own passes
            done = srv.admin("maintenance")
            assert done.returncode == 0, done.stderr
            passes += 1
        for w in writers:
            w.join()
        assert passes >= 1
        try:
            http = clients[0]
            for w in writers:
                assert not w.errors, w.errors
                assert len(w.by_rev) > 5
                got = http.get("/files/download", params={"path": w.path})
                assert got.content == w.last
                revs = http.get("/api/v1/revisions", params={"path": w.path}).json()["revisions"]
                assert revs
                for r in revs:
                    old = http.get("/files/download",
                                   params={"path": w.path, "revision": r["revision"]})  # fmt: skip
                    if old.status_code == 404:  # thinned since the listing (passes go on)
                        now = http.get("/api/v1/revisions", params={"path": w.path}).json()
                        assert r["revision"] not in [x["revision"] for x in now["revisions"]]
                        continue
                    assert old.status_code == 200, old.text
                    assert old.content == w.by_rev[r["revision"]]
            log = srv.log_path.read_text()
            assert "Traceback" not in log
            assert "maintenance round failed" not in log
        finally:
            for c in clients:
                c.close()
    assert os.path.isdir(tmp_path / "data" / "archive")
