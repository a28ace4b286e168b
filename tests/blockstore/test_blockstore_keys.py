"""Keys: the master key file (0600, atomic, stable) and data-key wrapping."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from blockstore.errors import BlockstoreError, CorruptBlockError, KeyUnwrapError
from blockstore.keys import DataKey, MasterKey, new_data_key, unwrap_key, wrap_key


def test_master_key_file_created_0600_and_reloaded(tmp_path):
    path = tmp_path / "master.key"
    old_umask = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        key = MasterKey.load_or_create(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert MasterKey.load_or_create(path) == key
    assert path.read_text().strip() == key.to_hex()
    assert [p.name for p in tmp_path.iterdir()] == ["master.key"]  # no temp files left


def test_concurrent_first_starts_agree(tmp_path):
    path = tmp_path / "master.key"
    keys: list[MasterKey] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait(timeout=10)
        keys.append(MasterKey.load_or_create(path))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(keys) == 8
    assert len({k.secret for k in keys}) == 1
    assert MasterKey.load_or_create(path) == keys[0]


def test_bad_key_file_is_refused(tmp_path):
    path = tmp_path / "master.key"
    path.write_text("not a key\n")
    with pytest.raises(BlockstoreError, match="does not hold a master key"):
        MasterKey.load_or_create(path)


def test_from_hex():
    key = MasterKey.from_hex("ab" * 32 + "\n")
    assert key.secret == bytes.fromhex("ab" * 32)
    for bad in ("ab" * 31, "zz" * 32, ""):
        with pytest.raises(ValueError, match="64 hex"):
            MasterKey.from_hex(bad)


def test_key_bytes_never_in_repr():
    master = MasterKey(b"\x01" * 32)
    data = new_data_key()
    assert "01" not in repr(master)
    assert data.secret.hex() not in repr(data)
    assert repr(data.secret) not in repr(data)


def test_key_length_checked():
    with pytest.raises(ValueError, match="32 bytes"):
        DataKey(b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        MasterKey(b"x" * 33)


def test_wrap_unwrap_round_trip():
    master = MasterKey(os.urandom(32))
    data = new_data_key()
    wrapped = wrap_key(master, "alice", data)
    assert len(wrapped) == 61
    assert data.secret not in wrapped
    assert unwrap_key(master, "alice", wrapped) == data
    assert wrap_key(master, "alice", data) != wrapped  # fresh nonce


def test_wrong_master_fails():
    data = new_data_key()
    wrapped = wrap_key(MasterKey(os.urandom(32)), "alice", data)
    with pytest.raises(KeyUnwrapError, match="wrong master key"):
        unwrap_key(MasterKey(os.urandom(32)), "alice", wrapped)
    assert issubclass(KeyUnwrapError, CorruptBlockError)


def test_wrong_account_or_damage_fails():
    master = MasterKey(os.urandom(32))
    wrapped = wrap_key(master, "alice", new_data_key())
    with pytest.raises(KeyUnwrapError):
        unwrap_key(master, "bob", wrapped)
    for i in range(len(wrapped)):
        damaged = bytearray(wrapped)
        damaged[i] ^= 1
        with pytest.raises(KeyUnwrapError):
            unwrap_key(master, "alice", bytes(damaged))
    for n in (0, 1, 60):
        with pytest.raises(KeyUnwrapError):
            unwrap_key(master, "alice", wrapped[:n])
