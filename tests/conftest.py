"""Shared test set-up: fixture plugins, and a clean environment for inner pytest sessions."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.speedscope_app", "tests.s3_server"]


@pytest.fixture(autouse=True)
def _inner_sessions_are_not_xdist_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under `-n`, pytester's inner sessions would inherit these, and pytest-benchmark
    # then silently disables timing in them.
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
