"""pytest-perfreplay: capture real calls in production, replay them as benchmarks, profile them."""

from __future__ import annotations

from ._version import __version__
from .capture import capture, configure
from .errors import PerfReplayError, SignatureError, SnapshotError, StoreError
from .snapshot import Placeholder, Snapshot

__all__ = [
    "__version__",
    "capture",
    "configure",
    "PerfReplayError",
    "Placeholder",
    "SignatureError",
    "Snapshot",
    "SnapshotError",
    "StoreError",
]
