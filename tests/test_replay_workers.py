"""Rounds over fresh worker processes: the adaptive rule (fake workers) and real ones."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest

from pytest_perfreplay.replay.rounds import STOP_MAX_PROCESSES, STOP_TARGET, STOP_TIME, RoundPolicy
from pytest_perfreplay.replay.workers import WorkerJob, WorkerRun, run_processes, worker_rounds
from tests.test_replay import capture_traffic, run

JOB = WorkerJob(snapshot_path="x.prsnap", store=".perfreplay", allow_unsigned=False)


class FakeWorkers:
    """Each spawn returns rounds around a per-process level; a fake clock advances."""

    def __init__(self, levels: list[float], noise: float = 0.001, seconds: float = 1.0) -> None:
        self.levels = levels
        self.noise = noise
        self.seconds = seconds
        self.now = 0.0
        self.jobs: list[WorkerJob] = []
        self.rng = np.random.default_rng(1)

    def clock(self) -> float:
        return self.now

    def spawn(self, job: WorkerJob, on_sample: Callable[[float], None]) -> WorkerRun:
        self.jobs.append(job)
        level = self.levels[min(len(self.jobs) - 1, len(self.levels) - 1)]
        samples = tuple(level * (1 + self.noise * self.rng.standard_normal(50)))
        for s in samples:
            on_sample(s)
        self.now += self.seconds
        return WorkerRun(samples, (), STOP_TIME, True, self.seconds)


def test_quiet_processes_meet_the_target_after_two_consecutive_checks() -> None:
    fake = FakeWorkers([1.0] * 10)
    policy = RoundPolicy(target=0.01, max_time=100)
    result = run_processes(JOB, policy, 3, spawn=fake.spawn, clock=fake.clock)
    assert result.stop_reason == STOP_TARGET and result.target_met
    assert result.processes == 4  # checked at 3 and at 4: two in a row
    assert result.groups == (50, 50, 50, 50)
    assert len(result.group_estimates) == 4
    assert abs(result.interval.estimate - 1.0) < 0.01
    # Each worker gets its slice of half the budget, and the round cap is shared.
    assert fake.jobs[0].policy["max_time"] == pytest.approx(100 * 0.5 / 3)


def test_spread_between_processes_adds_processes_up_to_the_cap() -> None:
    levels = [1.0, 1.1, 0.95, 1.08, 0.9, 1.05, 1.12, 0.97, 1.02, 0.93, 1.1, 0.96]
    fake = FakeWorkers(levels)
    policy = RoundPolicy(target=0.01, max_time=1000)
    result = run_processes(JOB, policy, 2, spawn=fake.spawn, clock=fake.clock)
    assert result.stop_reason == STOP_MAX_PROCESSES and not result.target_met
    assert result.processes == 8  # 4 x N
    # The interval holds the between-process spread: far wider than within (0.1%).
    assert result.precision > 0.02
    assert "per-process" in result.interval.method


def test_budget_stops_adding_processes() -> None:
    fake = FakeWorkers([1.0, 1.2, 0.8, 1.1, 0.9] * 4, seconds=3.0)
    policy = RoundPolicy(target=0.01, max_time=10)
    result = run_processes(JOB, policy, 2, spawn=fake.spawn, clock=fake.clock)
    assert result.stop_reason == STOP_TIME
    assert result.processes == 3  # 9 s spent; a 4th (3 s more) would overrun 10 s


def test_worker_rounds_detects_warmup_and_respects_its_slice() -> None:
    t = [0.0]
    values = iter([5.0, 3.0, 2.0] + [1.0 + 0.001 * (i % 3) for i in range(1000)])

    def measure() -> float:
        v = next(values)
        t[0] += v
        return v

    series, n_warmup, stop, settled = worker_rounds(
        measure, RoundPolicy(max_time=100.0, max_rounds=1000), clock=lambda: t[0]
    )
    assert n_warmup == 3 and settled
    assert stop == STOP_TIME
    assert sum(series) <= 100.0 + 5


def test_real_worker_processes(pytester: pytest.Pytester) -> None:
    capture_traffic(pytester)
    result = run(
        pytester,
        "-k",
        "checksum or fetch",
        "--perf-replay-processes=2",
        "--perf-replay-max-time=3",
        "--benchmark-json=bench.json",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*rounds in * processes after*"])
    data = json.loads((pytester.path / "bench.json").read_text())
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        assert info["processes"] >= 2
        assert len(info["rounds_per_process"]) == info["processes"]
        assert sum(info["rounds_per_process"]) == bench["stats"]["rounds"]
        if info["target"] == "svc:fetch_and_merge":
            # The workers await the coroutine: timing only its creation would give ~1 µs.
            # A lower bound only: load can stretch a 10 ms sleep, never shorten it.
            assert info["estimate"] >= 0.009


def test_worker_failure_is_a_readable_item_failure(pytester: pytest.Pytester) -> None:
    capture_traffic(pytester)
    # A module that imports in this process (conftest put it there) but not in a worker.
    pytester.makeconftest(
        "import sys, types\n"
        "import svc\n"
        "def pytest_configure(config):\n"
        "    import os\n"
        "    os.rename('svc.py', 'svc_gone.py')\n"
    )
    result = run(pytester, "-k", "fetch", "--perf-replay-processes=2")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*worker process failed*svc*"])


def test_a_worker_process_starts_without_numpy() -> None:
    """Every worker process imports what ``serve`` and ``_worker`` need at start-up; numpy
    (and scipy) would add ~70 ms to each of the dozens a paired comparison starts."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "import pytest_perfreplay.replay.workers\n"
        "import pytest_perfreplay.replay.call, pytest_perfreplay.snapshot.store\n"
        "import pytest_perfreplay.capture.decorator\n"
        "heavy = sorted(m for m in ('numpy', 'scipy') if m in sys.modules)\n"
        "print(' '.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert out == "", f"a worker's start-up imports {out}"
