"""pytest-perfreplay: capture real calls in production, replay them as benchmarks, profile them."""

from __future__ import annotations

__version__ = "0.1.0"

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
