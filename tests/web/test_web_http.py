"""The web app's security rules over plain HTTP (no browser needed): the session cookie,
CSRF refusals, what is served how, names as text, other users' files, the sign-in limit,
the streamed zip and paging of a large folder."""

from __future__ import annotations

import io
import re
import time
import uuid
import zipfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tests.helpers.server_proc import ServerProcess

pytestmark = pytest.mark.e2e
XSS = "<img src=x onerror=alert(1)>"


def _signed_in(srv: ServerProcess, user: str, password: str) -> tuple[httpx.Client, str]:
    http = srv.client(follow_redirects=False)
    r = http.post("/login", data={"user": user, "password": password})
    assert r.status_code == 303, r.text
    page = http.get("/")
    m = re.search(r'data-csrf="([0-9a-f]+)"', page.text)
    assert m is not None
    return http, m.group(1)


def _account(srv: ServerProcess) -> tuple[str, str, str]:
    user = f"h{uuid.uuid4().hex[:8]}"
    srv.add_user(user, "pw-" + user)
    return user, "pw-" + user, srv.login(user, "pw-" + user, device="api")


@pytest.fixture(scope="module")
def alice(shared_server: ServerProcess) -> Iterator[tuple[httpx.Client, str, str]]:
    user, password, token = _account(shared_server)
    with shared_server.client(token) as api:
        for path, body in (("/docs/a.txt", b"alpha"), ("/docs/deep/b.html", b"<b>x</b>"),
                           ("/" + XSS, b"x")):  # fmt: skip
            api.post("/files/upload", params={"path": path}, content=body).raise_for_status()
        api.post("/api/v1/mkdir", json={"path": "/docs/empty"}).raise_for_status()
    http, csrf = _signed_in(shared_server, user, password)
    try:
        yield http, csrf, token
    finally:
        http.close()


def test_session_cookie_is_secure_httponly_strict_and_expires(shared_server: ServerProcess) -> None:
    user, password, _ = _account(shared_server)
    with shared_server.client(follow_redirects=False) as http:
        wrong = http.post("/login", data={"user": user, "password": "nope"})
        assert wrong.status_code == 401
        assert "Wrong user name or password." in wrong.text
        assert "set-cookie" not in wrong.headers
        r = http.post("/login", data={"user": user, "password": password})
        cookie = r.headers["set-cookie"]
        for part in ("Secure", "HttpOnly", "SameSite=strict", "Max-Age=43200", "Path=/"):
            assert part in cookie
        value = http.cookies["drive_session"]
        token, expires, mac = value.split(".")
        assert http.get("/").status_code == 200
        # A cookie whose expiry was edited is refused (it is signed).
        http.cookies.set("drive_session", f"{token}.{int(expires) + 3600}.{mac}")
        assert http.get("/").headers["location"] == "/login"
        http.cookies.set("drive_session", value)
        csrf = re.search(r'data-csrf="([0-9a-f]+)"', http.get("/").text)
        assert csrf is not None
        out = http.post("/logout", data={"csrf_token": csrf.group(1)})
        assert out.status_code == 303
        # Signing out revokes the device token: the old cookie is worthless.
        http.cookies.set("drive_session", value)
        assert http.get("/").headers["location"] == "/login"


