"""Codec: round trips, and every damaged, moved or forged frame refused (never wrong bytes)."""

from __future__ import annotations

import os

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from blockstore.codec import (
    FLAG_RAW,
    FLAG_ZSTD,
    SEAL_VERSION,
    WIRE_VERSION,
    decode_wire,
    decode_wire_view,
    encode_wire,
    encode_wire_parts,
    pack,
    seal,
    sealed_to_wire,
    unpack,
    unseal,
)
from blockstore.errors import CorruptBlockError
from blockstore.ids import block_id
from blockstore.keys import new_data_key
from blockstore.wire import MAX_BLOCK_BYTES

KEY = new_data_key()
ACCOUNT = "alice"

plaintexts = st.one_of(
    st.binary(max_size=4096),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=64), st.integers(1, 2000)),
)


def _text(n: int) -> bytes:
    return (b"some compressible text, repeated; " * (n // 34 + 1))[:n]


@settings(max_examples=200, deadline=None)
@given(plaintexts)
def test_wire_round_trip(data):
    frame = encode_wire(data)
    assert frame[0] >> 4 == WIRE_VERSION
    assert decode_wire(frame) == data
    assert decode_wire(frame, expected_id=block_id(data)) == data


@settings(max_examples=200, deadline=None)
@given(plaintexts, st.text(max_size=40, alphabet=st.characters(exclude_categories=["Cs"])))
def test_seal_round_trip(data, account):
    bid = block_id(data)
    assert unseal(KEY, account, bid, seal(KEY, account, bid, data)) == data


def test_seal_uses_a_fresh_nonce():
    data = b"same"
    bid = block_id(data)
    assert seal(KEY, ACCOUNT, bid, data) != seal(KEY, ACCOUNT, bid, data)


def test_incompressible_travels_raw_with_flag():
    data = os.urandom(1 << 20)
    frame = encode_wire(data)
    assert frame[0] == (WIRE_VERSION << 4) | FLAG_RAW
    assert frame[1:] == data
    sealed = seal(KEY, ACCOUNT, block_id(data), data)
    assert sealed[1] == FLAG_RAW
    assert len(sealed) == len(data) + 2 + 12 + 16


def test_compressible_travels_zstd():
    data = _text(1 << 20)
    frame = encode_wire(data)
    assert frame[0] == (WIRE_VERSION << 4) | FLAG_ZSTD
    assert len(frame) < len(data) // 10
    assert seal(KEY, ACCOUNT, block_id(data), data)[1] == FLAG_ZSTD


def test_large_mixed_blocks_are_still_compressed():
    # Incompressible data is judged by samples; a block that is half text must not be
    # mistaken for incompressible.
    data = os.urandom(1 << 19) + _text(1 << 19)
    frame = encode_wire(data)
    assert frame[0] == (WIRE_VERSION << 4) | FLAG_ZSTD
    assert len(frame) < len(data) * 0.6
    assert decode_wire(frame) == data


def test_wire_parts_are_the_frame_unjoined():
    for data in (os.urandom(300_000), _text(300_000), b""):
        head, body = encode_wire_parts(data)
        assert head + bytes(body) == encode_wire(data)
    raw = os.urandom(300_000)
    assert encode_wire_parts(raw)[1] is raw  # a raw body is the plaintext itself, no copy


def test_decode_wire_view_does_not_copy_raw_bodies():
    raw = os.urandom(300_000)
    frame = bytearray(encode_wire(raw))
    plain = decode_wire_view(frame, expected_id=block_id(raw))
    assert isinstance(plain, memoryview)
    assert plain == raw
    frame[1] ^= 0xFF  # the view is the frame's memory, not a copy
    assert plain[0] == raw[0] ^ 0xFF
    text = _text(300_000)
    assert decode_wire_view(encode_wire(text)) == text  # zstd: a fresh plaintext
    with pytest.raises(CorruptBlockError):
        decode_wire_view(encode_wire(raw), expected_id=block_id(text))
    with pytest.raises(CorruptBlockError):
        decode_wire_view(encode_wire(raw), max_plaintext=1000)


def test_memoryview_input():
    data = _text(5000)
    view = memoryview(bytearray(data))
    assert decode_wire(encode_wire(view)) == data
    bid = block_id(view)
    assert unseal(KEY, ACCOUNT, bid, memoryview(seal(KEY, ACCOUNT, bid, view))) == data


# -- sealed frames: every kind of damage -----------------------------------------------


@pytest.fixture(params=["raw", "zstd", "empty"])
def sealed(request):
    data = {"raw": os.urandom(300), "zstd": _text(3000), "empty": b""}[request.param]
    bid = block_id(data)
    return data, bid, seal(KEY, ACCOUNT, bid, data)


@pytest.fixture(params=[unseal, sealed_to_wire], ids=["unseal", "sealed_to_wire"])
def opener(request):
    return request.param


def test_every_flipped_bit_position_is_refused(sealed, opener):
    _data, bid, frame = sealed
    for i in range(len(frame)):
        for mask in (0x01, 0x80):
            damaged = bytearray(frame)
            damaged[i] ^= mask
            with pytest.raises(CorruptBlockError):
                opener(KEY, ACCOUNT, bid, bytes(damaged))


def test_every_truncation_is_refused(sealed, opener):
    _data, bid, frame = sealed
    for n in range(len(frame)):
        with pytest.raises(CorruptBlockError):
            opener(KEY, ACCOUNT, bid, frame[:n])


def test_appended_bytes_are_refused(sealed, opener):
    _data, bid, frame = sealed
    with pytest.raises(CorruptBlockError):
        opener(KEY, ACCOUNT, bid, frame + b"\x00")


def test_sealed_to_wire_gives_the_frame_a_client_decodes(sealed):
    data, bid, frame = sealed
    wire = sealed_to_wire(KEY, ACCOUNT, bid, frame)
    assert wire[0] >> 4 == WIRE_VERSION
    assert wire[0] & 0x0F == frame[1]  # a zstd body goes out as stored, not recompressed
    assert decode_wire(bytes(wire), expected_id=bid) == data


def test_seal_without_compress_stores_raw():
    data = _text(5000)
    frame = seal(KEY, ACCOUNT, block_id(data), data, compress=False)
    assert frame[1] == FLAG_RAW
    assert unseal(KEY, ACCOUNT, block_id(data), frame) == data


def test_swapped_block_id_is_refused():
    a, b = _text(1000), _text(1001)
    frame_a = seal(KEY, ACCOUNT, block_id(a), a)
    with pytest.raises(CorruptBlockError):
        unseal(KEY, ACCOUNT, block_id(b), frame_a)


def test_other_account_is_refused(sealed):
    _data, bid, frame = sealed
    for other in ("bob", "alice ", "Alice", ""):
        with pytest.raises(CorruptBlockError):
            unseal(KEY, other, bid, frame)


def test_wrong_key_is_refused(sealed):
    _data, bid, frame = sealed
    with pytest.raises(CorruptBlockError):
        unseal(new_data_key(), ACCOUNT, bid, frame)


@pytest.mark.parametrize("version", [0, 2, 0x11, 0xFF])
def test_wrong_version_byte_is_refused(sealed, version):
    _data, bid, frame = sealed
    assert frame[0] == SEAL_VERSION
    with pytest.raises(CorruptBlockError):
        unseal(KEY, ACCOUNT, bid, bytes([version]) + frame[1:])


def test_content_is_rechecked_against_the_id():
    # A frame sealed under the wrong id authenticates but must still be refused.
    data = _text(2000)
    wrong = block_id(b"something else")
    with pytest.raises(CorruptBlockError, match="does not match"):
        unseal(KEY, ACCOUNT, wrong, seal(KEY, ACCOUNT, wrong, data))


def test_oversized_plaintext_is_refused_on_unseal():
    data = _text(5000)
    bid = block_id(data)
    with pytest.raises(CorruptBlockError):
        unseal(KEY, ACCOUNT, bid, seal(KEY, ACCOUNT, bid, data), max_plaintext=4999)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_garbage_never_unseals(garbage):
    with pytest.raises(CorruptBlockError):
        unseal(KEY, ACCOUNT, block_id(b"x"), garbage)


def test_seal_rejects_malformed_id():
    with pytest.raises(ValueError, match="block id"):
        seal(KEY, ACCOUNT, "ABC", b"x")  # type: ignore[arg-type]


# -- wire frames ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_wire_garbage_is_refused_or_raw(garbage):
    try:
        out = decode_wire(garbage)
    except CorruptBlockError:
        pass
    else:  # only a raw frame (no integrity of its own) can decode; the id check catches it
        assert garbage[0] == (WIRE_VERSION << 4) | FLAG_RAW
        assert out == garbage[1:]
    with pytest.raises(CorruptBlockError):
        decode_wire(garbage, expected_id=block_id(b"the real block"))


def test_wire_wrong_id_is_refused():
    with pytest.raises(CorruptBlockError):
        decode_wire(encode_wire(b"abc"), expected_id=block_id(b"abd"))


def test_wire_malformed_frames():
    zstd_body = zstandard.ZstdCompressor().compress(_text(10_000))
    v = WIRE_VERSION << 4
    cases = {
        "empty": b"",
        "unknown version": bytes([(WIRE_VERSION + 1) << 4]) + b"abc",
        "unknown flag": bytes([v | 7]) + b"abc",
        "truncated zstd": bytes([v | FLAG_ZSTD]) + zstd_body[:-3],
        "trailing garbage": bytes([v | FLAG_ZSTD]) + zstd_body + b"junk",
        "two frames": bytes([v | FLAG_ZSTD]) + zstd_body + zstd_body,
        "not zstd": bytes([v | FLAG_ZSTD]) + b"definitely not zstd",
        "raw too big": bytes([v | FLAG_RAW]) + bytes(MAX_BLOCK_BYTES + 1),
    }
    for frame in cases.values():
        with pytest.raises(CorruptBlockError):
            decode_wire(frame)


def test_zstd_bomb_refused_before_decompressing():
    # 64 MiB of zeros compress to a few KiB; the declared size is checked first.
    bomb = zstandard.ZstdCompressor().compress(bytes(64 << 20))
    with pytest.raises(CorruptBlockError, match="exceeds"):
        decode_wire(bytes([(WIRE_VERSION << 4) | FLAG_ZSTD]) + bomb)


def test_zstd_without_content_size_refused():
    stream = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    body = stream.compress(_text(5000)) + stream.flush()
    with pytest.raises(CorruptBlockError, match="content size"):
        unpack(FLAG_ZSTD, body)


def test_pack_unpack():
    flag, body = pack(_text(4096))
    assert flag == FLAG_ZSTD
    assert unpack(flag, body) == _text(4096)
    assert pack(b"") == (FLAG_RAW, b"")
