"""Hooks users can implement in conftest.py."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec(firstresult=True)
def pytest_perfreplay_compare(config: pytest.Config, expected: Any, actual: Any) -> bool | None:
    """Decide whether a replayed result equals the captured one.

    Return True or False to decide, or None to fall back to the built-in comparison
    (floats with a relative tolerance of 1e-9, numpy arrays element-wise, containers
    recursively, else ``==``).
    """
