"""The whole loop through real pytest sessions: capture -> replay -> benchmark JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SERVICE = """
import asyncio
import time

from pytest_perfreplay import capture


@capture
def checksum(values):
    total = 0
    for v in values:
        total = (total * 31 + v) % 1_000_003
    return total


@capture
async def fetch_and_merge(keys):
    await asyncio.sleep(0.010)  # ~10 ms of awaited work: what replay must measure
    return sorted(keys)
"""

TRAFFIC = """
import asyncio
import svc

svc.checksum(list(range(20_000)))
asyncio.run(svc.fetch_and_merge(["b", "a", "c"]))
"""


def capture_traffic(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(svc=SERVICE, traffic=TRAFFIC)
    pytester.makeini("[pytest]\npythonpath = .\n")
    env = dict(os.environ, PERFREPLAY_CAPTURE="1", PERFREPLAY_STORE=".perfreplay")
    subprocess.run(
        [sys.executable, "traffic.py"], cwd=pytester.path, env=env, check=True, timeout=120
    )


def test_capture_then_replay_sync_and_async_into_benchmark_json(pytester: pytest.Pytester) -> None:
    capture_traffic(pytester)
    snapshots = sorted((pytester.path / ".perfreplay" / "snapshots").glob("*/*.prsnap"))
    assert len(snapshots) == 2

    result = pytester.runpytest_subprocess(
        "--perf-replay",
        "--perf-replay-max-time=3",
        "--benchmark-json=bench.json",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*perfreplay: store*2 snapshot(s)*", "*svc:fetch_and_merge*"])

    data = json.loads((pytester.path / "bench.json").read_text())
    by_target = {b["extra_info"]["target"]: b for b in data["benchmarks"]}
    assert set(by_target) == {"svc:checksum", "svc:fetch_and_merge"}
    async_bench = by_target["svc:fetch_and_merge"]
    # The awaited sleep is measured, not the creation of a coroutine (microseconds).
    assert async_bench["stats"]["median"] >= 0.008
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        assert info["stop_reason"] in ("target met", "time budget", "max rounds")
        assert bench["stats"]["rounds"] == len(bench["stats"]["data"]) >= 10
        low, high = info["interval"]
        assert low <= info["estimate"] <= high


def test_without_the_flag_a_normal_run_is_unchanged(pytester: pytest.Pytester) -> None:
    capture_traffic(pytester)
    pytester.makepyfile(test_plain="def test_ok():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["collected 1 item"])
    result.stdout.no_fnmatch_line("*perfreplay: store*")
    result.stdout.no_fnmatch_line("*svc:checksum*")


def test_profile_pass_writes_valid_speedscope(
    pytester: pytest.Pytester, assert_valid_speedscope: object
) -> None:
    capture_traffic(pytester)
    result = pytester.runpytest_subprocess(
        "--perf-replay",
        "--perf-replay-profile=pyinstrument",
        "--perf-replay-max-time=2",
        "--perf-replay-profile-samples=200",
        "-k",
        "checksum",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*profile: .perfreplay/profiles/svc-checksum/0001-*.speedscope.json"]
    )
    (path,) = (pytester.path / ".perfreplay" / "profiles").glob("*/*.speedscope.json")
    doc = json.loads(path.read_text())
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    assert callable(assert_valid_speedscope)
    assert_valid_speedscope(doc)
