"""syncd without a mount or a server: delta re-chunking, and the follower against a fake
transport (httpx.MockTransport) on trio's virtual clock."""

from __future__ import annotations

import errno
import itertools
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from blockstore.chunker import chunk_bytes
from blockstore.ids import BlockId, block_id
from blockstore.wire import Change, FileRecord
from syncd import errors
from syncd import ranges as rg
from syncd.changes import ChangeApplier
from syncd.follower import MAX_BACKOFF_S, Follower, backoff_delay
from syncd.queue_ops import Commit
from syncd.rechunk import WINDOW_BYTES, NewChunk, plan, rechunk
from syncd.remote import RemoteClient
from syncd.state import LOCAL_INO_BASE, ROOT_INO, Dirty, Node, StateDB, WouldCycle
from syncd.tree import OFFLINE_RECHECK_S, TreeSync, path_of

MIB = 1 << 20


def _blocks(data: bytes) -> list[tuple[BlockId, int]]:
    return [(block_id(c.data), len(c.data)) for c in chunk_bytes(data)]


Result = tuple[list[tuple[BlockId, int]], list[NewChunk]]


async def _rechunk(old: bytes, new: bytes, ranges: list[tuple[int, int]],
                   base_size: int | None = None,
                   reads: list[tuple[int, int]] | None = None) -> Result:  # fmt: skip
    base = _blocks(old)
    sent: list[NewChunk] = []
    reads = [] if reads is None else reads

    async def read(off: int, n: int) -> bytes:
        reads.append((off, n))
        await trio.lowlevel.checkpoint()  # the window before is chunked meanwhile
        return new[off : off + n]

    async def sink(c: NewChunk) -> None:
        sent.append(c)

    p = plan(base, len(old) if base_size is None else base_size, ranges, len(new))
    out = await rechunk(base, p, len(new), read, sink)
    return out, sent


async def test_one_byte_change_rechunks_about_one_chunk() -> None:
    rnd = random.Random(7)
    old = rnd.randbytes(40 * MIB)
    where = 23 * MIB + 5
    new = old[:where] + bytes([old[where] ^ 0xFF]) + old[where + 1 :]
    reads: list[tuple[int, int]] = []
    out, sent = await _rechunk(old, new, [(where, where + 1)], reads=reads)
    assert out == _blocks(new)
    assert 1 <= len(sent) <= 2
    # Reading ahead never reads past where old boundaries may end re-chunking.
    assert sum(n for _, n in reads) <= WINDOW_BYTES


async def test_big_new_file_is_read_once_window_by_window_and_chunks_as_a_whole() -> None:
    new = random.Random(3).randbytes(5 * WINDOW_BYTES + 12345)
    reads: list[tuple[int, int]] = []
    out, sent = await _rechunk(b"", new, [(0, len(new))], reads=reads)
    assert out == _blocks(new)
    assert [c.block_id for c in sent] == [b for b, _ in out]
    # Each byte is read once, in order (the chunk cut at a window's end is kept, not re-read).
    assert reads[0][0] == 0
    assert all(a[0] + a[1] == b[0] for a, b in itertools.pairwise(reads))
    assert sum(n for _, n in reads) == len(new)


async def test_a_failed_read_ahead_raises_its_own_error() -> None:
    new = random.Random(4).randbytes(3 * WINDOW_BYTES)

    async def read(off: int, n: int) -> bytes:
        if off > 0:
            raise OSError(errno.EIO, "disk gone")
        return new[off : off + n]

    async def sink(c: NewChunk) -> None:
        pass

    p = plan([], 0, [(0, len(new))], len(new))
    with pytest.raises(OSError, match="disk gone"):
        await rechunk([], p, len(new), read, sink)


@pytest.mark.parametrize("case", ["append", "truncate", "extend-zeros", "overwrite-head",
                                  "two-edits", "new-file", "empty"])  # fmt: skip
