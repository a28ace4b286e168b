"""The composition root of a mount: open the stores, wire the parts, run until unmounted.

One process runs the FUSE session and the sync pieces in one trio nursery: block read-ahead,
the uploader, the follower (long poll + delta, feeding the kernel invalidator), the presence
announcer and a small status writer (for `drive status`).
Teardown is registered right after each setup (`AsyncExitStack`), so an unmount, a signal
or a crash still closes LMDB cleanly and releases the mount point.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from blockstore.aio import run_io
from blockstore.cache import LmdbBlockCache
from blockstore.fsutil import write_private
from mountfs.invalidate import Invalidator
from mountfs.ops import DriveOperations
from mountfs.readahead import tune_read_ahead
from mountfs.vfs import Vfs
from syncd import errors
from syncd.activity import Activity, Presence
from syncd.blocks import BlockFetcher
from syncd.changes import ChangeApplier
from syncd.config import load_config
from syncd.content import ContentStore
from syncd.follower import HOLD_S, Follower
from syncd.home import Home
from syncd.mirror import Mirror
from syncd.remote import RemoteClient
from syncd.state import StateDB
from syncd.tree import TreeSync
from syncd.uploader import Uploader

__all__ = ["DEFAULT_CACHE_BYTES", "run_mount"]

log = logging.getLogger(__name__)

UPLOAD_CACHE_FRACTION = 16
"""Files bigger than 1/16 of the block cache do not enter it when uploaded (see `Uploader`)."""
DEFAULT_CACHE_BYTES = 5 << 30
MAX_FUSE_TASKS = 64
STATUS_EVERY_S = 1.0
STATUS_QUEUE_SHOWN = 20
QUOTA_EVERY_S = 60.0
NO_QUOTA = 1 << 50


def run_mount(home: Home, mountpoint: Path, *, cache_bytes: int, allow_other: bool) -> None:
    """Mount and serve until unmounted (blocking). Raises `SyncError` for setup failures."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1)
    trio.run(_serve, home, mountpoint, cache_bytes, allow_other)


