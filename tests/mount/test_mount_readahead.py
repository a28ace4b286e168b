"""The mount asks the kernel for 1 MiB reads (root only; others keep the default)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mountfs.readahead import READ_AHEAD_KIB, raise_read_ahead
from tests.helpers.mount_proc import MountProcess


def test_finds_the_device_of_the_mount_point_in_mountinfo(tmp_path, monkeypatch):
    sysfs = tmp_path / "bdi"
    (sysfs / "0:77").mkdir(parents=True)
    (sysfs / "0:77" / "read_ahead_kb").write_text("128\n")
    fake = tmp_path / "mountinfo"
    fake.write_text(
        "22 1 0:21 / /proc rw - proc proc rw\n"
        "90 22 0:77 / /mnt/my\\040drive rw,nosuid - fuse.drive drive rw\n"
    )
    real_read_text = Path.read_text
    monkeypatch.setattr(
        Path, "read_text",
        lambda self, *a, **k: real_read_text(fake if str(self) == "/proc/self/mountinfo" else self,
                                             *a, **k),
    )  # fmt: skip
    assert raise_read_ahead(Path("/mnt/my drive"), sysfs=sysfs)
    assert (sysfs / "0:77" / "read_ahead_kb").read_text() == f"{READ_AHEAD_KIB}\n"
    assert not raise_read_ahead(Path("/not/mounted"), sysfs=sysfs)


@pytest.mark.e2e
@pytest.mark.skipif(os.geteuid() != 0, reason="only root may change a device's read-ahead")
def test_a_real_mount_gets_the_bigger_read_ahead(mounted: MountProcess):
    dev = os.stat(mounted.mnt).st_dev
    knob = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    deadline = time.monotonic() + 10  # set by a task shortly after FUSE_INIT
    while int(knob.read_text()) != READ_AHEAD_KIB and time.monotonic() < deadline:
        time.sleep(0.05)
    assert int(knob.read_text()) == READ_AHEAD_KIB
