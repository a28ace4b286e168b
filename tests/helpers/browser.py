"""A headless Chromium driven by Selenium, for the web app's tests and benchmark.

Debian's `chromium` and `chromium-driver` (scripts/bootstrap.sh installs them); the driver
path is given explicitly and Selenium Manager is kept offline, so nothing downloads a
browser. `--ignore-certificate-errors` accepts the test server's self-signed certificate
(tests only). Downloads go to `downloads`.
"""

from __future__ import annotations

import os
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def chromium(downloads: Path, width: int = 1280, height: int = 900) -> webdriver.Chrome:
    """Start a headless Chromium (quit it when done)."""
    os.environ["SE_OFFLINE"] = "true"
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--ignore-certificate-errors", f"--window-size={width},{height}",
                "--disable-extensions", "--no-first-run"):  # fmt: skip
        opts.add_argument(arg)
    opts.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads),
                  "download.prompt_for_download": False},
    )  # fmt: skip
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    return driver