async def test_rechunk_equals_chunking_the_whole_new_content(case: str) -> None:
    rnd = random.Random(case)
    old = rnd.randbytes(12 * MIB + 333)
    ranges: list[tuple[int, int]] = []
    base_size = None
    if case == "append":
        new = old + rnd.randbytes(3 * MIB)
        ranges = [(len(old), len(new))]
    elif case == "truncate":
        new = old[: 7 * MIB + 1]
        base_size = len(new)
    elif case == "extend-zeros":
        new = old + bytes(2 * MIB)
    elif case == "overwrite-head":
        new = rnd.randbytes(100) + old[100:]
        ranges = [(0, 100)]
    elif case == "two-edits":
        new = bytearray(old)
        new[MIB : MIB + 10] = rnd.randbytes(10)
        new[9 * MIB : 9 * MIB + 10] = rnd.randbytes(10)
        new = bytes(new)
        ranges = rg.add(rg.add([], MIB, MIB + 10), 9 * MIB, 9 * MIB + 10)
    elif case == "new-file":
        old, new = b"", rnd.randbytes(5 * MIB)
        ranges = [(0, len(new))]
    else:
        new = b""
        base_size = 0
    out, sent = await _rechunk(old, new, ranges, base_size)
    assert out == _blocks(new)
    assert {c.block_id for c in sent} >= {b for b, _ in out} - {b for b, _ in _blocks(old)}


# -- the follower, against a fake server --------------------------------------------------


def _rec(fid: int, parent: int, path: str, kind: str = "file", rev: int = 1,
         size: int = 3) -> dict[str, Any]:  # fmt: skip
    data = b"abc"[:size]
    return FileRecord(
        id=fid, parent_id=parent, name=path.rsplit("/", 1)[1], path=path, kind=kind,  # type: ignore[arg-type]
        mode=0o644, size=size if kind == "file" else 0, mtime_ns=1, rev=rev,
        blocks=((block_id(data), size),) if kind == "file" else None,
    ).to_json()  # fmt: skip


def _change(seq: int, op: str, rec: dict[str, Any], device: str = "other",
            client: str | None = None) -> dict[str, Any]:  # fmt: skip
    return {"seq": seq, "op": op, "file": rec, "old_path": None, "device": device,
            "user": "u", "time": 1.0, "client": client}  # fmt: skip


class FakeServer:
    """The change-feed part of the protocol, with scripted outages."""

    def __init__(self) -> None:
        self.journal: list[dict[str, Any]] = []
        self.down_for = 0
        self.failed = 0
        self.poll_started: list[float] = []
        self.reset_next = False
        self.listing: list[dict[str, Any]] = []
        self.wake = trio.Event()

    def add(self, op: str, rec: dict[str, Any], device: str = "other",
            client: str | None = None) -> None:  # fmt: skip
        self.journal.append(_change(len(self.journal) + 1, op, rec, device, client))
        self.wake.set()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down_for > 0:
            self.down_for -= 1
            self.failed += 1
            raise httpx.ConnectError("refused", request=request)
        q = request.url.params
        path = request.url.path
        head = len(self.journal)
        if path == "/api/v1/cursor":
            return httpx.Response(200, json={"cursor": str(head)})
        if path == "/api/v1/delta":
            cur = int(q["cursor"])
            if self.reset_next:
                self.reset_next = False
                return httpx.Response(200, json={"entries": [], "cursor": str(head),
                                                 "has_more": False, "reset": True})  # fmt: skip
            limit = int(q["limit"])
            entries = self.journal[cur : cur + limit]
            return httpx.Response(200, json={"entries": entries, "cursor": str(cur + len(entries)),
                                             "has_more": cur + len(entries) < head,
                                             "reset": False})  # fmt: skip
        if path == "/api/v1/longpoll":
            self.poll_started.append(trio.current_time())
            cur = int(q["cursor"])
            with trio.move_on_after(int(q["timeout"])):
                while len(self.journal) <= cur:
                    self.wake = trio.Event()
                    await self.wake.wait()
            return httpx.Response(200, json={"changes": len(self.journal) > cur, "backoff": None})
        if path == "/api/v1/list":
            return httpx.Response(200, json={"entries": self.listing, "next": None})
        return httpx.Response(404, json={"error": "not_found", "message": path})


