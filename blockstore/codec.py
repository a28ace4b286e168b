"""Block frames: the wire frame (client <-> server) and the sealed frame (at rest).

Owns byte layouts only; no I/O, no key management. Every decode either returns exactly the
plaintext that was encoded or raises `CorruptBlockError`, never wrong bytes.

Wire frame (in HTTP bodies)::

    byte 0      (WIRE_VERSION << 4) | flag      flag: 0 raw, 1 zstd
    byte 1..    body: the plaintext (raw) or one zstd frame with its content size

Sealed frame (server, at rest)::

    byte 0      SEAL_VERSION
    byte 1      flag (0 raw, 1 zstd): how the plaintext was packed before encryption
    byte 2..13  96-bit random nonce
    byte 14..   AES-256-GCM ciphertext of the packed body, 16-byte tag at the end
    AAD         bytes 0..1 + len(account) (2 bytes, big endian) + account (UTF-8) + block id

The header is authenticated (it is in the AAD), and so are account and block id: a frame
moved to another id or account, or re-flagged, fails to decrypt. After decryption `unseal`
re-checks the SHA-256 of the plaintext against the block id; `sealed_to_wire` leaves that to
the receiver, which checks every block it decodes.

Thread safety: zstd contexts are not thread safe (sharing one crashes), so each thread gets
its own compressor and decompressor through a `threading.local`. zstd, hashlib and AES-GCM
release the GIL, so callers get real parallelism from a thread pool.
"""

from __future__ import annotations

import secrets
import threading

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import BlockTooLarge, CorruptBlockError
from .ids import BlockId, block_id, is_block_id
from .keys import DataKey
from .wire import MAX_BLOCK_BYTES

__all__ = [
    "FLAG_RAW",
    "FLAG_ZSTD",
    "SEAL_VERSION",
    "WIRE_VERSION",
    "ZSTD_LEVEL",
    "decode_wire",
    "decode_wire_view",
    "encode_wire",
    "encode_wire_parts",
    "pack",
    "seal",
    "sealed_to_wire",
    "unpack",
    "unseal",
]

WIRE_VERSION = 1
SEAL_VERSION = 1
FLAG_RAW = 0
FLAG_ZSTD = 1
ZSTD_LEVEL = 3

_NONCE_BYTES = 12
_TAG_BYTES = 16
_SEAL_HEADER_BYTES = 2 + _NONCE_BYTES
# Keep compressed output only if it saves at least 1/32 (~3%): below that, storing raw
# saves every future reader a decompression for almost no space.
_MIN_SAVING_SHIFT = 5
# Blocks over _SAMPLE_FROM bytes are tried on _SAMPLES pieces of _SAMPLE_BYTES first.
_SAMPLE_FROM = 256 * 1024
_SAMPLES = 4
_SAMPLE_BYTES = 16 * 1024
# A zstd frame may ask for a window up to 2 GiB; no block of ours needs more than its size.
_MAX_WINDOW_BYTES = 1 << 24


class _ThreadZstd(threading.local):
    """One zstd compressor and decompressor per thread (contexts must not be shared)."""

    def __init__(self) -> None:
        self.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self.dctx = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW_BYTES)


_zstd = _ThreadZstd()


def pack(
    plaintext: bytes | bytearray | memoryview, *, compress: bool = True
) -> tuple[int, bytes | bytearray | memoryview]:
    """Compress `plaintext` with zstd if that helps (and `compress` allows trying).

    A block over `_SAMPLE_FROM` bytes is first judged by a sample (`_compressible`), so
    incompressible data (media, archives, encrypted files: most big files) costs a few
    per cent of a full zstd pass instead of all of it.

    Returns:
        (FLAG_ZSTD, zstd frame) if it saves at least ~3%, else (FLAG_RAW, plaintext), the
        plaintext itself, not a copy.
    """
    if compress and _compressible(plaintext):
        compressed = _zstd.cctx.compress(plaintext)
        size = len(plaintext)
        if len(compressed) + (size >> _MIN_SAVING_SHIFT) < size:
            return FLAG_ZSTD, compressed
    return FLAG_RAW, plaintext


def _compressible(plaintext: bytes | bytearray | memoryview) -> bool:
    """Whether a full zstd pass is worth trying: False only if samples from the start,
    middle and end of a large block together do not shrink by the required ~3%."""
    size = len(plaintext)
    if size <= _SAMPLE_FROM:
        return True
    view = memoryview(plaintext).cast("B")
    step = (size - _SAMPLE_BYTES) // (_SAMPLES - 1)
    sample = b"".join(view[i * step : i * step + _SAMPLE_BYTES] for i in range(_SAMPLES))
    packed = len(_zstd.cctx.compress(sample))
    return packed + (len(sample) >> _MIN_SAVING_SHIFT) < len(sample)


