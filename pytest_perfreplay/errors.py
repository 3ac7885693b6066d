"""The project's own error types: every failure a user can hit has one of these."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with terminal control characters escaped (``\x1b`` -> ``\\x1b``).

    Headers, file names and object keys come from outside: printed raw, an escape
    sequence could rewrite the terminal (hide a line, fake a "verified").
    """
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class PerfReplayError(Exception):
    """Base class for all pytest-perfreplay errors."""


class SnapshotError(PerfReplayError):
    """A snapshot file cannot be trusted or read. The message says why and what to do."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(printable(f"{path}: {message}" if path else message))


class SignatureError(SnapshotError):
    """The snapshot is unsigned, signed with an unknown key, or was altered after signing."""


class StoreError(PerfReplayError):
    """The store cannot be reached, read or written."""

    def __init__(self, message: str) -> None:
        super().__init__(printable(message))
