"""What the browse pages show: a folder a page at a time, search, who changed what.

A folder sorted by name (the listing's own order) is read a page at a time with the API's
cursor, so a folder of any size opens as fast as a small one; other orders read the folder
whole (bounded by `MAX_SORTED`) and page the sorted result. Who last changed a file is its
newest revision's device; what is pending (R10) and the recent changes come from the
journal, as the sync clients see them.
"""

from __future__ import annotations

import posixpath
from collections import deque
from dataclasses import dataclass
from typing import Any

from blockstore.wire import LIST_LIMIT_MAX, FileRecord
from server.errors import BadRequest
from server.metadata import Metadata
from server.services import Principal
from server.web import parse_count

PAGE_ROWS = 100
MAX_SORTED = 100_000
"""The most entries a folder may have to be sorted by size or time (name order pages)."""
SEARCH_VISITS = 50_000
SEARCH_HITS = 200
RECENT = 500
SORTS = ("name", "size", "modified")


@dataclass(frozen=True, slots=True)
class Page:
    """Rows of a folder and the token of the next page (None at the end)."""

    rows: list[FileRecord]
    next: str | None


async def whole_folder(md: Metadata, who: Principal, path: str, cap: int) -> list[FileRecord]:
    """Every entry of a folder (400 past `cap`)."""
    out: list[FileRecord] = []
    after: str | None = None
    while True:
        entries, after = await md.list_dir(who, path, LIST_LIMIT_MAX, after)
        out.extend(entries)
        if len(out) > cap:
            raise BadRequest(f"the folder has over {cap} entries: sort it by name")
        if after is None:
            return out


async def folder_page(
    md: Metadata, who: Principal, path: str, sort: str, desc: bool, after: str | None
) -> Page:
    """One page of a folder in the asked order; `after` is the previous page's `next`."""
    if sort == "name" and not desc:
        rows, nxt = await md.list_dir(who, path, PAGE_ROWS, after or None)
        return Page(rows, nxt)
    entries = await whole_folder(md, who, path, MAX_SORTED)
    if sort == "size":
        entries.sort(key=lambda r: (r.size, r.name), reverse=desc)
    elif sort == "modified":
        entries.sort(key=lambda r: (r.mtime_ns, r.name), reverse=desc)
    else:
        entries.sort(key=lambda r: r.name.encode("utf-8"), reverse=desc)
    start = parse_count(after) or 0
    end = start + PAGE_ROWS
    return Page(entries[start:end], str(end) if end < len(entries) else None)


async def search(md: Metadata, who: Principal, root: str, query: str) -> list[FileRecord]:
    """Entries under `root` whose name contains `query` (any case), breadth first, at most
    `SEARCH_HITS` of them after looking at `SEARCH_VISITS` entries at most."""
    needle = query.casefold()
    hits: list[FileRecord] = []
    folders = deque([root])
    visited = 0
    while folders and visited < SEARCH_VISITS and len(hits) < SEARCH_HITS:
        folder = folders.popleft()
        after: str | None = None
        while True:
            entries, after = await md.list_dir(who, folder, LIST_LIMIT_MAX, after)
            visited += len(entries)
            hits.extend(e for e in entries if needle in e.name.casefold())
            folders.extend(e.path for e in entries if e.kind == "dir")
            if after is None or visited >= SEARCH_VISITS:
                break
    return hits[:SEARCH_HITS]


async def last_devices(md: Metadata, who: Principal, rows: list[FileRecord]) -> dict[int, str]:
    """The device that made each file's current revision (one indexed query per file of
    the page: the listing itself does not carry it)."""
    out: dict[int, str] = {}
    for r in rows:
        if r.kind == "file" and r.rev > 0:
            revs = await md.revisions(who, r.path, 1)
            if revs:
                out[r.id] = revs[0].device
    return out


async def recent_changes(md: Metadata, who: Principal, count: int) -> list[dict[str, Any]]:
    """The newest `count` journal entries, oldest first (fewer if the journal was trimmed)."""
    head = await md.cursor(who)
    delta = await md.delta(who, max(0, head - count), count)
    return delta.entries


def pending(changes: list[dict[str, Any]]) -> dict[int, str]:
    """Files some device announced it is changing (R10) and has not committed since: file
    id -> device."""
    out: dict[int, str] = {}
    for c in changes:
        file_id = int(c["file"]["id"])
        if c["op"] == "pending":
            out[file_id] = str(c["device"])
        else:
            out.pop(file_id, None)
    return out


def crumbs(path: str) -> list[tuple[str, str]]:
    """(name, path) of each folder from the root down to `path`."""
    out = [("My drive", "/")]
    parts = [p for p in path.split("/") if p]
    for i, name in enumerate(parts):
        out.append((name, "/" + "/".join(parts[: i + 1])))
    return out


def parent_of(path: str) -> str:
    """The folder holding `path`."""
    return posixpath.dirname(path) or "/"
