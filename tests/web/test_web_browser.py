"""The web app in a real headless browser: sign in, upload (and resume), organise, history,
download, preview, hostile names, and a change from a mounted device showing up live.

One browser and one user for the module (the steps build on each other, in file order).
`DRIVE_WEB_SCREENSHOTS=DIR` keeps screenshots of the main pages (docs/web.md shows them).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.helpers.browser import chromium
from tests.helpers.mount_proc import MountProcess, login_home, requires_fuse
from tests.helpers.server_proc import ServerProcess
from tests.helpers.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e
WAIT = 20.0
XSS = "<img src=x onerror=alert(1)>"


class Web:
    """The browser, the server and the user of this module."""

    def __init__(self, driver: WebDriver, srv: ServerProcess, user: str, root: Path) -> None:
        self.d = driver
        self.srv = srv
        self.user = user
        self.password = "pw-" + user
        self.root = root
        self.downloads = root / "downloads"

    def token(self) -> str:
        return self.srv.login(self.user, self.password, device="api")

    def go(self, path: str) -> None:
        self.d.get(self.srv.url + path)

    def sign_in(self) -> None:
        """Sign in through the login page unless the session is still on."""
        self.go("/")
        if self.d.current_url.endswith("/login"):
            self.css("#user").send_keys(self.user)
            self.css("#password").send_keys(self.password)
            self.css("form.login button").click()
        self.wait(lambda: self.d.find_elements(By.ID, "listing"))

    def sign_out(self) -> None:
        self.go("/")
        if not self.d.current_url.endswith("/login"):
            self.css("form.signout button").click()
            self.wait(lambda: self.d.current_url.endswith("/login"))

    def wait(self, what: Callable[[], Any], timeout: float = WAIT) -> Any:
        return WebDriverWait(self.d, timeout, ignored_exceptions=[StaleElementReferenceException]
                             ).until(lambda _: what())  # fmt: skip

    def css(self, selector: str) -> WebElement:
        return self.d.find_element(By.CSS_SELECTOR, selector)

    def names(self) -> list[str]:
        links = self.d.find_elements(By.CSS_SELECTOR, "#rows tr.entry td.name > a")
        return [_label(a) for a in links]

    def row(self, name: str) -> WebElement:
        def find() -> WebElement | None:
            for tr in self.d.find_elements(By.CSS_SELECTOR, "#rows tr.entry"):
                if _label(tr.find_element(By.CSS_SELECTOR, "td.name > a")) == name:
                    return tr
            return None

        found: WebElement = self.wait(find)
        return found

    def act(self, name: str, button: str, field: tuple[str, str] | None = None) -> None:
        """Open a row's actions, fill in a field, press a button; wait for the message."""
        tr = self.row(name)
        tr.find_element(By.TAG_NAME, "summary").click()
        self.wait(lambda: tr.find_elements(By.CSS_SELECTOR, f"button.{button}"))
        if field is not None:
            box = tr.find_element(By.CSS_SELECTOR, f"input[name={field[0]}]")
            box.clear()
            box.send_keys(field[1])
        self.d.execute_script("document.getElementById('messages').textContent = ''")
        tr.find_element(By.CSS_SELECTOR, f"button.{button}").click()
        self.wait(lambda: self.css("#messages").text.strip())

    def _throttle(self, upload_bytes_per_second: int) -> None:
        conditions = {"offline": False, "latency": 0, "downloadThroughput": -1,
                      "uploadThroughput": upload_bytes_per_second}  # fmt: skip
        self.d.execute_cdp_cmd("Network.enable", {})
        self.d.execute_cdp_cmd("Network.emulateNetworkConditions", conditions)

    @contextlib.contextmanager
    def slow_uploads(self) -> Iterator[None]:
        """Uploads at 8 MiB/s meanwhile, so a test can act in the middle of one."""
        self._throttle(8 * 1024 * 1024)
        try:
            yield
        finally:
            self._throttle(-1)

    def upload_past(self, src: Path, offset: int) -> None:
        """Choose `src` for upload and wait until more than `offset` bytes went."""
        self.css("#pick-files").send_keys(str(src))
        self.wait(lambda: int(self.css("#overall").get_attribute("value") or 0) > offset)

    def shot(self, name: str) -> None:
        where = os.environ.get("DRIVE_WEB_SCREENSHOTS")
        if where:
            self.d.save_screenshot(str(Path(where) / f"web-{name}.png"))

    def fetch(self, path: str, revision: int | None = None) -> bytes:
        params: dict[str, Any] = {"path": path}
        if revision is not None:
            params["revision"] = revision
        with self.srv.client(self.token()) as http:
            r = http.get("/files/download", params=params)
            r.raise_for_status()
            return r.content