async def test_follower_applies_changes_persists_cursor_and_backs_off(
    state: StateDB, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    fake = FakeServer()
    entries: list[tuple[int, str, int]] = []
    inodes: list[int] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handle),
                                 base_url="https://drive.test") as http:  # fmt: skip
        remote = RemoteClient(http)
        tree = TreeSync(state, remote)
        applier = ChangeApplier(state, "me", on_entry=lambda p, n, i: entries.append((p, n, i)),
                                on_inode=inodes.append)  # fmt: skip
        tree.reconciler = applier
        follower = Follower(state, remote, tree, applier, hold_s=60)
        nursery.start_soon(follower.run)
        await trio.sleep(1)
        assert state.get_meta("cursor") == "0"
        fake.add("mkdir", _rec(5, 1, "/docs", "dir"))
        fake.add("create", _rec(6, 5, "/docs/a.txt"))
        fake.add("create", _rec(7, 1, "/mine.txt"), device="me", client="me")  # this mount's
        fake.add("create", _rec(10, 1, "/cli.txt"), device="me")  # same device, not the mount
        await trio.sleep(1)
        assert state.lookup(ROOT_INO, "docs") == 5
        assert state.lookup(5, "a.txt") == 6
        assert state.lookup(ROOT_INO, "mine.txt") is None
        assert state.lookup(ROOT_INO, "cli.txt") == 10
        assert (ROOT_INO, "docs", 5) in entries
        assert state.get_meta("cursor") == "4"
        # an update invalidates the inode; a delete removes the name
        fake.add("update", _rec(6, 5, "/docs/a.txt", rev=2, size=2))
        await trio.sleep(1)
        node = state.node(6)
        assert node is not None
        assert (node.rev, node.size) == (2, 2)
        assert 6 in inodes
        # the server goes away: retries back off exponentially, with jitter, capped
        fake.down_for = 12
        before = trio.current_time()
        fake.add("delete", {**_rec(6, 5, "/docs/a.txt", rev=2, size=2), "deleted": True})
        await trio.sleep(600)
        assert fake.failed == 12
        assert state.lookup(5, "a.txt") is None
        assert not follower.online or fake.down_for == 0
        assert trio.current_time() - before >= sum(0.5 * min(MAX_BACKOFF_S, 0.25 * 2**i)
                                                    for i in range(11))  # fmt: skip
        assert follower.online
        # reset: re-list from the root
        fake.listing = [_rec(9, 1, "/listed.txt")]
        fake.reset_next = True
        fake.add("create", _rec(8, 1, "/lost-in-trim.txt"))
        await trio.sleep(1)
        assert follower.resets == 1
        assert state.lookup(ROOT_INO, "listed.txt") == 9


def test_backoff_delay_grows_and_is_capped() -> None:
    rnd = random.Random(1)
    delays = [backoff_delay(i, rnd) for i in range(20)]
    assert delays[0] <= 0.25
    assert max(delays) <= MAX_BACKOFF_S
    assert delays[10] >= MAX_BACKOFF_S / 2


async def test_local_edits_and_queued_moves_win_over_remote_changes(state: StateDB) -> None:
    applier = ChangeApplier(state, "me")
    applier.apply_all([Change.from_json(_change(1, "create", _rec(6, 1, "/a.txt")))])
    node = state.node(6)
    assert node is not None
    from syncd.state import Dirty

    node = replace(node, dirty=Dirty(base_blocks=(), base_size=0, ranges=((0, 1),)))
    with state.write() as w:
        w.put_node(node)
    if True:
        applier.apply_all([
            Change.from_json(_change(2, "update", _rec(6, 1, "/a.txt", rev=2, size=1))),
            Change.from_json(_change(3, "delete", {**_rec(6, 1, "/a.txt"), "deleted": True})),
        ])  # fmt: skip
    node = state.node(6)
    assert node is not None
    assert node.rev == 1  # the local edit keeps its base; the commit will resolve it
    assert node.linked  # modify beats delete
    assert json.dumps(node.to_json())


