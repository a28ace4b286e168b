"""Two devices that share a name (both default to the host name) still see each other."""

from __future__ import annotations

import pytest

from tests.helpers.mount_proc import MountProcess, login_home, requires_fuse
from tests.sync.conftest import SYNC_ENV, Account, read_or_none, wait_for

pytestmark = [pytest.mark.e2e, requires_fuse]


def test_devices_with_the_same_name_follow_each_other(account: Account) -> None:
    homes = [
        login_home(account.server, account.root / f"same-{i}", account.name, account.password,
                   "laptop")
        for i in (1, 2)
    ]  # fmt: skip
    with (
        MountProcess(homes[0], account.root / "mnt-1", env=SYNC_ENV) as a,
        MountProcess(homes[1], account.root / "mnt-2", env=SYNC_ENV) as b,
    ):
        (a.mnt / "from-1.txt").write_bytes(b"written on the first laptop")
        wait_for(lambda: read_or_none(b.mnt / "from-1.txt") == b"written on the first laptop",
                 "the first laptop's file on the second")  # fmt: skip
        (b.mnt / "from-2.txt").write_bytes(b"written on the second laptop")
        wait_for(lambda: read_or_none(a.mnt / "from-2.txt") == b"written on the second laptop",
                 "the second laptop's file on the first")  # fmt: skip
