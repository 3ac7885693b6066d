"""Does today's code still return what production returned? Equality with a readable diff.

Who decides equality, first answer wins:

1. the ``perf_replay_compare`` fixture, when a conftest overrides it with a callable
   ``(expected, actual) -> bool | None``;
2. the ``pytest_perfreplay_compare`` hook;
3. the built-ins: floats with a tolerance, numpy arrays element-wise, pandas frames and
   series through ``pandas.testing`` (only when pandas is already imported by the result),
   containers recursively, else ``==``.
"""

from __future__ import annotations

import difflib
import math
import pprint
import reprlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from .call import CallOutcome

MAX_DIFF_LINES = 40
MAX_ITEM_DIFFS = 10
#: Above this many elements, a container is summarized rather than pretty-printed whole.
MAX_PPRINT_ITEMS = 200

Compare = Callable[[Any, Any], "bool | None"]


class ResultMismatch(AssertionError):
    """The replayed call's result differs from the captured one."""


def _is_numpy(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "numpy" and hasattr(value, "shape")


def _is_pandas(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "pandas" and hasattr(value, "shape")


def _pandas_difference(expected: Any, actual: Any, rel: float, abs_: float) -> str | None:
    """pandas' own explanation of a difference, or None when equal.

    Only reached for pandas results, so pandas is never imported (or required) otherwise.
    """
    import pandas.testing as pdt  # type: ignore[import-untyped, import-not-found, unused-ignore]

    if type(expected) is not type(actual):
        return f"type differs: {type(expected).__name__} != {type(actual).__name__}"
    check = {
        "DataFrame": pdt.assert_frame_equal,
        "Series": pdt.assert_series_equal,
        "Index": pdt.assert_index_equal,
    }.get(type(expected).__name__)
    if check is None:
        return None if bool(expected.equals(actual)) else "values differ"
    try:
        check(expected, actual, rtol=max(rel, 1e-12), atol=abs_)
    except AssertionError as exc:
        return str(exc)
    return None


def values_equal(expected: Any, actual: Any, rel: float = 1e-9, abs_: float = 0.0) -> bool:
    """Equality that treats floats with a tolerance and compares arrays element-wise."""
    if isinstance(expected, float) and isinstance(actual, float):
        return math.isclose(expected, actual, rel_tol=rel, abs_tol=abs_) or (
            math.isnan(expected) and math.isnan(actual)
        )
    if _is_numpy(expected) or _is_numpy(actual):
        import numpy as np

        try:
            return bool(
                np.shape(expected) == np.shape(actual)
                and np.allclose(expected, actual, rtol=rel, atol=abs_, equal_nan=True)
            )
        except TypeError:  # non-numeric dtypes
            return bool(np.array_equal(expected, actual))
    if _is_pandas(expected):
        return _pandas_difference(expected, actual, rel, abs_) is None
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


_short_repr = reprlib.Repr()
_short_repr.maxstring = 80
_short_repr.maxother = 80
_short_repr.maxlist = _short_repr.maxtuple = _short_repr.maxdict = _short_repr.maxset = 6


def _item_diff(expected: Any, actual: Any, rel: float, abs_: float) -> list[str] | None:
    """Per-element differences for big same-type containers, or None to use a text diff."""
    if isinstance(expected, Mapping) and isinstance(actual, Mapping):
        if len(expected) + len(actual) <= MAX_PPRINT_ITEMS:
            return None
        lines = []
        missing = [k for k in expected if k not in actual]
        extra = [k for k in actual if k not in expected]
        if missing:
            lines.append(f"keys missing from the replayed result: {_short_repr.repr(missing)}")
        if extra:
            lines.append(f"keys only in the replayed result: {_short_repr.repr(extra)}")
        changed = [
            k
            for k in expected
            if k in actual and not values_equal(expected[k], actual[k], rel, abs_)
        ]
        for k in changed[:MAX_ITEM_DIFFS]:
            lines.append(
                f"[{k!r}]: captured {_short_repr.repr(expected[k])} != "
                f"replayed {_short_repr.repr(actual[k])}"
            )
        if len(changed) > MAX_ITEM_DIFFS:
            lines.append(f"... and {len(changed) - MAX_ITEM_DIFFS} more differing keys")
        return lines
    if (
        isinstance(expected, Sequence)
        and not isinstance(expected, (str, bytes))
        and type(expected) is type(actual)
    ):
        assert isinstance(actual, Sequence)
        if len(expected) + len(actual) <= MAX_PPRINT_ITEMS:
            return None
        lines = []
        if len(expected) != len(actual):
            lines.append(f"length: captured {len(expected)}, replayed {len(actual)}")
        shown = 0
        differing = 0
        for i, (e, a) in enumerate(zip(expected, actual, strict=False)):
            if not values_equal(e, a, rel, abs_):
                differing += 1
                if shown < MAX_ITEM_DIFFS:
                    shown += 1
                    lines.append(
                        f"[{i}]: captured {_short_repr.repr(e)} != replayed {_short_repr.repr(a)}"
                    )
        if differing > shown:
            lines.append(f"... and {differing - shown} more differing elements")
        return lines
    return None


def bounded_diff(expected: Any, actual: Any, rel: float = 1e-9, abs_: float = 0.0) -> str:
    """A readable diff of at most ``MAX_DIFF_LINES`` lines, cheap even for huge results."""
    if _is_pandas(expected):
        text = _pandas_difference(expected, actual, rel, abs_) or "values differ"
        lines = text.splitlines()
    elif _is_numpy(expected) or _is_numpy(actual):
        lines = _numpy_diff(expected, actual, rel, abs_)
    else:
        items = _item_diff(expected, actual, rel, abs_)
        if items is not None:
            lines = items
        else:
            left = pprint.pformat(expected, width=88).splitlines()
            right = pprint.pformat(actual, width=88).splitlines()
            lines = list(
                difflib.unified_diff(left, right, "captured", "replayed", lineterm="", n=2)
            )
    if len(lines) > MAX_DIFF_LINES:
        hidden = len(lines) - MAX_DIFF_LINES
        lines = lines[:MAX_DIFF_LINES] + [f"... {hidden} more diff lines"]
    return "\n".join(lines) or (
        f"captured {_short_repr.repr(expected)} != replayed {_short_repr.repr(actual)}"
    )


def _numpy_diff(expected: Any, actual: Any, rel: float, abs_: float) -> list[str]:
    import numpy as np

    e, a = np.asarray(expected), np.asarray(actual)
    if e.shape != a.shape:
        return [f"shape: captured {e.shape}, replayed {a.shape}"]
    try:
        bad = ~np.isclose(e, a, rtol=rel, atol=abs_, equal_nan=True)
    except TypeError:
        bad = e != a
    where = np.argwhere(bad)
    lines = [f"{len(where)} of {e.size} elements differ (rtol={rel:g}, atol={abs_:g})"]
    for idx in where[:MAX_ITEM_DIFFS]:
        key = tuple(int(i) for i in idx)
        lines.append(f"{list(key)}: captured {e[key]!r} != replayed {a[key]!r}")
    return lines


def check_result(
    expected: Any,
    outcome: CallOutcome,
    config: pytest.Config,
    *,
    compare: Compare | None = None,
    rel: float = 1e-9,
    abs_: float = 0.0,
) -> None:
    """Raise ResultMismatch when the replayed outcome differs from the captured one."""
    kind, value = expected
    if kind == "raise":
        type_name, message = value
        if outcome.ok:
            raise ResultMismatch(
                f"captured call raised {type_name}: {message}\nreplayed call returned "
                f"{_short_repr.repr(outcome.value)}"
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
            f"captured call returned {_short_repr.repr(value)}\nreplayed call raised "
            f"{type(exc).__qualname__}: {exc}"
        )
    equal: bool | None = compare(value, outcome.value) if compare is not None else None
    if equal is None:
        equal = config.hook.pytest_perfreplay_compare(
            config=config, expected=value, actual=outcome.value
        )
    if equal is None:
        equal = values_equal(value, outcome.value, rel, abs_)
    if not equal:
        raise ResultMismatch(
            "result differs from the captured one (a behaviour change, not just a speed "
            "change):\n" + bounded_diff(value, outcome.value, rel, abs_)
        )