def test_a_file_renamed_over_here_is_not_put_back_by_a_remote_edit(state: StateDB) -> None:
    """Seed 301 of the convergence runs: `y.txt` renamed over `x.txt` here (the move still
    queued), then the feed brings an edit of the replaced `x.txt`. The move will tell the
    server (and lose to the edit: a conflicted copy); until then `x.txt` here stays the
    renamed file, which must not be pushed out of the tree (it vanished from this device)."""
    from syncd.queue_ops import Move

    applier = ChangeApplier(state, "me")
    applier.apply_all([
        Change.from_json(_change(1, "create", _rec(80, 1, "/x.txt"))),
        Change.from_json(_change(2, "create", _rec(59, 1, "/y.txt", size=2))),
    ])  # fmt: skip
    replaced, renamed = state.node(80), state.node(59)
    assert replaced is not None
    assert renamed is not None
    with state.write() as w:  # what Vfs.rename does
        w.unlink(ROOT_INO, "x.txt")
        w.put_node(replace(replaced, linked=False))
        w.unlink(ROOT_INO, "y.txt")
        w.link(ROOT_INO, "x.txt", 59)
        w.put_node(replace(renamed, name="x.txt"))
        w.add_op(Move(59, "/y.txt", "/x.txt", "replace", 1, 80, 80))
    applier.apply_all([Change.from_json(_change(3, "update", _rec(80, 1, "/x.txt", rev=2)))])
    assert state.lookup(ROOT_INO, "x.txt") == 59
    shown = state.node(59)
    assert shown is not None
    assert shown.linked
    gone = state.node(80)
    assert gone is not None
    assert not gone.linked
    # seed 1107: the replaced file then moves elsewhere (before our move reaches the
    # server): it is shown there, not lost from this device's tree
    applier.apply_all([Change.from_json(_change(4, "move", _rec(80, 1, "/z.txt", rev=2)))])
    assert state.lookup(ROOT_INO, "z.txt") == 80
    assert state.lookup(ROOT_INO, "x.txt") == 59


def test_a_change_older_than_this_mounts_own_later_change_is_not_applied(
    state: StateDB,
) -> None:
    """Seed 601 of the convergence runs: C moved file 51 (seq 2), then this mount's queued
    move followed it and put it under its own name (seq 3, its result already here). The
    feed brings both; C's older move must not put the file back under C's name."""
    applier = ChangeApplier(state, "me")
    applier.apply_all([Change.from_json(_change(1, "create", _rec(51, 1, "/a")))])
    node = state.node(51)
    assert node is not None
    with state.write() as w:  # what the uploader did after its move was answered
        w.unlink(ROOT_INO, "a")
        w.link(ROOT_INO, "a (mine)", 51)
        w.put_node(replace(node, name="a (mine)"))
    applier.apply_all([
        Change.from_json(_change(2, "move", _rec(51, 1, "/a (theirs)"))),
        Change.from_json(_change(3, "move", _rec(51, 1, "/a (mine)"), device="me", client="me")),
        Change.from_json(_change(4, "create", _rec(52, 1, "/b"))),
    ])  # fmt: skip
    assert state.lookup(ROOT_INO, "a (mine)") == 51
    assert state.lookup(ROOT_INO, "a (theirs)") is None
    assert state.lookup(ROOT_INO, "b") == 52


def test_a_presence_notice_of_this_mount_does_not_hide_an_older_move_from_elsewhere(
    state: StateDB,
) -> None:
    """Seed 1663 of the convergence runs: A renamed `x/b` to `x/c` (seq 256); this mount,
    offline from the feed, then wrote to the file it showed at `x/c`, and its "editing"
    notice named the file now at that path (A's, seq 257). Taken as this mount's own later
    change of that file, it made the feed skip A's rename: the file stayed at its old name
    here for good. A notice changes nothing, so it hides nothing."""
    applier = ChangeApplier(state, "me")
    applier.apply_all([Change.from_json(_change(1, "create", _rec(48, 1, "/b")))])
    applier.apply_all([
        Change.from_json(_change(256, "move", _rec(48, 1, "/c"))),
        Change.from_json(_change(257, "pending", _rec(48, 1, "/c"), device="me", client="me")),
    ])  # fmt: skip
    assert state.lookup(ROOT_INO, "c") == 48
    assert state.lookup(ROOT_INO, "b") is None


