"""The VFS without a kernel or a server: namespace rules, handles, reads, writes, queue."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio.testing

from blockstore.cache import LmdbBlockCache
from blockstore.codec import encode_wire
from blockstore.ids import BlockId, block_id
from mountfs.attrs import VfsError
from mountfs.vfs import RENAME_EXCHANGE, RENAME_NOREPLACE, Vfs
from syncd import errors
from syncd import ranges as rg
from syncd.blocks import BlockFetcher
from syncd.content import ContentStore
from syncd.queue_ops import Commit, Mkdir, Move
from syncd.state import ROOT_INO, Node, StateDB
from syncd.tree import TreeSync, path_of


class FakeSource:
    """Serves wire frames from memory; counts requests; can be 'offline'."""

    def __init__(self) -> None:
        self.frames: dict[BlockId, bytes] = {}
        self.requests = 0
        self.offline = False

    def add(self, data: bytes) -> BlockId:
        bid = block_id(data)
        self.frames[bid] = encode_wire(data)
        return bid

    async def get_block(self, bid: BlockId) -> bytes:
        self.requests += 1
        await trio.sleep(0.01)
        if self.offline:
            raise errors.Offline("connection refused")
        return self.frames[bid]


class World:
    def __init__(self, root: Path, limit: int = 1 << 30) -> None:
        self.state_path = root / "state"
        self.state = StateDB(self.state_path)
        self.cache = LmdbBlockCache(root / "cache", 256 << 20, sync=False)
        self.source = FakeSource()
        self.fetcher = BlockFetcher(self.cache, self.source, fetch_timeout_s=5)
        (root / "dirty").mkdir()
        self.content = ContentStore(self.state, root / "dirty", self.fetcher, limit)
        self.tree = TreeSync(self.state, None)
        self.tree.fresh.add(ROOT_INO)  # no server: the local tree is the whole truth
        self.vfs = Vfs(self.state, self.content, self.tree, None, uid=1000, gid=1000)

    def close(self) -> None:
        self.cache.close()
        self.state.close()

    def remote_file(self, name: str, data: bytes, ino: int = 500) -> Node:
        bid = self.source.add(data)
        node = Node(ino=ino, parent=ROOT_INO, name=name, kind="file", mode=0o644,
                    size=len(data), server_id=ino, rev=1, blocks=((bid, len(data)),))  # fmt: skip
        with self.state.write() as w:
            w.put_node(node)
            w.link(ROOT_INO, name, ino)
        return node


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()


def errno_of(exc: BaseException) -> int:
    assert isinstance(exc, OSError)
    return exc.errno or 0


async def write_file(vfs: Vfs, name: bytes, data: bytes, parent: int = ROOT_INO) -> int:
    fh, attr = await vfs.create(parent, name, 0o644, os.O_WRONLY)
    await vfs.write(fh, 0, data)
    await vfs.release(fh)
    return attr.ino


async def test_create_write_read_and_the_queue(world: World) -> None:
    vfs = world.vfs
    ino = await write_file(vfs, b"a.txt", b"hello")
    fh, _ = await vfs.open(ino, os.O_RDONLY)
    assert await vfs.read(fh, 0, 100) == b"hello"
    await vfs.release(fh)
    d = await vfs.mkdir(ROOT_INO, b"d", 0o755)
    await vfs.rename(ROOT_INO, b"a.txt", d.ino, b"b.txt", 0)
    assert path_of(world.state, ino) == "/d/b.txt"
    ops = [op for _, op in world.state.ops()]
    assert ops == [Commit(ino, "/a.txt"), Mkdir(d.ino, "/d", 0o755),
                   Move(ino, "/a.txt", "/d/b.txt", "noreplace")]  # fmt: skip
    assert (await vfs.lookup(d.ino, b"b.txt")).size == 5


async def test_namespace_errors(world: World) -> None:
    vfs = world.vfs
    await write_file(vfs, b"a", b"A")
    await write_file(vfs, b"b", b"B")
    d = await vfs.mkdir(ROOT_INO, b"d", 0o755)
    await write_file(vfs, b"x", b"x", parent=d.ino)
    cases = [
        (vfs.rename(ROOT_INO, b"a", ROOT_INO, b"b", RENAME_NOREPLACE), errno.EEXIST),
        (vfs.rmdir(ROOT_INO, b"d"), errno.ENOTEMPTY),
        (vfs.unlink(ROOT_INO, b"d"), errno.EISDIR),
        (vfs.rmdir(ROOT_INO, b"a"), errno.ENOTDIR),
        (vfs.rename(ROOT_INO, b"d", d.ino, b"inner", 0), errno.EINVAL),
        (vfs.rename(ROOT_INO, b"a", ROOT_INO, b"d", 0), errno.EISDIR),
        (vfs.lookup(ROOT_INO, b"n" * 256), errno.ENAMETOOLONG),
        (vfs.lookup(ROOT_INO, b"\xff"), errno.EINVAL),
        (vfs.mkdir(ROOT_INO, b"a", 0o755), errno.EEXIST),
        (vfs.setattr(ROOT_INO, uid=0), errno.EPERM),
    ]
    for coro, want in cases:
        with pytest.raises(VfsError) as info:
            await coro
        assert info.value.errno == want
    await vfs.rename(ROOT_INO, b"a", ROOT_INO, b"b", RENAME_EXCHANGE)
    fh, _ = await vfs.open((await vfs.lookup(ROOT_INO, b"b")).ino, os.O_RDONLY)
    assert await vfs.read(fh, 0, 10) == b"A"
    await vfs.release(fh)


async def test_unlinked_open_file_lives_until_last_close(world: World) -> None:
    vfs = world.vfs
    ino = await write_file(vfs, b"f", b"data")
    await vfs.lookup(ROOT_INO, b"f")
    fh, _ = await vfs.open(ino, os.O_RDWR)
    await vfs.unlink(ROOT_INO, b"f")
    with pytest.raises(VfsError):
        await vfs.lookup(ROOT_INO, b"f")
    await vfs.write(fh, 4, b"more")
    assert await vfs.read(fh, 0, 100) == b"datamore"
    await vfs.release(fh)
    assert world.state.node(ino) is not None  # the kernel still knows it
    vfs.forget([(ino, 10)])
    gone = world.state.node(ino)
    assert gone is not None  # its record stays while its delete is queued (it names its rev)
    assert not gone.linked
    assert not world.content.path(ino).exists()
    assert world.state.lookup(ROOT_INO, "f") is None


async def test_sparse_writes_truncate_and_chmod_times(world: World) -> None:
    vfs = world.vfs
    fh, attr = await vfs.create(ROOT_INO, b"s", 0o644, os.O_RDWR)
    far = 5 * 1024**3
    await vfs.write(fh, far, b"end")
    assert await vfs.read(fh, far - 3, 10) == b"\0\0\0end"
    await vfs.setattr(attr.ino, size=10, fh=fh)
    assert (await vfs.getattr(attr.ino)).size == 10
    await vfs.setattr(attr.ino, size=20, fh=fh)
    assert await vfs.read(fh, 0, 100) == bytes(20)
    await vfs.release(fh)
    a = await vfs.setattr(attr.ino, mode=0o600, mtime_ns=-(10**18))
    assert (a.mode & 0o777, a.mtime_ns) == (0o600, -(10**18))


async def test_clean_file_reads_fetch_each_block_once(world: World) -> None:
    data = os.urandom(300_000)
    node = world.remote_file("r.bin", data)
    results: list[bytes] = []

    async def reader() -> None:
        fh, _ = await world.vfs.open(node.ino, os.O_RDONLY)
        results.append(await world.vfs.read(fh, 1000, 5000))
        await world.vfs.release(fh)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(reader)
    assert results == [data[1000:6000]] * 5
    assert world.source.requests == 1


async def test_open_file_keeps_its_revision_and_local_writes_win(world: World) -> None:
    old = b"old content"
    node = world.remote_file("v.txt", old)
    fh, _ = await world.vfs.open(node.ino, os.O_RDONLY)
    new = b"NEW CONTENT!"
    bid = world.source.add(new)
    with world.state.write() as w:  # a remote update arrives
        w.put_node(replace(node, blocks=((bid, len(new)),), size=len(new)))
    assert await world.vfs.read(fh, 0, 100) == old
    fh2, _ = await world.vfs.open(node.ino, os.O_RDWR)
    assert await world.vfs.read(fh2, 0, 100) == new
    await world.vfs.write(fh2, 0, b"L")
    assert await world.vfs.read(fh, 0, 100) == b"LEW CONTENT!"  # local write: live
    await world.vfs.release(fh)
    await world.vfs.release(fh2)


async def test_opening_a_file_changed_elsewhere_refreshes_the_kernels_size(
    world: World,
) -> None:
    """Convergence seed 1402: a program opened a file just after a newer version came in,
    before the queued invalidation reached the kernel, and read the new content cut at the
    old size. The open now makes the kernel drop the size it has, once per new version."""
    refreshed: list[int] = []

    async def refresh(ino: int) -> None:
        refreshed.append(ino)

    vfs = Vfs(world.state, world.content, world.tree, None, refresh_attrs=refresh)
    node = world.remote_file("s.txt", b"short")
    assert (await vfs.lookup(ROOT_INO, b"s.txt")).size == 5  # the kernel has size 5
    fh, _ = await vfs.open(node.ino, os.O_RDWR)
    await vfs.release(fh)
    assert refreshed == []
    new = b"a longer version from elsewhere"
    bid = world.source.add(new)
    with world.state.write() as w:
        w.put_node(replace(node, blocks=((bid, len(new)),), size=len(new), rev=2,
                           version=node.version + 1))  # fmt: skip
    for _ in range(2):
        fh, _ = await vfs.open(node.ino, os.O_RDWR)
        await vfs.release(fh)
    assert refreshed == [node.ino]


async def test_dirty_file_over_a_base_revision_materializes(world: World) -> None:
    data = os.urandom(200_000)
    node = world.remote_file("m.bin", data)
    fh, _ = await world.vfs.open(node.ino, os.O_RDWR)
    await world.vfs.write(fh, 100, b"XY")
    await world.vfs.release(fh)
    node = world.state.current(node)
    assert node.dirty is not None
    assert node.dirty.ranges == ((100, 102),)
    await world.content.materialize(node)
    want = data[:100] + b"XY" + data[102:]
    assert world.content.path(node.ino).read_bytes() == want
    node = world.state.current(node)
    assert node.dirty is not None
    assert node.dirty.ranges == ((0, len(want)),)


async def test_unreachable_server_gives_offline_after_bounded_wait(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    node = world.remote_file("o.bin", b"never cached")
    world.source.offline = True
    fh, _ = await world.vfs.open(node.ino, os.O_RDONLY)
    start = trio.current_time()
    with pytest.raises(errors.Offline):
        await world.vfs.read(fh, 0, 10)
    assert 5 <= trio.current_time() - start < 6


async def test_writes_beyond_the_limit_fail_with_enospc(tmp_path: Path) -> None:
    w = World(tmp_path, limit=1 << 20)
    try:
        fh, _ = await w.vfs.create(ROOT_INO, b"big", 0o644, os.O_WRONLY)
        await w.vfs.write(fh, 0, bytes(1 << 19))
        with pytest.raises(OSError, match="unsynced") as info:
            await w.vfs.write(fh, 1 << 19, bytes(1 << 20))
        assert info.value.errno == errno.ENOSPC
        await w.vfs.release(fh)
    finally:
        w.close()


def test_ranges() -> None:
    r: rg.Ranges = ()
    r = rg.add(r, 10, 20)
    r = rg.add(r, 30, 40)
    r = rg.add(r, 20, 30)
    assert r == ((10, 40),)
    assert rg.gaps(r, 0, 50) == ((0, 10), (40, 50))
    assert rg.clip(r, 15) == ((10, 15),)
    assert rg.covered([(5, 8)], 0, 10) == [(0, 5, False), (5, 8, True), (8, 10, False)]


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "refused"])
async def test_big_and_small_writes_read_back_with_or_without_o_direct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    # Where the dirty files' filesystem refuses O_DIRECT, everything goes through the page
    # cache; the bytes read back (and handed to the uploader) must be the same either way.
    import syncd.content

    if not direct:
        monkeypatch.setattr(syncd.content, "open_direct", lambda path: None)
    w = World(tmp_path)
    try:
        fh, attr = await w.vfs.create(ROOT_INO, b"big", 0o644, os.O_WRONLY)
        expect = bytearray(os.urandom(3 << 20))
        for off in range(0, len(expect), 1 << 20):
            await w.vfs.write(fh, off, bytes(expect[off : off + (1 << 20)]))
        for off, size in ((5, 3), (1 << 20, 64 << 10), ((2 << 20) + 7, 100 << 10)):
            piece = os.urandom(size)
            await w.vfs.write(fh, off, piece)
            expect[off : off + size] = piece
        await w.vfs.release(fh)
        node = w.state.node(attr.ino)
        assert node is not None
        assert await w.content.read(node, 0, len(expect)) == expect
        assert await w.content.read(node, 4000, 200 << 10) == expect[4000 : 4000 + (200 << 10)]
        assert bool(w.content._direct_fds) is direct
    finally:
        w.close()


async def test_directories_count_their_subdirectories_in_nlink(world: World) -> None:
    vfs = world.vfs
    a = await vfs.mkdir(ROOT_INO, b"a", 0o755)
    await vfs.mkdir(a.ino, b"b", 0o755)
    c = await vfs.mkdir(a.ino, b"c", 0o755)
    fh, _ = await vfs.create(a.ino, b"f.txt", 0o644, os.O_WRONLY)
    await vfs.release(fh)
    assert (await vfs.getattr(a.ino)).nlink == 4  # 2 + b and c; files do not count
    assert (await vfs.getattr(ROOT_INO)).nlink == 3
    await vfs.rmdir(a.ino, b"b")
    assert (await vfs.getattr(a.ino)).nlink == 3
    await vfs.rename(a.ino, b"c", ROOT_INO, b"c", 0)
    assert (await vfs.getattr(a.ino)).nlink == 2
    assert (await vfs.getattr(ROOT_INO)).nlink == 4
    assert (await vfs.getattr(c.ino)).nlink == 2
    world.state.close()  # the counts survive a restart
    world.state = StateDB(world.state_path)
    assert world.state.subdirs(ROOT_INO) == 2


def test_the_vfs_never_writes_the_local_state_itself() -> None:
    """Local changes become durable in one place (`syncd.local_edits`): no module of the
    mount opens a write transaction on the state or stages a record."""
    import ast

    import mountfs

    writers = {"write", "stage", "put_node", "delete_node", "add_op", "link", "unlink"}
    found = []
    for source in sorted(Path(mountfs.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in writers
                and isinstance(node.func.value, ast.Attribute | ast.Name)
                and (getattr(node.func.value, "attr", None) or getattr(node.func.value, "id", ""))
                in {"state", "w"}
            ):
                found.append(f"{source.name}:{node.lineno} {ast.unparse(node.func)}")
    assert found == []
