"""Pieces of the web app without a server: the streamed zip, the journal's pending marks,
breadcrumbs, content types of previews and the session key derivation."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import AsyncIterator

from blockstore.keys import MasterKey
from server.keyring import Keyring
from server.webapp import listing
from server.webapp.routes_content import preview_type
from server.webapp.zipstream import Member, zip_stream


async def _pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


async def _members(big: bytes) -> AsyncIterator[Member]:
    yield Member("top", 1_700_000_000 * 10**9, None)
    yield Member("top/big.bin", 1_700_000_000 * 10**9, _pieces(big[:1000], big[1000:]))
    yield Member("top/old.txt", 0, _pieces(b"from 1970"))  # before zip's epoch: 1980
    yield Member("top/empty", 1_700_000_000 * 10**9, None)


async def test_zip_stream_writes_a_valid_zip_piece_by_piece() -> None:
    big = os.urandom(3 * 1024 * 1024)
    pieces = [p async for p in zip_stream(_members(big))]
    assert len([p for p in pieces if p]) > 3  # sent as it is made, not at the end
    with zipfile.ZipFile(io.BytesIO(b"".join(pieces))) as z:
        assert z.testzip() is None
        assert z.namelist() == ["top/", "top/big.bin", "top/old.txt", "top/empty/"]
        assert z.read("top/big.bin") == big
        assert z.getinfo("top/old.txt").date_time[0] == 1980


def test_pending_marks_last_until_the_next_change_of_the_file() -> None:
    def change(op: str, file_id: int, device: str) -> dict[str, object]:
        return {"op": op, "file": {"id": file_id}, "device": device}

    changes = [change("pending", 1, "laptop"), change("pending", 2, "phone"),
               change("update", 1, "laptop"), change("pending", 3, "desk")]  # fmt: skip
    assert listing.pending(changes) == {2: "phone", 3: "desk"}


def test_crumbs_and_parents() -> None:
    assert listing.crumbs("/") == [("My drive", "/")]
    assert listing.crumbs("/a/b c") == [("My drive", "/"), ("a", "/a"), ("b c", "/a/b c")]
    assert listing.parent_of("/a/b") == "/a"
    assert listing.parent_of("/a") == "/"


def test_previews_of_markup_are_plain_text() -> None:
    assert preview_type("x.png") == "image/png"
    assert preview_type("x.pdf") == "application/pdf"
    assert preview_type("page.html") == "text/plain; charset=utf-8"
    assert preview_type("notes.txt") == "text/plain; charset=utf-8"
    assert preview_type("x.svg") is None
    assert preview_type("archive.tar.gz") is None


def test_derived_keys_are_stable_and_per_purpose() -> None:
    master = MasterKey(bytes(range(32)))
    one, two = Keyring(master), Keyring(master)
    assert one.derive(b"web session") == two.derive(b"web session")
    assert one.derive(b"web session") != one.derive(b"other")
    assert Keyring(MasterKey(bytes(32))).derive(b"web session") != one.derive(b"web session")