def test_an_older_change_from_elsewhere_does_not_take_a_name_this_mount_took_later(
    state: StateDB,
) -> None:
    """Seed 1101 of the convergence runs (at debug level): B created `a` (id 69) and C
    deleted it; then this mount's uploader created its own `a` (id 73) and showed it here.
    The feed brings all three; B's create, older than ours, must not take the name from
    our file (which then vanished here for good, the feed skipping our own create). When
    the older change came in an earlier page (fetched before our commit landed), our own
    change is applied again: it no longer shows here as the uploader left it."""
    mine = LOCAL_INO_BASE + 5
    for same_page in (True, False):
        with state.write() as w:
            if state.lookup(ROOT_INO, "a") is not None:
                w.unlink(ROOT_INO, "a")
            w.put_node(
                Node(
                    ino=mine,
                    parent=ROOT_INO,
                    name="a",
                    kind="file",
                    mode=0o644,
                    size=3,
                    server_id=73,
                    rev=1,
                    blocks=[(block_id(b"abc"), 3)],
                )
            )
            w.link(ROOT_INO, "a", mine)  # fmt: skip
        applier = ChangeApplier(state, "me")
        theirs = [Change.from_json(_change(1, "create", _rec(69, 1, "/a"))),
                  Change.from_json(_change(2, "delete", _rec(69, 1, "/a")))]  # fmt: skip
        ours = Change.from_json(_change(3, "create", _rec(73, 1, "/a"), "me", "me"))
        if same_page:
            applier.apply_all([*theirs, ours])
        else:
            applier.apply_all(theirs[:1])
            applier.apply_all([theirs[1], ours])
        assert state.lookup(ROOT_INO, "a") == mine, same_page
        node = state.node(mine)
        assert node is not None
        assert node.linked, same_page


def test_a_folder_with_unsynced_work_below_keeps_its_name_against_the_feed(
    state: StateDB,
) -> None:
    """Seed 1108 of the convergence runs (at debug level): folder `y` was deleted elsewhere
    but stays here, a file below it not uploaded yet; then another device makes a new `y`.
    The new folder must not push ours out of the tree: the file below would have no path
    to be uploaded to."""
    applier = ChangeApplier(state, "me")
    applier.apply_all([Change.from_json(_change(1, "mkdir", _rec(70, 1, "/y", kind="dir")))])
    with state.write() as w:
        w.put_node(Node(ino=LOCAL_INO_BASE + 9, parent=70, name="new", kind="file",
                        mode=0o644, size=1, dirty=Dirty([], 0, [(0, 1)])))  # fmt: skip
        w.link(70, "new", LOCAL_INO_BASE + 9)
    applier.apply_all([
        Change.from_json(_change(2, "delete", _rec(70, 1, "/y", kind="dir"))),
        Change.from_json(_change(3, "mkdir", _rec(77, 1, "/y", kind="dir"))),
    ])  # fmt: skip
    assert state.lookup(ROOT_INO, "y") == 70
    kept = state.node(70)
    assert kept is not None
    assert kept.linked
    assert state.lookup(70, "new") == LOCAL_INO_BASE + 9
    assert ROOT_INO in applier.take_blocked()


def test_queue_sequence_numbers_are_never_reused(tmp_path: Path) -> None:
    state = StateDB(tmp_path / "seq-state")
    with state.write() as w:
        first = w.add_op(Commit(5, "/a"))
    with state.write() as w:
        w.delete_op(first)  # the queue drains...
    with state.write() as w:
        second = w.add_op(Commit(6, "/b"))
    assert second > first  # ...and the next op still gets a new number
    state.close()
    again = StateDB(tmp_path / "seq-state")  # across restarts too
    try:
        with again.write() as w:
            w.delete_op(second)
        with again.write() as w:
            assert w.add_op(Commit(7, "/c")) > second
    finally:
        again.close()


