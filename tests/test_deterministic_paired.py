"""Deterministic mode against a git baseline: both trees counted alike under the real
valgrind, in real pytest sessions over a real repository with two revisions.

The change made here is exact (the second revision does the work twice), so the verdict's
direction and the gate's exit code can be checked; the counts themselves are not.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from tests.speedscope_app import unavailable
from tests.test_paired import WORK_2X, flat_repo, git, shop

COUNT = ("--perf-replay-measure=instructions", "--perf-replay-max-time=3000")


@pytest.fixture(autouse=True)
def real_valgrind() -> None:
    if shutil.which("valgrind") is None:
        unavailable("valgrind is not installed (scripts/install-system-deps.sh installs it)")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("--perf-replay", "-p", "no:cacheprovider", *COUNT, *args)


def paired(pytester: pytest.Pytester) -> dict[str, Any]:
    (item,) = json.loads((pytester.path / "b.json").read_text())["benchmarks"]
    return dict(item["extra_info"]["paired"])


@pytest.mark.valgrind
def test_twice_the_work_counts_as_more_instructions_and_fails_the_gate(
    pytester: pytest.Pytester,
) -> None:
    flat_repo(pytester, shop(), shop(WORK_2X))
    result = run(
        pytester,
        "--perf-replay-baseline=HEAD~1",
        "--perf-replay-fail-slower=5",
        "--benchmark-json=b.json",
    )
    result.assert_outcomes(failed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*% more instructions than HEAD~1 (deterministic)*",
            "*perf gate (--perf-replay-fail-slower=5%)*",
        ]
    )
    assert "Traceback" not in result.stdout.str()
    v = paired(pytester)
    assert v["unit"] == "instructions" and v["deterministic"] is True
    assert v["significant"] is True and v["direction"] == "slower"
    assert 1.5 < v["ratio"] < 2.5, v  # the spin loop runs twice; set-up is shared
    assert (v["rev"], v["sha"]) == ("HEAD~1", git(pytester.path, "rev-parse", "HEAD~1"))
    (ledger,) = (pytester.path / ".perfreplay" / "history").rglob("*.jsonl")
    entry = json.loads(ledger.read_text().splitlines()[-1])
    assert entry["unit"] == "instructions" and entry["paired"]["direction"] == "slower"


@pytest.mark.valgrind
def test_identical_trees_count_the_same(pytester: pytest.Pytester) -> None:
    flat_repo(pytester, shop(), shop(WORK_2X))
    result = run(
        pytester,
        "--perf-replay-baseline=HEAD",
        "--perf-replay-fail-slower=0",
        "--benchmark-json=b.json",
    )
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "(deterministic)" in out and "more instructions than" not in out
    assert "same instructions as HEAD" in out or "no significant change vs HEAD" in out
    v = paired(pytester)
    assert v["significant"] is False and v["direction"] == "same"
    # The two trees' processes may sit at other places in the allocator's pools (see
    # heappad), so the ratio need not be 1; the interval must hold 1 and claim nothing.
    assert v["low"] <= 1.0 <= v["high"], v