def unpack(
    flag: int, body: bytes | bytearray | memoryview, max_plaintext: int = MAX_BLOCK_BYTES
) -> bytes:
    """Invert `pack`.

    Raises:
        CorruptBlockError: unknown flag, a malformed or trailing-garbage zstd frame, or a
            plaintext larger than `max_plaintext` (checked before allocating it).
    """
    if flag == FLAG_RAW:
        _check_raw_size(len(body), max_plaintext)
        return bytes(body)
    if flag != FLAG_ZSTD:
        raise CorruptBlockError(f"unknown block flag {flag}")
    try:
        declared = zstandard.frame_content_size(body)
    except zstandard.ZstdError:
        raise CorruptBlockError("malformed zstd frame header") from None
    if declared < 0:
        raise CorruptBlockError("zstd frame without a content size")
    if declared > max_plaintext:
        raise BlockTooLarge(f"block of {declared} bytes exceeds {max_plaintext}")
    dobj = _zstd.dctx.decompressobj()
    try:
        out = dobj.decompress(body)
    except zstandard.ZstdError as exc:
        raise CorruptBlockError(f"zstd frame does not decompress: {exc}") from None
    if not dobj.eof or dobj.unused_data or len(out) != declared:
        raise CorruptBlockError("zstd frame truncated, oversized or followed by garbage")
    return out


def _check_raw_size(size: int, max_plaintext: int) -> None:
    if size > max_plaintext:
        raise BlockTooLarge(f"block of {size} bytes exceeds {max_plaintext}")


def encode_wire(plaintext: bytes | bytearray | memoryview) -> bytes:
    """Return the wire frame for one block (zstd when it helps, else raw)."""
    return b"".join(encode_wire_parts(plaintext))


def encode_wire_parts(
    plaintext: bytes | bytearray | memoryview,
) -> tuple[bytes, bytes | bytearray | memoryview]:
    """The wire frame for one block as (header byte, body), unjoined: a raw body is the
    plaintext itself, so a sender writing both parts copies nothing."""
    flag, body = pack(plaintext)
    return bytes([(WIRE_VERSION << 4) | flag]), body


def decode_wire(
    frame: bytes | bytearray | memoryview,
    max_plaintext: int = MAX_BLOCK_BYTES,
    *,
    expected_id: BlockId | None = None,
) -> bytes:
    """Return the plaintext carried by a wire frame.

    Args:
        frame: the bytes made by `encode_wire`.
        max_plaintext: refuse (before decompressing) a block larger than this.
        expected_id: if given, also check `sha256(plaintext) == expected_id`. The server
            must pass it: a buggy or hostile client must not poison dedupe.

    Raises:
        CorruptBlockError: anything but a well-formed frame within the limit (and with the
            expected id).
    """
    plaintext = decode_wire_view(frame, max_plaintext, expected_id=expected_id)
    return plaintext if isinstance(plaintext, bytes) else bytes(plaintext)


def decode_wire_view(
    frame: bytes | bytearray | memoryview,
    max_plaintext: int = MAX_BLOCK_BYTES,
    *,
    expected_id: BlockId | None = None,
) -> bytes | memoryview:
    """`decode_wire` without copying a raw body: the plaintext of a raw frame is a view
    into `frame`, valid as long as `frame` is (the server seals it straight from the
    request body)."""
    view = memoryview(frame)
    if len(view) < 1:
        raise CorruptBlockError("empty wire frame")
    header = view[0]
    if header >> 4 != WIRE_VERSION:
        raise CorruptBlockError(f"unknown wire frame version {header >> 4}")
    flag, body = header & 0x0F, view[1:]
    plaintext: bytes | memoryview
    if flag == FLAG_RAW:
        _check_raw_size(len(body), max_plaintext)
        plaintext = body
    else:
        plaintext = unpack(flag, body, max_plaintext)
    if expected_id is not None and block_id(plaintext) != expected_id:
        raise CorruptBlockError(f"block content does not match its id {expected_id}")
    return plaintext


def _seal_aad(header: bytes, account: str, bid: str) -> bytes:
    acct = account.encode("utf-8")
    if len(acct) > 0xFFFF:
        raise ValueError("account name too long")
    return header + len(acct).to_bytes(2, "big") + acct + bid.encode("ascii")


