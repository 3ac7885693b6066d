"""Does today's code still return what production returned? Equality with a readable diff."""

from __future__ import annotations

import difflib
import math
import pprint
from typing import Any

import pytest

from .replay import CallOutcome

MAX_DIFF_LINES = 40


class ResultMismatch(AssertionError):
    """The replayed call's result differs from the captured one."""


def values_equal(expected: Any, actual: Any, rel: float = 1e-9, abs_: float = 0.0) -> bool:
    """Equality that treats floats with a tolerance and compares numpy arrays element-wise."""
    if isinstance(expected, float) and isinstance(actual, float):
        return math.isclose(expected, actual, rel_tol=rel, abs_tol=abs_) or (
            math.isnan(expected) and math.isnan(actual)
        )
    if type(expected).__module__ == "numpy" and hasattr(expected, "shape"):
        import numpy as np

        try:
            return bool(
                np.shape(expected) == np.shape(actual)
                and np.allclose(expected, actual, rtol=rel, atol=abs_, equal_nan=True)
            )
        except TypeError:
            return bool(np.array_equal(expected, actual))
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(
            values_equal(expected[k], actual[k], rel, abs_) for k in expected
        )
    if isinstance(expected, (list, tuple)) and type(expected) is type(actual):
        return len(expected) == len(actual) and all(
            values_equal(e, a, rel, abs_) for e, a in zip(expected, actual, strict=True)
        )
    try:
        return bool(expected == actual)
    except Exception:
        return False


def bounded_diff(expected: Any, actual: Any) -> str:
    left = pprint.pformat(expected, width=88).splitlines()
    right = pprint.pformat(actual, width=88).splitlines()
    lines = list(difflib.unified_diff(left, right, "captured", "replayed", lineterm="", n=2))
    if len(lines) > MAX_DIFF_LINES:
        hidden = len(lines) - MAX_DIFF_LINES
        lines = lines[:MAX_DIFF_LINES] + [f"... {hidden} more diff lines"]
    return "\n".join(lines) or f"captured {expected!r} != replayed {actual!r}"


def check_result(expected: Any, outcome: CallOutcome, config: pytest.Config) -> None:
    """Raise ResultMismatch when the replayed outcome differs from the captured one."""
    kind, value = expected
    if kind == "raise":
        type_name, message = value
        if outcome.ok:
            raise ResultMismatch(
                f"captured call raised {type_name}: {message}\nreplayed call returned "
                f"{_short(outcome.value)}"
            )
        exc = outcome.value
        got = f"{type(exc).__module__}.{type(exc).__qualname__}"
        if got != type_name or str(exc) != message:
            raise ResultMismatch(
                f"captured call raised {type_name}: {message}\nreplayed call raised {got}: {exc}"
            )
        return
    if not outcome.ok:
        exc = outcome.value
        raise ResultMismatch(
            f"captured call returned {_short(value)}\nreplayed call raised "
            f"{type(exc).__qualname__}: {exc}"
        )
    custom = config.hook.pytest_perfreplay_compare(
        config=config, expected=value, actual=outcome.value
    )
    equal = custom[0] if custom else values_equal(value, outcome.value)
    if not equal:
        raise ResultMismatch(
            "result differs from the captured one (a behaviour change, not just a speed "
            "change):\n" + bounded_diff(value, outcome.value)
        )


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