def test_csrf_from_another_origin_is_refused(
    shared_server: ServerProcess, alice: tuple[httpx.Client, str, str]
) -> None:
    http, csrf, _ = alice
    form = {"path": "/docs/a.txt"}
    attempts = [
        {"Origin": "https://evil.example", "X-CSRF-Token": csrf},
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "cross-site", "X-CSRF-Token": csrf},
        {},  # same origin but no token
        {"X-CSRF-Token": "0" * 40},
    ]
    for headers in attempts:
        r = http.post("/web/delete", data=form, headers=headers)
        assert r.status_code == 403, headers
    start = http.post("/web/upload", params={"path": "/x", "uploadType": "resumable"},
                      headers={"Origin": "https://evil.example"})  # fmt: skip
    assert start.status_code == 403
    assert http.get("/web/download", params={"path": "/docs/a.txt"}).content == b"alpha"
    ok = http.post("/web/mkdir", data={"path": "/", "name": "made"}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200
    assert ok.headers["hx-trigger"] == "drive-changed"


def test_pages_forbid_inline_scripts_and_show_names_as_text(
    alice: tuple[httpx.Client, str, str],
) -> None:
    http, _, _ = alice
    pages = ["/", "/web/rows?path=%2F", "/web/activity", "/web/search?q=img", "/web/trash",
             "/web/history?path=%2Fdocs%2Fa.txt", "/web/view?path=%2Fdocs%2Fa.txt"]  # fmt: skip
    for page in pages:
        r = http.get(page)
        assert r.status_code == 200, page
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert "unsafe-inline" not in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert not re.search(r"<script(?![^>]*\ssrc=)", r.text), page
        assert not re.search(
            r"\son[a-z]+=", r.text.replace(XSS.replace("<", "&lt;").replace(">", "&gt;"), "")
        ), page
        assert XSS not in r.text
    listing = http.get("/web/rows?path=%2F").text
    assert "&lt;img src=x onerror=alert(1)&gt;" in listing


class _Controls(HTMLParser):
    """Inputs (their ids), label targets and buttons (their text) of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[str] = []
        self.labelled: set[str] = set()
        self.buttons: list[str] = []
        self._in_button = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "input" and a.get("type") != "hidden":
            self.inputs.append(a.get("id") or "?")
        elif tag == "label" and a.get("for"):
            self.labelled.add(a["for"] or "")
        elif tag == "button":
            self._in_button = True
            self.buttons.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "button":
            self._in_button = False

    def handle_data(self, data: str) -> None:
        if self._in_button:
            self.buttons[-1] += data.strip()


def test_every_control_has_a_label(alice: tuple[httpx.Client, str, str]) -> None:
    http, _, _ = alice
    pages = ["/", "/web/actions?path=%2Fdocs%2Fa.txt", "/web/actions?path=%2Fdocs",
             "/web/trash", "/web/history?path=%2Fdocs%2Fa.txt", "/web/search?q=a"]  # fmt: skip
    for page in pages:
        controls = _Controls()
        controls.feed(http.get(page).text)
        assert controls.inputs or controls.buttons, page
        assert set(controls.inputs) <= controls.labelled, page
        assert all(controls.buttons), page


def test_content_is_served_so_the_browser_cannot_run_it(
    alice: tuple[httpx.Client, str, str],
) -> None:
    http, _, _ = alice
    r = http.get("/web/download", params={"path": "/docs/deep/b.html"})
    assert r.content == b"<b>x</b>"
    assert r.headers["content-disposition"].startswith("attachment;")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"].startswith("sandbox")
    p = http.get("/web/preview", params={"path": "/docs/deep/b.html"})
    assert p.headers["content-type"] == "text/plain; charset=utf-8"
    assert p.headers["content-security-policy"].startswith("sandbox")
    assert p.headers["content-disposition"].startswith("inline;")


def test_a_file_being_changed_elsewhere_is_marked(
    shared_server: ServerProcess, alice: tuple[httpx.Client, str, str]
) -> None:
    http, _, token = alice
    with shared_server.client(token) as api:
        api.post("/api/v1/editing", json={"path": "/docs/a.txt"}).raise_for_status()
        rows = http.get("/web/rows", params={"path": "/docs"}).text
        assert "being changed on api" in rows
        api.post(
            "/files/upload", params={"path": "/docs/a.txt"}, content=b"alpha"
        ).raise_for_status()
    assert "being changed" not in http.get("/web/rows", params={"path": "/docs"}).text


def test_folder_zip_is_streamed_with_every_entry(alice: tuple[httpx.Client, str, str]) -> None:
    http, _, _ = alice
    r = http.get("/web/zip", params={"path": "/docs"})
    assert r.status_code == 200
    assert "content-length" not in r.headers  # streamed, not built first
    assert r.headers["content-disposition"].startswith('attachment; filename="docs.zip"')
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        assert z.read("docs/a.txt") == b"alpha"
        assert z.read("docs/deep/b.html") == b"<b>x</b>"
        assert "docs/empty/" in z.namelist()


def test_another_users_files_are_unreachable(
    shared_server: ServerProcess, alice: tuple[httpx.Client, str, str]
) -> None:
    user, password, _ = _account(shared_server)
    bob, csrf = _signed_in(shared_server, user, password)
    try:
        assert bob.get("/web/download", params={"path": "/docs/a.txt"}).status_code == 404
        assert bob.get("/", params={"path": "/docs"}).status_code == 404
        assert "a.txt" not in bob.get("/web/search", params={"q": "a"}).text
        gone = bob.post("/web/delete", data={"path": "/docs/a.txt"}, headers={"X-CSRF-Token": csrf})
        assert gone.status_code == 404
    finally:
        bob.close()
    # Alice's CSRF token is no good with Bob's session either.
    alice_http, alice_csrf, _ = alice
    assert alice_http.get("/web/download", params={"path": "/docs/a.txt"}).content == b"alpha"
    assert len(alice_csrf) == len(csrf)
    assert alice_csrf != csrf


def test_sign_in_is_rate_limited(tmp_path: Path) -> None:
    limits = {"login_rate_burst": 3, "login_rate_per_second": 0.01}
    with ServerProcess(tmp_path / "data", config=limits) as srv:
        srv.add_user("carol", "pw")
        with srv.client(follow_redirects=False) as http:
            codes = [http.post("/login", data={"user": "carol", "password": "x"}).status_code
                     for _ in range(4)]  # fmt: skip
            assert codes == [401, 401, 401, 429]
            r = http.post("/login", data={"user": "carol", "password": "pw"})
            assert r.status_code == 429
            assert "Too many sign-in attempts" in r.text


def test_a_large_folder_opens_a_page_at_a_time(
    shared_server: ServerProcess, alice: tuple[httpx.Client, str, str]
) -> None:
    http, _, token = alice
    with shared_server.client(token) as api:
        api.post("/api/v1/mkdir", json={"path": "/many"}).raise_for_status()
        commits = [{"path": f"/many/f{i:05d}", "base_rev": None, "blocks": [], "size": 0}
                   for i in range(2500)]  # fmt: skip
        for i in range(0, len(commits), 1000):
            api.post(
                "/api/v1/commit/batch", json={"commits": commits[i : i + 1000]}
            ).raise_for_status()
    started = time.monotonic()
    page = http.get("/", params={"path": "/many"})
    elapsed = time.monotonic() - started
    assert page.status_code == 200
    assert page.text.count('class="entry file"') == 100
    assert elapsed < 1.0
    m = re.search(r'after=(f\d+)"', page.text)
    assert m is not None
    assert m.group(1) == "f00099"
    more = http.get("/web/rows", params={"path": "/many", "after": "f00099"})
    assert 'id="row-' in more.text
    assert "f00100" in more.text
    by_size = http.get("/", params={"path": "/many", "sort": "modified", "desc": "1"})
    assert by_size.text.count('class="entry file"') == 100
