"""drive.malloc_tuning: glibc takes every setting (a refused one would silently not apply)."""

from __future__ import annotations

import subprocess
import sys


def test_glibc_accepts_every_malloc_setting() -> None:
    # In a fresh interpreter: the settings are process-wide and must not leak into pytest.
    code = "from drive.malloc_tuning import tune_malloc; print(tune_malloc())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
