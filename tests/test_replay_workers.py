"""Rounds over fresh worker processes: the adaptive rule (fake workers) and real ones."""

from __future__ import annotations

import json
import os
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


def test_each_worker_draws_its_own_layout_within_its_spans() -> None:
    import random

    from pytest_perfreplay.replay.workers import (
        HEAP_PAD_PARTS,
        MALLOC_PAD_SPAN,
        STACK_PAD_SPAN,
        _worker_env,
        hold_layout,
    )

    rng = random.Random(7)
    drawn = [hold_layout_spec(_worker_env(rng)) for _ in range(40)]
    assert len(set(drawn)) == 40  # every process somewhere else
    for heap, malloc, stack in drawn:
        assert 0 <= heap < HEAP_PAD_PARTS
        assert 0 <= malloc < MALLOC_PAD_SPAN and malloc % 16 == 0
        assert 0 <= stack < STACK_PAD_SPAN
    # The draws cover their spans rather than clustering at one end.
    assert max(s for *_, s in drawn) - min(s for *_, s in drawn) > STACK_PAD_SPAN // 2
    assert len({h for h, *_ in drawn}) > HEAP_PAD_PARTS // 2
    with pytest.raises(ValueError, match="PART/WHOLE BYTES"):
        hold_layout({"PERFREPLAY_LAYOUT": "half"})
    with pytest.raises(ValueError, match="out of range"):
        hold_layout({"PERFREPLAY_LAYOUT": "16/16 0"})
    assert hold_layout({}) == {}


def hold_layout_spec(env: dict[str, str]) -> tuple[int, int, int]:
    heap, malloc = env["PERFREPLAY_LAYOUT"].split(" ")
    return int(heap.split("/")[0]), int(malloc), len(env["PERFREPLAY_STACK_PAD"])


def test_a_worker_layout_really_moves_its_heap_and_stack() -> None:
    """In real processes with ASLR off (so only our pads move things): the pad's blocks are
    held, and the stack starts lower by the environment bytes the pad adds."""
    import shutil
    import subprocess
    import sys

    setarch = shutil.which("setarch")
    if setarch is None:
        pytest.skip("setarch (util-linux) is needed to turn ASLR off")
    probe = (
        "import json, os, sys\n"
        "from pytest_perfreplay.replay.workers import hold_layout\n"
        "before = sys.getallocatedblocks()\n"
        "applied = hold_layout(os.environ)\n"
        "held = sys.getallocatedblocks() - before\n"
        "start = int(open('/proc/self/stat').read().rsplit(')', 1)[1].split()[25])\n"
        "print(json.dumps({'applied': applied, 'held': held, 'stack': start}))\n"
    )

    def probe_with(heap: int, stack: int) -> dict[str, object]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PERFREPLAY_")}
        env["PERFREPLAY_LAYOUT"] = f"{heap}/16 4096"
        env["PERFREPLAY_STACK_PAD"] = "." * stack
        out = subprocess.run(
            [setarch, "-R", sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=60,
        ).stdout
        return dict(json.loads(out))

    low, high = probe_with(0, 0), probe_with(15, 2000)
    assert high["applied"] == {
        "heap_part": 15,
        "heap_whole": 16,
        "malloc_pad": 4096,
        "stack_pad": 2000,
    }
    # 15/16 of a pool of every size class: thousands of blocks; none at part 0.
    assert isinstance(high["held"], int) and isinstance(low["held"], int)
    assert high["held"] - low["held"] > 2000
    moved = int(str(low["stack"])) - int(str(high["stack"]))
    assert 2000 - 16 <= moved <= 2000 + 16, moved
