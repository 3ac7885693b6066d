"""Fixtures shared by the capture/snapshot/store tests (imported by those modules)."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_perfreplay.replay.call import read_snapshot
from pytest_perfreplay.snapshot.format import Keyring, Snapshot
from pytest_perfreplay.snapshot.store import Store
from tests.capture_helpers import targets

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


class FakeClock:
    """Stands in for the ``time`` module inside the capture wrapper: ``perf_counter`` only
    moves when a target calls :meth:`advance`, so measured durations are exact whatever
    else the machine is doing. Everything else is the real ``time``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Durations as the calls declare them: decorate after this fixture, then call
    ``targets.takes(seconds)``."""
    clock = FakeClock()
    monkeypatch.setattr(capture_module, "time", clock)
    monkeypatch.setattr(targets, "clock", clock)
    return clock


@pytest.fixture
def capture_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="pytest_perfreplay.capture")
    return caplog
