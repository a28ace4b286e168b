"""The server's collector settings (in a child process: they are process-wide)."""

from __future__ import annotations

import subprocess
import sys

from server import gc_tuning

CODE = """
import gc
from server.gc_tuning import tune_gc
tune_gc()
print(gc.get_threshold(), gc.get_freeze_count() > 0)
"""


def test_tune_gc_freezes_what_is_loaded_and_raises_the_thresholds() -> None:
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    expected = (gc_tuning.YOUNG_OBJECTS, gc_tuning.MIDDLE_ROUNDS, gc_tuning.OLD_ROUNDS)
    assert done.stdout.split() == [*str(expected).split(), "True"]
