"""Shared test set-up: fixture plugins, and a clean environment for inner pytest sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_perfreplay.replay.stats import preload_scipy

# pytester restores sys.modules after each test, dropping whatever was first imported
# during it; numpy's C extensions cannot then be imported a second time. Import them once,
# here, so a test's order in the run never decides whether scipy works in it.
preload_scipy()

pytest_plugins = ["tests.speedscope_app", "tests.s3_server"]


@pytest.fixture(autouse=True)
def _inner_sessions_are_not_xdist_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under `-n`, pytester's inner sessions would inherit these, and pytest-benchmark
    # then silently disables timing in them.
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _user_keys_in_a_temp_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    # The default signing key lives per user under $XDG_STATE_HOME: never write the real
    # home from tests. Inner pytester sessions and subprocesses inherit the variable.
    state = tmp_path_factory.mktemp("xdg-state")
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state
