"""Fixtures shared by the capture/snapshot/store tests (imported by those modules)."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_perfreplay.replay.call import read_snapshot
from pytest_perfreplay.snapshot.format import Keyring, Snapshot
from pytest_perfreplay.snapshot.store import Store

capture_module = importlib.import_module("pytest_perfreplay.capture.decorator")

KEY = b"test-signing-key-0123456789abcdef"


@dataclass
class Cap:
    root: Path
    store: Store
    keyring: Keyring

    def snapshots(self) -> list[Snapshot]:
        return [read_snapshot(p, keyring=self.keyring) for p in self.store.snapshot_paths()]

    def raw_bytes(self) -> bytes:
        return b"".join(p.read_bytes() for p in self.root.rglob("*") if p.is_file())


@pytest.fixture
def cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cap]:
    """Capture on, into a fresh store under tmp_path, signing with a known key."""
    for var in ("PERFREPLAY_KEY", "PERFREPLAY_VERIFY_KEYS", "PERFREPLAY_TARGETS"):
        monkeypatch.delenv(var, raising=False)
    capture_module._reset()
    root = tmp_path / "store"
    capture_module.configure(enabled=True, store=root, key=KEY)
    yield Cap(root, Store(root), Keyring.from_secrets(KEY))
    capture_module._reset()


@pytest.fixture
def capture_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="pytest_perfreplay.capture")
    return caplog
