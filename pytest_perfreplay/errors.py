"""The project's own error types: every failure a user can hit has one of these."""

from __future__ import annotations


class PerfReplayError(Exception):
    """Base class for all pytest-perfreplay errors."""


class SnapshotError(PerfReplayError):
    """A snapshot file cannot be trusted or read. The message says why and what to do."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class SignatureError(SnapshotError):
    """The snapshot is unsigned, signed with an unknown key, or was altered after signing."""


class StoreError(PerfReplayError):
    """The store cannot be reached, read or written."""
