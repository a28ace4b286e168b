"""Errors the `drive` command reports as one line on stderr instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A failure the user can cause and fix: printed as one line, non-zero exit."""

    def __init__(self, message: str, exit_status: int = 1) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class NotLandedError(Exception):
    """The subcommand's feature has not been built yet."""

    def __init__(self, spec: str) -> None:
        super().__init__(
            f"this subcommand is not available yet ({spec} has not landed); "
            "see the project's open issues"
        )
