"""Result equality and bounded diffs, without a pytest session."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pytest_perfreplay.replay.call import CallOutcome
from pytest_perfreplay.replay.results import (
    MAX_DIFF_LINES,
    ResultMismatch,
    bounded_diff,
    check_result,
    values_equal,
)


class _Hook:
    def __init__(self, answer: bool | None) -> None:
        self.answer = answer

    def pytest_perfreplay_compare(self, **_: Any) -> bool | None:
        return self.answer


class _Config:
    def __init__(self, answer: bool | None = None) -> None:
        self.hook = _Hook(answer)


def check(expected: Any, outcome: CallOutcome, answer: bool | None = None, **kw: Any) -> None:
    check_result(expected, outcome, _Config(answer), **kw)  # type: ignore[arg-type]


def test_floats_use_a_tolerance_and_nan_equals_nan() -> None:
    assert values_equal(0.1 + 0.2, 0.3)
    assert not values_equal(1.0, 1.001)
    assert values_equal(1.0, 1.001, rel=0.01)
    assert values_equal(float("nan"), float("nan"))
    assert values_equal({"a": [1.0, (2.0, 0.1 + 0.2)]}, {"a": [1.0, (2.0, 0.3)]})
    assert not values_equal([1, 2], (1, 2))  # a type change is a behaviour change


def test_numpy_arrays_element_wise() -> None:
    a = np.linspace(0, 1, 1000)
    assert values_equal(a, a * (1 + 1e-12))
    assert not values_equal(a, a + 1e-12)  # 0 vs 1e-12: no absolute tolerance by default
    assert values_equal(a, a + 1e-12, abs_=1e-9)
    assert not values_equal(a, a[:-1])
    b = a.copy()
    b[10] += 1
    assert not values_equal(a, b)
    text = bounded_diff(a, b)
    assert "1 of 1000 elements differ" in text and "[10]" in text
    assert values_equal(np.array(["x", "y"]), np.array(["x", "y"]))


def test_pandas_frames_when_installed() -> None:
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]})
    assert values_equal(df, df.copy())
    other = df.copy()
    other.loc[1, "a"] = 3.0
    assert not values_equal(df, other)
    assert "a" in bounded_diff(df, other)


def test_diff_of_huge_results_is_bounded_and_names_the_elements() -> None:
    expected = list(range(100_000))
    actual = list(expected)
    for i in range(0, 100_000, 1000):
        actual[i] = -1
    text = bounded_diff(expected, actual)
    lines = text.splitlines()
    assert len(lines) <= MAX_DIFF_LINES + 1
    assert lines[0] == "[0]: captured 0 != replayed -1"
    assert "more differing elements" in lines[-1]
    many = {f"k{i}": i for i in range(500)}
    changed = dict(many, k7=0)
    del changed["k9"]
    text = bounded_diff(many, changed)
    assert "keys missing from the replayed result: ['k9']" in text
    assert "['k7']: captured 7 != replayed 0" in text


def test_small_results_get_a_unified_diff() -> None:
    text = bounded_diff({"a": 1, "b": 2}, {"a": 1, "b": 3})
    assert text.splitlines() == [
        "--- captured",
        "+++ replayed",
        "@@ -1 +1 @@",
        "-{'a': 1, 'b': 2}",
        "+{'a': 1, 'b': 3}",
    ]


def test_check_result_order_fixture_then_hook_then_builtin() -> None:
    ok = CallOutcome(True, 5)
    check(("return", 5), ok)
    with pytest.raises(ResultMismatch, match="result differs"):
        check(("return", 4), ok)
    check(("return", 4), ok, answer=True)  # the hook says equal
    check(("return", 4), ok, answer=False, compare=lambda e, a: True)  # the fixture wins
    with pytest.raises(ResultMismatch):
        check(("return", 5), ok, answer=True, compare=lambda e, a: False)
    check(("return", 4), ok, answer=True, compare=lambda e, a: None)  # None: fall through


def test_exceptions_must_match_type_and_message() -> None:
    raised = CallOutcome(False, ValueError("bad"))
    check(("raise", ("builtins.ValueError", "bad")), raised)
    with pytest.raises(ResultMismatch, match="replayed call raised builtins.ValueError: bad"):
        check(("raise", ("builtins.KeyError", "'bad'")), raised)
    with pytest.raises(ResultMismatch, match="replayed call returned 5"):
        check(("raise", ("builtins.ValueError", "bad")), CallOutcome(True, 5))
    with pytest.raises(ResultMismatch, match="replayed call raised ValueError"):
        check(("return", 5), raised)