def seal(
    key: DataKey,
    account: str,
    bid: BlockId,
    plaintext: bytes | bytearray | memoryview,
    *,
    compress: bool = True,
) -> bytearray:
    """Compress (when it helps) and encrypt one block for storage.

    The caller guarantees `bid == block_id(plaintext)` (the server checked it on receipt,
    see `decode_wire(expected_id=...)`); `unseal` re-checks it on every read. `compress`
    False skips the zstd attempt (the client already found the block incompressible with
    the same settings). The frame is built in one buffer: no copies of the block.

    Raises:
        ValueError: `bid` is not a well-formed block id.
    """
    if not is_block_id(bid):
        raise ValueError(f"not a block id: {bid!r}")
    flag, body = pack(plaintext, compress=compress)
    header = bytes([SEAL_VERSION, flag])
    nonce = secrets.token_bytes(_NONCE_BYTES)
    out = bytearray(_SEAL_HEADER_BYTES + len(body) + _TAG_BYTES)
    out[:2] = header
    out[2:_SEAL_HEADER_BYTES] = nonce
    with memoryview(out) as view:
        AESGCM(key.secret).encrypt_into(
            nonce, body, _seal_aad(header, account, bid), view[_SEAL_HEADER_BYTES:]
        )
    return out


def _open_sealed(
    key: DataKey, account: str, bid: BlockId, view: memoryview, out: memoryview
) -> int:
    """Check a sealed frame's header, decrypt its body into `out`; returns the stored flag."""
    if view[0] != SEAL_VERSION:
        raise CorruptBlockError(f"sealed block {bid} has unknown version {view[0]}")
    header = bytes(view[:2])
    nonce = bytes(view[2:_SEAL_HEADER_BYTES])
    try:
        aad = _seal_aad(header, account, bid)
        AESGCM(key.secret).decrypt_into(nonce, view[_SEAL_HEADER_BYTES:], aad, out)
    except (InvalidTag, ValueError, UnicodeEncodeError):
        raise CorruptBlockError(
            f"sealed block {bid} fails authentication (damaged, moved or wrong key)"
        ) from None
    return header[1]


def sealed_to_wire(
    key: DataKey, account: str, bid: BlockId, frame: bytes | bytearray | memoryview
) -> bytearray:
    """The wire frame for a sealed block, without decompressing or re-hashing it.

    AES-GCM proves the body is what `seal` stored for this account and id, and the
    receiver checks the SHA-256 of what it decodes (`decode_wire(expected_id=...)`), so
    the server only decrypts: a zstd body goes out as stored, straight into the buffer
    that is sent.

    Raises:
        CorruptBlockError: as `unseal`, except that the id is not re-hashed here.
    """
    view = memoryview(frame)
    if len(view) < _SEAL_HEADER_BYTES + _TAG_BYTES:
        raise CorruptBlockError(f"sealed block {bid} truncated ({len(view)} bytes)")
    out = bytearray(1 + len(view) - _SEAL_HEADER_BYTES - _TAG_BYTES)
    with memoryview(out) as body:
        flag = _open_sealed(key, account, bid, view, body[1:])
    if flag not in (FLAG_RAW, FLAG_ZSTD):
        raise CorruptBlockError(f"unknown block flag {flag}")
    out[0] = (WIRE_VERSION << 4) | flag
    return out


def unseal(
    key: DataKey,
    account: str,
    bid: BlockId,
    frame: bytes | bytearray | memoryview,
    max_plaintext: int = MAX_BLOCK_BYTES,
) -> bytes:
    """Decrypt, decompress and verify a frame made by `seal`.

    Raises:
        CorruptBlockError: tampered, truncated or garbage frame; unknown version; a frame
            sealed for another block id or account or with another key; a plaintext whose
            SHA-256 is not `bid`.
    """
    view = memoryview(frame)
    if len(view) < _SEAL_HEADER_BYTES + _TAG_BYTES:
        raise CorruptBlockError(f"sealed block {bid} truncated ({len(view)} bytes)")
    body = bytearray(len(view) - _SEAL_HEADER_BYTES - _TAG_BYTES)
    flag = _open_sealed(key, account, bid, view, memoryview(body))
    plaintext = unpack(flag, body, max_plaintext)
    if block_id(plaintext) != bid:
        raise CorruptBlockError(f"sealed block {bid}: content does not match its id")
    return plaintext