def _label(link: WebElement) -> str:
    """A listed entry's name."""
    return link.text.strip()


@pytest.fixture(scope="module")
def browser(
    shared_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Web]:
    root = tmp_path_factory.mktemp("web")
    user = f"w{uuid.uuid4().hex[:8]}"
    shared_server.add_user(user, "pw-" + user)
    (root / "downloads").mkdir()
    driver = chromium(root / "downloads")
    try:
        yield Web(driver, shared_server, user, root)
    finally:
        driver.quit()


@pytest.fixture
def web(browser: Web) -> Web:
    """The module's browser, signed in: each test also runs alone."""
    browser.sign_in()
    return browser


def _png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(b"\x00" + bytes([200, 60, 60]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))  # fmt: skip


def test_sign_in(browser: Web) -> None:
    web = browser
    web.sign_out()
    web.go("/")
    assert web.d.current_url.endswith("/login")
    web.css("#user").send_keys(web.user)
    web.css("#password").send_keys("wrong")
    web.css("form.login button").click()
    assert "Wrong user name or password" in web.wait(lambda: web.css("#login-error").text)
    web.shot("sign-in")
    web.css("#password").send_keys(web.password)
    web.css("form.login button").click()
    web.wait(lambda: web.d.find_elements(By.ID, "listing"))
    assert "My drive" in web.css(".crumbs").text


def test_upload_file_and_folder_with_progress(web: Web) -> None:
    data = os.urandom(3_000_000)
    src = web.root / "report.bin"
    src.write_bytes(data)
    web.css("#pick-files").send_keys(str(src))
    web.wait(lambda: web.d.find_elements(By.CSS_SELECTOR, "#upload-list li.done"))
    assert web.css("#upload-list li .upload-status").text == "Done"
    bar = web.css("#overall")
    assert bar.get_attribute("value") == bar.get_attribute("max") == str(len(data))
    web.row("report.bin")
    folder = web.root / "album"
    (folder / "inner").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "inner" / "b.txt").write_text("beta")
    web.css("#pick-folder").send_keys(str(folder))
    web.wait(lambda: len(web.d.find_elements(By.CSS_SELECTOR, "#upload-list li.done")) == 3)
    web.row("album")
    web.shot("upload")
    assert web.fetch("/report.bin") == data
    assert web.fetch("/album/inner/b.txt") == b"beta"


def test_interrupted_upload_resumes(web: Web) -> None:
    data = os.urandom(24 * 1024 * 1024)
    src = web.root / "big.bin"
    src.write_bytes(data)
    web.go("/")
    with web.slow_uploads():
        web.upload_past(src, 10 * 1024 * 1024)  # past the first 8 MiB part
        web.d.refresh()  # the tab reloads in the middle of the upload
    web.wait(lambda: web.d.find_elements(By.ID, "listing"))
    with web.slow_uploads():  # on an idle machine the rest went before the note was read
        web.css("#pick-files").send_keys(str(src))
        status = web.wait(lambda: web.css("#upload-list li .upload-status").text)
    assert status.startswith("Resumed at "), status
    assert int(status.split()[2]) >= 8 * 1024 * 1024
    web.wait(lambda: web.d.find_elements(By.CSS_SELECTOR, "#upload-list li.done"), timeout=60)
    assert hashlib.sha256(web.fetch("/big.bin")).digest() == hashlib.sha256(data).digest()


def test_an_upload_survives_the_network_dropping(web: Web) -> None:
    data = os.urandom(24 * 1024 * 1024)
    src = web.root / "flaky.bin"
    src.write_bytes(data)
    with TcpProxy(web.srv.port) as proxy:
        web.d.get(proxy.url + "/")  # the same host, so the session cookie goes along
        with web.slow_uploads():
            web.upload_past(src, 10 * 1024 * 1024)
            proxy.cut()  # every connection dropped, new ones refused
            web.wait(lambda: "Connection lost" in web.css("#upload-list li .upload-status").text)
            proxy.restore()
        web.wait(lambda: web.d.find_elements(By.CSS_SELECTOR, "#upload-list li.done"), timeout=60)
    assert web.fetch("/flaky.bin") == data


def test_drag_and_drop_uploads(web: Web) -> None:
    web.go("/")
    web.d.execute_script(
        "const dt = new DataTransfer();"
        "dt.items.add(new File(['dropped bytes'], 'dropped.txt'));"
        "document.getElementById('dropzone').dispatchEvent("
        "  new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));"
    )
    web.wait(lambda: web.d.find_elements(By.CSS_SELECTOR, "#upload-list li.done"))
    web.row("dropped.txt")
    assert web.fetch("/dropped.txt") == b"dropped bytes"