async def _serve(home: Home, mountpoint: Path, cache_bytes: int, allow_other: bool) -> None:
    cfg = load_config(home)
    home.ensure()
    async with AsyncExitStack() as stack:
        state = StateDB(home.state_path)
        stack.callback(state.close)
        cache = LmdbBlockCache(home.cache_path, cache_bytes, sync=False)
        stack.callback(cache.close)
        client_id = state.client_id()
        remote = RemoteClient.from_config(cfg, client_id=client_id)
        stack.push_async_callback(remote.aclose)
        invalidator = Invalidator()
        fetcher = BlockFetcher(cache, remote, fetch_timeout_s=cfg.fetch_timeout_s)
        content = ContentStore(state, home.dirty_path, fetcher, cache_bytes)
        tree = TreeSync(state, remote)
        uploader = Uploader(state, content, remote, cache, cfg.device,
                            on_changed=invalidator.inode, on_entry=invalidator.entry,
                            cache_files_up_to=cache_bytes // UPLOAD_CACHE_FRACTION)  # fmt: skip
        activity = Activity(cfg.device, cfg.device_id)
        mirror = Mirror(state, tree)
        applier = ChangeApplier(state, client_id, on_entry=invalidator.entry,
                                on_inode=invalidator.inode,
                                on_folder=mirror.note_folder)  # fmt: skip
        tree.reconciler = applier
        follower = Follower(state, remote, tree, applier, hold_s=_hold_seconds(),
                            on_changes=activity.note)  # fmt: skip
        presence = Presence(state, remote)
        content.on_dirty = presence.announce
        quota = [NO_QUOTA, 0]
        sync = _Sync(uploader, follower, activity, mirror, quota)
        vfs = Vfs(state, content, tree, uploader, quota=lambda: (quota[0], quota[1]),
                  refresh_attrs=invalidator.attributes_now)  # fmt: skip
        uploader.open_for_writing = vfs.open_for_writing
        uploader.release_unlinked = vfs.release_unlinked
        uploader.keep_written = vfs.keep_written
        uploader.relist_folder = mirror.note_folder

        def relist_blocked() -> None:
            for folder in applier.take_blocked():
                mirror.note_folder(folder)

        uploader.on_idle = relist_blocked
        applier.open_for_writing = vfs.open_for_writing
        content.room = lambda: quota[0] - quota[1]
        uploader.requeue_unqueued()
        options = {"fsname=drive", "subtype=drive", "default_permissions", "noatime"}
        if allow_other:
            options.add("allow_other")
        pyfuse3.init(DriveOperations(vfs), str(mountpoint), options)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(fetcher.run)
                await nursery.start(uploader.run)
                await nursery.start(follower.run)
                await nursery.start(mirror.run)
                nursery.start_soon(presence.run)
                nursery.start_soon(invalidator.run)
                nursery.start_soon(_signals, nursery)
                nursery.start_soon(_status_writer, home, sync, cache, state)
                nursery.start_soon(_quota_refresher, remote, quota)
                nursery.start_soon(tune_read_ahead, mountpoint)
                log.info("mounted %s at %s (device %s)", cfg.server_url, mountpoint, cfg.device)
                await pyfuse3.main(max_tasks=MAX_FUSE_TASKS)
                nursery.cancel_scope.cancel()
        finally:
            pyfuse3.close(unmount=True)
            log.info("unmounted %s; %d changes still queued", mountpoint, state.op_count())
            await _write_status(home, sync, cache, state, mounted=False)


async def _signals(nursery: trio.Nursery) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
        async for _ in sigs:
            log.info("signal received; unmounting")
            pyfuse3.terminate()
            return


def _hold_seconds() -> int:
    """The long-poll hold time asked of the server (tests shorten it by environment)."""
    try:
        return int(os.environ.get("DRIVE_LONGPOLL_SECONDS", HOLD_S))
    except ValueError:
        return HOLD_S


@dataclass(frozen=True, slots=True)
class _Sync:
    """The sync parts the status file reports on."""

    uploader: Uploader
    follower: Follower
    activity: Activity
    mirror: Mirror
    quota: list[int]
    """[quota bytes, used bytes] as last heard from the server."""


async def _status_writer(home: Home, sync: _Sync, cache: LmdbBlockCache,
                         state: StateDB) -> None:  # fmt: skip
    while True:
        await _write_status(home, sync, cache, state, mounted=True)
        await trio.sleep(STATUS_EVERY_S)


async def _write_status(home: Home, sync: _Sync, cache: LmdbBlockCache, state: StateDB,
                        *, mounted: bool) -> None:  # fmt: skip
    uploader = sync.uploader
    queued = [{"op": op.kind, "path": op.where} for _, op in state.ops(limit=STATUS_QUEUE_SHOWN)]
    body = {
        "mounted": mounted,
        "pid": os.getpid(),
        "online": uploader.online and sync.follower.online,
        "pending": state.op_count(),
        "queued": queued,
        "uploading": uploader.progress,
        "bytes_uploaded": uploader.bytes_uploaded,
        "cache_bytes": cache.used_bytes(),
        "dirty_bytes": uploader.content.dirty_bytes,
        "last_error": uploader.last_error or sync.follower.last_error,
        "cursor": sync.follower.cursor,
        "mirror": sync.mirror.snapshot(),
        "quota_bytes": sync.quota[0] if sync.quota[0] != NO_QUOTA else None,
        "used_bytes": sync.quota[1],
        "parked": [
            {"op": op.kind, "path": op.where, "reason": why} for _, op, why, _ in state.parked()
        ],
        **sync.activity.snapshot(),
    }
    tmp = home.status_path.with_suffix(".tmp")
    data = json.dumps(body).encode()

    def write() -> None:
        write_private(tmp, data)
        os.replace(tmp, home.status_path)

    await run_io(write)


async def _quota_refresher(remote: RemoteClient, quota: list[int]) -> None:
    while True:
        try:
            who = await remote.whoami()
            q = who.get("quota_bytes")
            quota[0] = int(q) if isinstance(q, int) and q > 0 else NO_QUOTA
            quota[1] = int(who.get("used_bytes") or 0)
        except errors.SyncError as exc:
            log.debug("whoami failed: %s", exc)
        await trio.sleep(QUOTA_EVERY_S)
