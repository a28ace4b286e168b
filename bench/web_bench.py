"""The web app in a headless browser: opening a folder of 10,000 entries, and a 100 MB
upload through the page beside `curl` uploading the same file through the API.

Usage: `python bench/web_bench.py [--entries 10000] [--size-mb 100]`

Starts its own server (tests/helpers/server_proc.py) and Chromium (tests/helpers/browser.py).
The folder time is from asking for the page to its first rows being in the document; the
upload times are from choosing the file to the page saying it is done (resumable, 8 MiB
parts), and curl's whole run (`POST /files/upload`, one request; and resumable: one part).
Timings on shared machines are noisy: compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.helpers.browser import chromium
from tests.helpers.server_proc import ServerProcess


def _curl(srv: ServerProcess, token: str, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["curl", "-sS", "-f", "-o", "/dev/null", "--cacert", str(srv.cert_path),
         "-H", f"Authorization: Bearer {token}", *args],
        check=True,
    )  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--no-upload", action="store_true", help="only the folder")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(Path(tmp) / "data") as srv:
        root = Path(tmp)
        srv.add_user("bench", "pw")
        token = srv.login("bench", "pw")
        with srv.client(token) as api:
            api.post("/api/v1/mkdir", json={"path": "/many"}).raise_for_status()
            commits = [{"path": f"/many/file-{i:06d}.txt", "base_rev": None, "blocks": [],
                        "size": 0} for i in range(args.entries)]  # fmt: skip
            for i in range(0, len(commits), 1000):
                batch = {"commits": commits[i : i + 1000]}
                api.post("/api/v1/commit/batch", json=batch).raise_for_status()
        (root / "dl").mkdir()
        driver = chromium(root / "dl")
        try:
            driver.get(srv.url + "/login")
            driver.find_element(By.ID, "user").send_keys("bench")
            driver.find_element(By.ID, "password").send_keys("pw")
            driver.find_element(By.CSS_SELECTOR, "form.login button").click()
            WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "listing"))
            for sort in ("name", "modified"):
                started = time.perf_counter()
                driver.get(f"{srv.url}/?path=%2Fmany&sort={sort}")
                WebDriverWait(driver, 30).until(
                    lambda d: d.find_elements(By.CSS_SELECTOR, "#rows tr.entry")
                )
                took = time.perf_counter() - started
                nav = driver.execute_script(
                    "const n = performance.getEntriesByType('navigation')[0];"
                    "return [n.responseStart, n.responseEnd, n.domContentLoadedEventEnd,"
                    " n.loadEventEnd];"
                )
                marks = ", ".join(
                    f"{what} {ms / 1000:.2f} s"
                    for what, ms in zip(
                        ("first byte", "page received", "DOM ready", "loaded"), nav, strict=True
                    )
                )
                print(f"folder of {args.entries} entries, sorted by {sort}: {took:.2f} s ({marks})")
            if args.no_upload:
                return
            data = root / "big.bin"
            with data.open("wb") as f:
                for _ in range(args.size_mb):
                    f.write(os.urandom(1_000_000))
            driver.get(srv.url + "/")
            started = time.perf_counter()
            driver.find_element(By.ID, "pick-files").send_keys(str(data))
            WebDriverWait(driver, 600, poll_frequency=0.05).until(
                lambda d: d.find_elements(By.CSS_SELECTOR, "#upload-list li.done")
            )
            took = time.perf_counter() - started
            print(f"{args.size_mb} MB upload in the browser: {took:.2f} s")
        finally:
            driver.quit()
        simple = _curl(srv, token, "--data-binary", f"@{data}", "-H",
                       "Content-Type: application/octet-stream",
                       f"{srv.url}/files/upload?path=/curl.bin&uploadType=media")  # fmt: skip
        print(f"{args.size_mb} MB upload with curl (simple upload): {simple:.2f} s")
        size = data.stat().st_size
        with srv.client(token) as api:
            start = api.post("/files/upload", params={"path": "/curl2.bin",
                             "uploadType": "resumable"})  # fmt: skip
            sid = start.json()["session_id"]
        part = _curl(srv, token, "-X", "PUT", "--data-binary", f"@{data}",
                     "-H", f"Content-Range: bytes 0-{size - 1}/{size}",
                     f"{srv.url}/files/upload/sessions/{sid}")  # fmt: skip
        print(f"{args.size_mb} MB upload with curl (resumable, one part): {part:.2f} s")


if __name__ == "__main__":
    main()
