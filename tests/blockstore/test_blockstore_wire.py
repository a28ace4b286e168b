"""Wire types: JSON round trips, garbage refused with WireFormatError, path rules."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockstore.errors import InvalidPath, WireFormatError
from blockstore.ids import block_id
from blockstore.wire import (
    CHANGE_OPS,
    ERROR_STATUS,
    FILE_KINDS,
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    Change,
    FileRecord,
    RevisionInfo,
    block_record_parts,
    encode_block_records,
    error_body,
    is_within,
    join_path,
    parse_block_records,
    path_parts,
    split_path,
    validate_name,
    validate_path,
)

names = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="/\x00"),
    min_size=1,
    max_size=20,
).filter(lambda n: n not in (".", ".."))
paths = st.lists(names, min_size=0, max_size=5).map(lambda parts: "/" + "/".join(parts))
ids = st.binary(max_size=8).map(block_id)


@st.composite
def file_records(draw):
    path = draw(paths)
    kind = draw(st.sampled_from(FILE_KINDS))
    return FileRecord(
        id=draw(st.integers(1, 2**62)),
        parent_id=None if path == "/" else draw(st.integers(1, 2**62)),
        name="" if path == "/" else path.rpartition("/")[2],
        path=path,
        kind=kind,
        mode=draw(st.integers(0, 0o7777)),
        size=draw(st.integers(0, 10**10)),
        mtime_ns=draw(st.integers(-(2**62), 2**62)),
        rev=draw(st.integers(0, 2**31)),
        state=draw(st.sampled_from(["done", "pending"])),
        content_hash=draw(st.one_of(st.none(), ids)),
        blocks=draw(
            st.one_of(st.none(), st.lists(st.tuples(ids, st.integers(0, 2**23))).map(tuple))
        ),
        target=draw(st.one_of(st.none(), st.text(max_size=30))),
        deleted=draw(st.booleans()),
    )


def _via_json(obj):
    return json.loads(json.dumps(obj))


@settings(max_examples=200, deadline=None)
@given(file_records())
def test_file_record_round_trip(record):
    assert FileRecord.from_json(_via_json(record.to_json())) == record


@settings(max_examples=100, deadline=None)
@given(
    file_records(),
    st.integers(0, 2**40),
    st.sampled_from(CHANGE_OPS),
    st.one_of(st.none(), paths),
    st.floats(0, 2e9, allow_nan=False),
)
def test_change_round_trip(record, seq, op, old_path, time):
    change = Change(seq, op, record, old_path, "laptop", "alice", time)
    assert Change.from_json(_via_json(change.to_json())) == change


def test_revision_info_round_trip():
    info = RevisionInfo(3, 1234, 1763800000.5, "laptop", block_id(b"x"))
    assert RevisionInfo.from_json(_via_json(info.to_json())) == info
    assert RevisionInfo.from_json({**info.to_json(), "time": 17}).time == 17.0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_garbage_is_refused(value):
    for cls in (FileRecord, Change, RevisionInfo):
        with pytest.raises(WireFormatError):
            cls.from_json(value)


GOOD = FileRecord(
    id=17,
    parent_id=1,
    name="a.txt",
    path="/docs/a.txt",
    kind="file",
    mode=0o644,
    size=3,
    mtime_ns=1763800000000000000,
    rev=3,
    content_hash=block_id(b"abc"),
    blocks=((block_id(b"abc"), 3),),
).to_json()


@pytest.mark.parametrize("field", sorted(set(GOOD) - {"parent_id", "content_hash", "target"}))
def test_missing_required_field_is_refused(field):
    broken = dict(GOOD)
    del broken[field]
    if field == "blocks":  # blocks may be absent (null) for list entries
        assert FileRecord.from_json(broken).blocks is None
        return
    with pytest.raises(WireFormatError, match=field):
        FileRecord.from_json(broken)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "17"),
        ("id", True),
        ("id", 0),
        ("size", -1),
        ("size", 1.5),
        ("mode", 0o10000),
        ("kind", "fifo"),
        ("state", "maybe"),
        ("deleted", 0),
        ("path", "docs/a.txt"),
        ("path", "/docs/../a.txt"),
        ("name", "b.txt"),
        ("content_hash", "ABC"),
        ("blocks", [["nothex", 3]]),
        ("blocks", [[block_id(b"abc"), -3]]),
        ("blocks", [[block_id(b"abc")]]),
        ("blocks", "abc"),
        ("blocks", [[block_id(b"abc").upper(), 3]]),
    ],
)
def test_wrong_field_is_refused(field, value):
    with pytest.raises(WireFormatError, match=field):
        FileRecord.from_json({**GOOD, field: value})


def test_unknown_fields_are_ignored():
    assert FileRecord.from_json({**GOOD, "future": 1}) == FileRecord.from_json(GOOD)


def test_root_record():
    root = {**GOOD, "id": 1, "parent_id": None, "name": "", "path": "/", "kind": "dir"}
    assert FileRecord.from_json(root).path == "/"
    with pytest.raises(WireFormatError):
        FileRecord.from_json({**GOOD, "name": ""})


def test_error_body():
    assert error_body("conflict", "moved on", current=None) == {
        "error": "conflict",
        "message": "moved on",
        "current": None,
    }
    assert ERROR_STATUS["quota_exceeded"] == 507
    with pytest.raises(ValueError, match="unknown error code"):
        error_body("nope", "x")


# -- paths ------------------------------------------------------------------------------

VALID_PATHS = [
    "/",
    "/a",
    "/docs/a.txt",
    "/ with spaces /and\ttabs",
    "/.hidden/..dots/...",
    "/ü/日本語",
    "/" + "x" * MAX_NAME_BYTES,
    "/" + "é" * (MAX_NAME_BYTES // 2),
    ("/" + "d" * 99) * (MAX_PATH_BYTES // 100) + "/" + "e" * (MAX_PATH_BYTES % 100 - 1),
]

INVALID_PATHS = {
    "": "absolute",
    "a": "absolute",
    "a/b": "absolute",
    "//": "empty component",
    "/a//b": "empty component",
    "/a/": "empty component",
    "/./a": "'.'",
    "/a/.": "'.'",
    "/a/../b": "'..'",
    "/..": "'..'",
    "/a\x00b": "NUL",
    "/" + "x" * (MAX_NAME_BYTES + 1): "over 255",
    "/" + "é" * (MAX_NAME_BYTES // 2 + 1): "over 255",
    ("/" + "d" * 99) * (MAX_PATH_BYTES // 100 + 1): "over 4096",
    "/bad\udcffname": "UTF-8",
}


@pytest.mark.parametrize("path", VALID_PATHS)
def test_valid_paths_unchanged(path):
    assert len(path.encode()) <= MAX_PATH_BYTES
    assert validate_path(path) is path


@pytest.mark.parametrize(("path", "why"), INVALID_PATHS.items())
def test_invalid_paths_say_why(path, why):
    with pytest.raises(InvalidPath, match=why) as excinfo:
        validate_path(path)
    assert isinstance(excinfo.value, ValueError)


def test_non_str_path():
    with pytest.raises(InvalidPath, match="str"):
        validate_path(b"/a")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\x00", "x" * 256])
def test_invalid_names(name):
    with pytest.raises(InvalidPath):
        validate_name(name)


def test_split_join_parts():
    assert split_path("/a/b/c") == ("/a/b", "c")
    assert split_path("/a") == ("/", "a")
    with pytest.raises(InvalidPath, match="root"):
        split_path("/")
    with pytest.raises(InvalidPath):
        split_path("/a/")
    assert join_path("/", "a") == "/a"
    assert join_path("/a/b", "c") == "/a/b/c"
    with pytest.raises(InvalidPath):
        join_path("/a", "b/c")
    with pytest.raises(InvalidPath, match="over 4096"):
        join_path("/" + "/".join(["x" * 200] * 20), "y" * 200)
    assert path_parts("/") == []
    assert path_parts("/a/b") == ["a", "b"]


@settings(max_examples=200, deadline=None)
@given(paths, names)
def test_split_inverts_join(parent, name):
    joined = join_path(parent, name)
    assert split_path(joined) == (parent, name)
    assert path_parts(joined) == [*path_parts(parent), name]


def test_is_within():
    assert is_within("/a/b", "/a")
    assert is_within("/a", "/a")
    assert is_within("/a", "/")
    assert not is_within("/ab", "/a")
    assert not is_within("/a", "/a/b")


def test_change_knows_its_device_by_id_when_it_can():
    root = FileRecord.from_json(
        {"id": 1, "parent_id": None, "name": "", "path": "/", "kind": "dir", "mode": 0o755,
         "size": 0, "mtime_ns": 0, "rev": 0, "state": "done", "content_hash": None,
         "blocks": None, "target": None, "deleted": False}
    )  # fmt: skip
    change = Change(7, "mkdir", root, None, "laptop", "alice", 1.0, device_id=3)
    assert Change.from_json(change.to_json()) == change
    assert change.is_from("laptop", 3)
    assert not change.is_from("laptop", 4)  # same name, another device
    assert change.is_from("laptop", None)  # a client that does not know its id
    legacy = Change.from_json({**change.to_json(), "device_id": None})
    assert legacy.is_from("laptop", 4)
    assert not legacy.is_from("desktop", 3)


def test_block_record_parts_are_the_records_unjoined():
    small, big = b"\x10tiny", b"\x10" + bytes(range(256)) * 40
    ids = ["a" * 64, "b" * 64, "c" * 64]
    items = [(ids[0], small), (ids[1], big), (ids[2], b"")]
    parts = block_record_parts([(ids[0], (small[:1], small[1:])), (ids[1], (big[:1], big[1:])),
                                (ids[2], ())])  # fmt: skip
    assert b"".join(parts) == encode_block_records(items)
    assert any(p is not None and len(p) == len(big) - 1 for p in parts)  # big bodies pass through
    assert [(i, bytes(f)) for i, f in parse_block_records(b"".join(parts))] == items
