"""Progress bars for long work, drawn with rich on a terminal and silent everywhere else.

Scripts and logs must never receive carriage returns or bar art, so a bar appears only when
stderr is a terminal (and `TERM` is not `dumb`); otherwise every method is a cheap no-op.
Two shapes cover the command's needs:

    with Progress("uploading changes", unit="changes") as bar:   # a queue draining
        bar.remaining(n)                                         # total = largest n seen
    with Progress("restoring", total=size, unit="bytes") as bar: # a known amount of work
        bar.advance(len(chunk))

With no total and no `remaining()` call the bar is a spinner with the description.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import IO, Any

__all__ = ["Progress", "on_terminal"]


def on_terminal(stream: IO[str] | None = None) -> bool:
    """True when `stream` (default stderr) is an interactive terminal that can draw bars."""
    stream = stream if stream is not None else sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


class Progress:
    """One progress bar on stderr (see the module docstring); a no-op off a terminal."""

    def __init__(
        self,
        description: str,
        *,
        total: int | None = None,
        unit: str = "",
        stream: IO[str] | None = None,
        force: bool | None = None,
    ) -> None:
        self.description = description
        self.total = total
        self.unit = unit
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = on_terminal(self._stream) if force is None else force
        self._bar: Any = None
        self._task: Any = None
        self._seen_max = 0

    def __enter__(self) -> Progress:
        if not self.enabled:
            return self
        import rich.console
        import rich.progress as rp

        console = rich.console.Console(file=self._stream, force_terminal=True)
        columns: list[Any] = [rp.SpinnerColumn(), rp.TextColumn("{task.description}")]
        if self.unit == "bytes":
            columns += [rp.BarColumn(), rp.DownloadColumn(), rp.TransferSpeedColumn()]
        else:
            columns += [rp.BarColumn(), rp.MofNCompleteColumn()]
            if self.unit:
                columns.append(rp.TextColumn(self.unit))
        columns.append(rp.TimeRemainingColumn())
        self._bar = rp.Progress(*columns, console=console, transient=False)
        self._bar.start()
        self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def advance(self, amount: int) -> None:
        """Count `amount` more units of work as done."""
        if self._bar is not None:
            self._bar.advance(self._task, amount)

    def set_total(self, total: int) -> None:
        """Set (or correct) how much work there is."""
        self.total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def remaining(self, left: int) -> None:
        """A queue has `left` items; the total is the most it ever held while we watched."""
        self._seen_max = max(self._seen_max, left)
        if self._bar is not None:
            self._bar.update(self._task, total=self._seen_max, completed=self._seen_max - left)

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
