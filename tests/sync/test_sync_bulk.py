"""RemoteClient's blocking block reads (syncd.remote.bulk) against the real server."""

from __future__ import annotations

import os

import pytest

from blockstore.codec import encode_wire, encode_wire_parts
from blockstore.errors import CorruptBlockError
from blockstore.ids import BlockId, block_id
from syncd import errors
from syncd.config import ClientConfig
from syncd.remote import RemoteClient, _decode_verified
from tests.helpers.server_proc import ServerProcess

pytestmark = pytest.mark.e2e


def _client(srv: ServerProcess, token: str) -> RemoteClient:
    cfg = ClientConfig(server_url=srv.url, user="u", device="d", device_id=1, token=token,
                       fingerprint=srv.fingerprint, cert_pem=srv.cert_path.read_text())  # fmt: skip
    return RemoteClient.from_config(cfg)


async def test_block_reads_verify_reuse_sockets_and_map_errors(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    _, token = new_user
    rc = _client(shared_server, token)
    try:
        blocks = [bytes([i]) * (300_000 + i) for i in range(3)] + [b"text " * 50_000]
        for data in blocks:
            await rc.put_block(block_id(data), encode_wire(data))
        for _ in range(2):  # the second round goes over kept-alive sockets
            for data in blocks:
                assert await rc.get_block_plain(block_id(data)) == data
                assert await rc.get_block(block_id(data)) == encode_wire(data)
        with pytest.raises(errors.NotFound):
            await rc.get_block_plain(block_id(b"nobody has this"))
        # A block fetched under another id must not pass the SHA-256 check.
        wrong = BlockId(block_id(blocks[0]))
        with pytest.raises(CorruptBlockError):
            _decode_verified(encode_wire(blocks[1]), wrong)
    finally:
        await rc.aclose()
    bad = _client(shared_server, "not-a-token")
    try:
        with pytest.raises(errors.Unauthorized):
            await bad.get_block(block_id(blocks[0]))
    finally:
        await bad.aclose()


async def test_a_restarted_server_is_reached_again_and_a_stopped_one_is_offline(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with ServerProcess(tmp_path_factory.mktemp("bulk") / "srv") as srv:
        srv.add_user("u", "pw-u")
        rc = _client(srv, srv.login("u", "pw-u"))
        try:
            data = b"x" * 100_000
            await rc.put_block(block_id(data), encode_wire(data))
            assert await rc.get_block_plain(block_id(data)) == data
            srv.restart()  # the kept-alive socket is now dead: retried on a fresh one
            assert await rc.get_block_plain(block_id(data)) == data
            srv.restart()  # and the same for a batch upload and a group read
            more = b"after restart " * 40_000
            await rc.put_blocks_batch([(block_id(more), [encode_wire(more)])])
            srv.restart()
            assert await rc.get_blocks_plain([block_id(more)]) == [(block_id(more), more)]
            srv.stop()
            with pytest.raises(errors.Offline):
                await rc.get_block_plain(block_id(data))
        finally:
            await rc.aclose()


async def test_batch_uploads_go_over_the_bulk_path_and_map_errors(
    shared_server: ServerProcess, new_user: tuple[str, str]
) -> None:
    rc = _client(shared_server, new_user[1])
    try:
        blocks = [bytes([i]) * (700_000 + i) for i in range(3)] + [b"words " * 90_000]
        blocks += [os.urandom(900_000), os.urandom(5000)]  # raw frames: sent as pieces
        await rc.put_blocks_batch([(block_id(d), encode_wire_parts(d)) for d in blocks])
        assert await rc.missing_blocks([block_id(d) for d in blocks]) == []
        assert await rc.get_blocks_plain([block_id(d) for d in blocks]) == [
            (block_id(d), d) for d in blocks
        ]
        # A frame that is not the block it claims to be is refused, nothing is stored.
        liar = b"claims another id " * 1000
        with pytest.raises(errors.RemoteError):
            await rc.put_blocks_batch([(block_id(b"honest"), [encode_wire(liar)])])
        assert await rc.missing_blocks([block_id(b"honest")]) == [block_id(b"honest")]
        with pytest.raises(errors.NotFound):
            await rc.get_blocks_plain([block_id(blocks[0]), block_id(b"honest")])
    finally:
        await rc.aclose()
    bad = _client(shared_server, "not-a-token")
    try:
        with pytest.raises(errors.Unauthorized):
            await bad.put_blocks_batch([(block_id(b"z"), [encode_wire(b"z")])])
    finally:
        await bad.aclose()