def test_queued_ops_round_trip_and_old_queues_still_load() -> None:
    from syncd.queue_ops import Delete, Mkdir, Move, SetAttr, Symlink, op_from_json, op_to_json

    ops = [
        Commit(1, "/a", "dev-1-x", "d1"),
        Mkdir(2, "/d", 0o755),
        Symlink(3, "/l", "target"),
        SetAttr(4, "/a", 0o600, None),
        Move(5, "/a", "/b", "replace", 7),
        Delete(6, "/b", False, 3),
    ]
    for op in ops:
        assert op_from_json(json.loads(json.dumps(op_to_json(op)))) == op
    old = {"op": "move", "ino": 5, "from": "/a", "to": "/b", "mode": "noreplace"}
    assert op_from_json(old) == Move(5, "/a", "/b", "noreplace", None)
    assert op_from_json({"op": "delete", "ino": 6, "path": "/x", "recursive": True}).where == "/x"
    with pytest.raises(ValueError, match="unknown"):
        op_from_json({"op": "explode", "ino": 1})
    with pytest.raises(ValueError, match="damaged"):
        op_from_json({"op": "commit"})


async def test_listing_a_folder_no_longer_reachable_from_the_root_is_a_no_op(
    state: StateDB,
) -> None:
    """Convergence seed 801: the background mirror asked to list a folder whose parent had
    gone; `path_of` raised KeyError out of the mirror task and took the whole mount down."""

    class NoServer:
        async def list_dir(self, path: str) -> list[FileRecord]:
            raise AssertionError(f"listed {path}")

    with state.write() as w:
        w.put_node(Node(ino=77, parent=999, name="orphan", kind="dir", mode=0o755,
                        server_id=77, rev=1))  # fmt: skip
    tree = TreeSync(state, NoServer())  # type: ignore[arg-type]
    tree.reconciler = ChangeApplier(state, "me")
    await tree.ensure_listed(77)
    assert 77 in tree.fresh


def test_a_remote_update_waits_for_a_writer_here(state: StateDB) -> None:
    """Seed 903 of the convergence runs: another device's version arrived between a
    program's open for appending and its write; the append landed inside the other
    device's content (a 3,590-byte file read back as 110,693 bytes). The update waits for
    the writer: a write then commits on the old base and conflicts (a conflicted copy);
    a handle closed unwritten takes the update (its folder is listed again)."""
    folders: list[int] = []
    applier = ChangeApplier(state, "me", on_folder=folders.append)
    applier.apply_all([Change.from_json(_change(1, "create", _rec(6, 1, "/c")))])
    applier.open_for_writing = lambda ino: ino == 6
    applier.apply_all([Change.from_json(_change(2, "update", _rec(6, 1, "/c", rev=2, size=2)))])
    node = state.node(6)
    assert node is not None
    assert (node.rev, node.size) == (1, 3)
    applier.open_for_writing = lambda ino: False
    applier.writers_done(6)
    assert folders == [ROOT_INO]


async def test_a_block_list_that_arrives_after_a_write_here_is_not_applied(
    state: StateDB,
) -> None:
    """A file listed without its block list is opened: while its block list is on the way,
    another handle writes it here. The answer is older than that write and must not set the
    file's size or blocks under its dirty content."""
    with state.write() as w:
        w.put_node(Node(ino=90, parent=ROOT_INO, name="f", kind="file", mode=0o644, size=10,
                        server_id=90, rev=1))  # fmt: skip
        w.link(ROOT_INO, "f", 90)

    class WrittenMeanwhile:
        async def meta(self, path: str | None = None, file_id: int | None = None) -> FileRecord:
            cur = state.node(90)
            assert cur is not None
            with state.write() as w:  # the write lands while the answer is on the way
                w.put_node(replace(cur, size=3, dirty=Dirty((), 0, ((0, 3),))))
            return FileRecord.from_json(_rec(90, 1, "/f", size=2))

    tree = TreeSync(state, WrittenMeanwhile())  # type: ignore[arg-type]
    node = state.node(90)
    assert node is not None
    await tree.load_blocks(node)
    after = state.node(90)
    assert after is not None
    assert after.size == 3
    assert after.dirty is not None
    assert after.blocks is None


