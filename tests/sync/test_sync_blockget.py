"""RemoteClient's blocking block reads (syncd.remote.blockget) against the real server."""

from __future__ import annotations

import pytest

from blockstore.codec import encode_wire
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
    with ServerProcess(tmp_path_factory.mktemp("blockget") / "srv") as srv:
        srv.add_user("u", "pw-u")
        rc = _client(srv, srv.login("u", "pw-u"))
        try:
            data = b"x" * 100_000
            await rc.put_block(block_id(data), encode_wire(data))
            assert await rc.get_block_plain(block_id(data)) == data
            srv.restart()  # the kept-alive socket is now dead: retried on a fresh one
            assert await rc.get_block_plain(block_id(data)) == data
            srv.stop()
            with pytest.raises(errors.Offline):
                await rc.get_block_plain(block_id(data))
        finally:
            await rc.aclose()