def test_rename_move_delete_and_restore_from_trash(web: Web) -> None:
    with web.srv.client(web.token()) as http:
        r = http.post("/files/upload", params={"path": "/report.bin"}, content=b"figures")
        r.raise_for_status()
    web.go("/")
    web.css("#new-folder").send_keys("Projects")
    web.css("#new-folder + button").click()
    web.row("Projects")
    web.act("report.bin", "rename", ("name", "report-2026.bin"))
    web.row("report-2026.bin")
    assert "report.bin" not in web.names()
    web.act("report-2026.bin", "move", ("to", "/Projects"))
    web.wait(lambda: "report-2026.bin" not in web.names())
    web.row("Projects").find_element(By.CSS_SELECTOR, "td.name > a").click()
    web.row("report-2026.bin")
    web.act("report-2026.bin", "delete")
    web.wait(lambda: "report-2026.bin" not in web.names())
    web.go("/web/trash")
    web.shot("trash")
    buttons = "button.undelete"
    restore = web.wait(
        lambda: [
            b
            for b in web.d.find_elements(By.CSS_SELECTOR, buttons)
            if "/Projects/report-2026.bin" in (b.get_attribute("textContent") or "")
        ]
    )
    restore[0].click()
    web.wait(lambda: "Restored" in web.css("#messages").text)
    web.go("/?path=%2FProjects")
    web.row("report-2026.bin")


def test_restore_an_old_revision(web: Web) -> None:
    with web.srv.client(web.token()) as http:
        for body in (b"first draft", b"second draft"):
            http.post(
                "/files/upload", params={"path": "/notes.txt"}, content=body
            ).raise_for_status()
    web.go("/web/history?path=%2Fnotes.txt")
    assert len(web.d.find_elements(By.CSS_SELECTOR, "tr.revision")) == 2
    web.shot("history")
    web.css("tr.revision[data-revision='1'] button.restore").click()
    web.wait(lambda: len(web.d.find_elements(By.CSS_SELECTOR, "tr.revision")) == 3)
    assert web.fetch("/notes.txt") == b"first draft"


def test_download_gives_the_same_bytes(web: Web) -> None:
    data = os.urandom(1_500_000)
    with web.srv.client(web.token()) as http:
        http.post(
            "/files/upload", params={"path": "/photo raw.dat"}, content=data
        ).raise_for_status()
    web.go("/web/view?path=%2Fphoto%20raw.dat")
    web.d.find_element(By.LINK_TEXT, "Download").click()
    target = web.downloads / "photo raw.dat"
    web.wait(lambda: target.exists() and target.stat().st_size == len(data))
    assert target.read_bytes() == data


def test_preview_an_image(web: Web) -> None:
    with web.srv.client(web.token()) as http:
        http.post(
            "/files/upload", params={"path": "/red.png"}, content=_png(64, 48)
        ).raise_for_status()
    web.go("/web/view?path=%2Fred.png")
    script = "const i = document.getElementById('preview'); return i.complete && i.naturalWidth;"
    width = web.wait(lambda: web.d.execute_script(script))
    assert width == 64
    web.shot("preview")


def test_a_hostile_name_is_shown_as_text(web: Web) -> None:
    with web.srv.client(web.token()) as http:
        http.post("/files/upload", params={"path": "/" + XSS}, content=b"x").raise_for_status()
    web.go("/")
    web.row(XSS)
    assert web.d.find_elements(By.CSS_SELECTOR, "#rows img, #activity img") == []
    web.go("/web/view?path=" + "%2F%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")
    assert web.css("h1.path").text == XSS
    with pytest.raises(NoAlertPresentException):
        web.d.switch_to.alert.text  # noqa: B018


@requires_fuse
def test_a_file_written_on_a_mount_appears(web: Web) -> None:
    web.go("/")
    web.wait(lambda: web.d.find_elements(By.ID, "listing"))
    home = login_home(web.srv, web.root / "home", web.user, web.password, device="laptop")
    with MountProcess(home, web.root / "mnt") as m:
        (m.mnt / "from-laptop.txt").write_text("hello from the laptop")
        m.wait_synced()
        started = time.monotonic()
        web.row("from-laptop.txt")  # no reload: the page long-polls the change feed
        assert time.monotonic() - started < 10
        web.wait(lambda: "laptop" in web.css("#activity").text)
        web.wait(
            lambda: (
                "laptop" in web.row("from-laptop.txt").find_element(By.CSS_SELECTOR, "td.by").text
            )
        )
        web.shot("browse")