async def test_a_block_list_is_not_waited_for_while_the_server_is_known_away(
    state: StateDB, autojump_clock: trio.testing.MockClock
) -> None:
    """Offline, opening a file whose block list never came (listings carry none) fails
    at once with Offline, not after a timeout each time; the server is asked again after
    OFFLINE_RECHECK_S, and an answer marks it reachable."""
    with state.write() as w:
        w.put_node(Node(ino=91, parent=ROOT_INO, name="g", kind="file", mode=0o644, size=2,
                        server_id=91, rev=1))  # fmt: skip
        w.link(ROOT_INO, "g", 91)
    asked: list[float] = []

    class Away:
        up = False

        async def meta(self, path: str | None = None, file_id: int | None = None) -> FileRecord:
            asked.append(trio.current_time())
            if not self.up:
                await trio.sleep(3)  # a connect that takes its time, then fails
                raise errors.Offline("connection refused")
            return FileRecord.from_json(_rec(91, 1, "/g", size=2))

    remote = Away()
    tree = TreeSync(state, remote)  # type: ignore[arg-type]
    node = state.node(91)
    assert node is not None
    with pytest.raises(errors.Offline):
        await tree.load_blocks(node)
    assert not tree.online
    start = trio.current_time()
    with pytest.raises(errors.Offline, match="never fetched"):
        await tree.load_blocks(node)
    assert trio.current_time() == start  # at once, the server not asked
    assert len(asked) == 1
    await trio.sleep(OFFLINE_RECHECK_S + 0.1)
    remote.up = True
    await tree.load_blocks(node)
    assert tree.online
    after = state.node(91)
    assert after is not None
    assert after.blocks is not None


def test_a_name_never_leads_to_an_inode_whose_record_is_elsewhere(state: StateDB) -> None:
    """Seed 1101 of the convergence runs: a name still led to a file whose record said it
    was no longer there, and a program wrote through it to an inode no upload would take
    (acknowledged, then lost). One way to leave such a name: a removal inside the
    transaction that had just given the file its name, checking the entry with a read of
    its own (which does not see that transaction). Writing a record drops the entries that
    still name the inode where it no longer is."""
    with state.write() as w:
        w.put_node(Node(ino=95, parent=ROOT_INO, name="a", kind="file", mode=0o644))
        w.link(ROOT_INO, "a", 95)
        node = state.node(95)
        assert node is not None
        w.put_node(replace(node, linked=False))
    assert state.lookup(ROOT_INO, "a") is None
    with state.write() as w:  # moved by a record alone: the old name goes too
        back = replace(node, name="b", linked=True)
        w.put_node(back)
        w.link(ROOT_INO, "b", 95)
        w.put_node(replace(back, name="c"))
        w.link(ROOT_INO, "c", 95)
    assert state.lookup(ROOT_INO, "b") is None
    assert state.lookup(ROOT_INO, "c") == 95


def _edit_then_move(state: StateDB, folder: Node, parent: int) -> None:
    with state.write() as w:
        w.put_node(replace(folder, mtime_ns=8))
        w.put_node(replace(folder, parent=parent, name="z2"))


def test_a_folder_is_never_put_inside_itself(state: StateDB) -> None:
    """Seed 1401 of the convergence runs: a folder moved elsewhere into the folder that this
    device showed at its old place was put inside itself here, and an operation walking its
    parents hung the mount. Such a record is refused, and the refused transaction leaves
    nothing behind (in LMDB nor in the cached records, staged edits included)."""
    with state.write() as w:
        for ino, parent, name in ((20, ROOT_INO, "x"), (21, 20, "z"), (22, 21, "q")):
            w.put_node(Node(ino=ino, parent=parent, name=name, kind="dir", mode=0o755))
            w.link(parent, name, ino)
    z = state.node(21)
    assert z is not None
    state.stage(replace(z, mtime_ns=7))  # an edit held in memory only
    for inside in (21, 22):
        with pytest.raises(WouldCycle):
            _edit_then_move(state, z, inside)
        assert state.node(21) == replace(z, mtime_ns=7)
        assert state.lookup(20, "z") == 21
        assert path_of(state, 22) == "/x/z/q"
    assert state.is_within(22, 20)
    assert not state.is_within(20, 22)


