"""Process-wide counters rendered in the Prometheus text format at `GET /metrics`.

Plain in-memory numbers guarded by one lock (worker threads update the block counters);
nothing here blocks or allocates per request beyond a dictionary key.
"""

from __future__ import annotations

import threading
from collections import Counter


class Metrics:
    """The server's counters (see docs/protocol.md "Metrics" for their names)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.block_bytes_received = 0
        self.block_bytes_stored = 0
        self.block_bytes_served = 0
        self.dedupe_hits = 0
        self.archive_reads = 0
        self.archive_bytes_read = 0
        self.blocks_archived = 0
        self.blocks_unarchived = 0
        self.longpolls_open = 0
        self.longpolls_parked = 0
        self.commit_seconds_sum = 0.0
        self.commit_count = 0

    def count_request(self, route: str, status: int) -> None:
        """One finished request."""
        with self._lock:
            self.requests[(route, status)] += 1

    def add(self, name: str, amount: int = 1) -> None:
        """Add to one of the integer counters by attribute name."""
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def observe_commit(self, seconds: float) -> None:
        """One commit's latency."""
        with self._lock:
            self.commit_seconds_sum += seconds
            self.commit_count += 1

    def render(self) -> str:
        """The Prometheus text exposition."""
        with self._lock:
            lines = [
                "# HELP drive_requests_total HTTP requests by route and status.",
                "# TYPE drive_requests_total counter",
            ]
            for (route, status), n in sorted(self.requests.items()):
                lines.append(f'drive_requests_total{{route="{route}",status="{status}"}} {n}')
            for name, kind, value, help_text in (
                ("drive_block_bytes_received_total", "counter", self.block_bytes_received,
                 "Block bytes received from clients (wire frames and upload bodies)."),
                ("drive_block_bytes_stored_total", "counter", self.block_bytes_stored,
                 "Sealed block bytes written to the block store."),
                ("drive_block_bytes_served_total", "counter", self.block_bytes_served,
                 "Block and download bytes sent to clients."),
                ("drive_dedupe_hits_total", "counter", self.dedupe_hits,
                 "Blocks received that the account already held."),
                ("drive_archive_reads_total", "counter", self.archive_reads,
                 "Blocks read from the archive tier."),
                ("drive_archive_bytes_read_total", "counter", self.archive_bytes_read,
                 "Sealed block bytes read from the archive tier."),
                ("drive_blocks_archived_total", "counter", self.blocks_archived,
                 "Blocks this process moved to the archive tier."),
                ("drive_blocks_unarchived_total", "counter", self.blocks_unarchived,
                 "Blocks this process moved back from the archive tier."),
                ("drive_longpolls_open", "gauge", self.longpolls_open,
                 "Long-poll requests currently waiting."),
                ("drive_longpolls_parked", "gauge", self.longpolls_parked,
                 "Of those, the ones parked outside hypercorn (no task each)."),
            ):  # fmt: skip
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
            lines += [
                "# HELP drive_commit_seconds Commit latency.",
                "# TYPE drive_commit_seconds summary",
                f"drive_commit_seconds_sum {self.commit_seconds_sum:.6f}",
                f"drive_commit_seconds_count {self.commit_count}",
            ]
        return "\n".join(lines) + "\n"