def test_an_unlinked_record_does_not_take_the_server_id_of_the_inode_shown(
    state: StateDB,
) -> None:
    """Seed 1202 of the convergence runs: a file shown here had lost its server id's
    mapping, so the feed's delete of it found nothing here, and the device showed a file
    the server no longer had, for good. One way to lose it, tested here: an unlinked record
    of the same server entry written after it takes the mapping, and its release drops it."""
    with state.write() as w:
        w.put_node(Node(ino=10, parent=ROOT_INO, name="c", kind="file", mode=0o644,
                        server_id=77, rev=5))  # fmt: skip
        w.link(ROOT_INO, "c", 10)
        w.put_node(Node(ino=LOCAL_INO_BASE + 3, parent=ROOT_INO, name="old", kind="file",
                        mode=0o644, server_id=77, rev=4, linked=False))  # fmt: skip
    assert state.ino_for_server_id(77) == 10
    with state.write() as w:
        w.delete_node(LOCAL_INO_BASE + 3)
    assert state.ino_for_server_id(77) == 10
    applier = ChangeApplier(state, "me")
    applier.apply_all([Change.from_json(_change(1, "delete", _rec(77, 1, "/c", rev=5)))])
    assert state.lookup(ROOT_INO, "c") is None


def test_a_file_recreated_under_a_new_id_keeps_its_inode_against_its_old_entry(
    state: StateDB,
) -> None:
    """Seed 1204 of the convergence runs lost an acknowledged write: a file moved here
    while deleted elsewhere is re-created on the server under a new id and keeps its inode
    (the old server id); a later-applied change of the old entry (an edit made elsewhere
    before the delete) then wrote the server's record over that inode, and the bytes
    written here went with it. The old entry now gets an inode of its own."""
    with state.write() as w:
        w.put_node(Node(ino=21, parent=ROOT_INO, name="moved", kind="file", mode=0o644,
                        size=5, server_id=21, rev=3))  # fmt: skip
        w.link(ROOT_INO, "moved", 21)
    node = state.node(21)
    assert node is not None
    with state.write() as w:  # re-created on the server as id 90
        w.put_node(replace(node, server_id=90, rev=1))
    assert state.ino_for_server_id(21) is None
    assert state.ino_for_server_id(90) == 21
    applier = ChangeApplier(state, "me")
    applier.apply_all([Change.from_json(_change(1, "update", _rec(21, 1, "/old", rev=4)))])
    kept = state.node(21)
    assert kept is not None
    assert (kept.server_id, kept.name, kept.size) == (90, "moved", 5)
    old = state.lookup(ROOT_INO, "old")
    assert old is not None
    assert old != 21
    assert state.ino_for_server_id(21) == old
    gone = {**_rec(21, 1, "/old", rev=4), "deleted": True}
    applier.apply_all([Change.from_json(_change(2, "delete", gone))])
    assert state.lookup(ROOT_INO, "old") is None
    assert state.lookup(ROOT_INO, "moved") == 21


def test_a_full_server_disk_is_not_taken_for_the_users_quota() -> None:
    """Both answer 507: over quota parks the change ("not synced: over quota"), a full disk
    on the server is retried with backoff (the change stays pending) and says so."""
    from syncd import errors
    from syncd.remote import _raise_for

    request = httpx.Request("POST", "https://drive.test/api/v1/commit")
    for code, kind in (("quota_exceeded", errors.QuotaExceeded),
                       ("insufficient_storage", errors.ServerFull)):  # fmt: skip
        body = {"error": code, "message": "out of space"}
        with pytest.raises(errors.RemoteError) as caught:
            _raise_for(httpx.Response(507, json=body, request=request))
        assert type(caught.value) is kind
    assert issubclass(errors.ServerFull, errors.ServerError)
