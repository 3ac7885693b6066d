"""The round loop, driven by a fake clock: no real timing anywhere."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pytest

from pytest_perfreplay.replay.rounds import (
    STOP_MAX_ROUNDS,
    STOP_TARGET,
    STOP_TIME,
    Progress,
    RoundPolicy,
    RoundsResult,
    next_check,
    run_rounds,
)
from pytest_perfreplay.replay.stats import interval


class FakeBench:
    """A fake target: each round returns the next duration and advances the fake clock by it
    plus a fixed setup cost (setup counts toward the budget, not the timing)."""

    def __init__(self, durations: Iterable[float], setup: float = 0.0) -> None:
        self.now = 0.0
        self.calls = 0
        self._it: Iterator[float] = iter(durations)
        self.setup = setup

    def clock(self) -> float:
        return self.now

    def measure(self) -> float:
        value = next(self._it)
        self.calls += 1
        self.now += self.setup + value
        return value


def lognormal_stream(seed: int, median: float, sigma: float) -> Iterator[float]:
    rng = np.random.default_rng(seed)
    while True:
        yield from (median * rng.lognormal(0.0, sigma, 256)).tolist()


def run(bench: FakeBench, policy: RoundPolicy, **kwargs: object) -> RoundsResult:
    return run_rounds(bench.measure, policy, clock=bench.clock, **kwargs)  # type: ignore[arg-type]


def alternating(low: float, high: float) -> Iterator[float]:
    while True:
        yield low
        yield high


# -- policy validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "accepted"),
    [
        ("target", 0, "a finite number > 0"),
        ("target", math.inf, "a finite number > 0"),
        ("target", "1%", "a finite number > 0"),
        ("confidence", 1.0, "a number strictly between 0 and 1"),
        ("confidence", 0, "a number strictly between 0 and 1"),
        ("estimator", "p95", "one of median, mean, min"),
        ("min_rounds", 1, "an integer >= 2"),
        ("min_rounds", 2.5, "an integer >= 2"),
        ("min_rounds", True, "an integer >= 2"),
        ("max_rounds", 5, "an integer >= min_rounds (10)"),
        ("max_time", 0, "a number of seconds > 0"),
        ("max_time", math.nan, "a number of seconds > 0"),
        ("consecutive", 0, "an integer >= 1"),
        ("max_warmup", -1, "an integer >= 0"),
        ("gc", "off", "one of collect, disable, enable"),
    ],
)
def test_policy_validation_messages(field: str, value: object, accepted: str) -> None:
    with pytest.raises(ValueError) as err:
        RoundPolicy(**{field: value})  # type: ignore[arg-type]
    message = str(err.value)
    assert message.startswith(f"RoundPolicy.{field} must be ")
    assert accepted in message
    assert message.endswith(f"got {value!r}")


def test_policy_defaults_and_inf_budget() -> None:
    p = RoundPolicy()
    assert (p.target, p.confidence, p.estimator, p.min_rounds, p.max_rounds) == (
        0.01,
        0.95,
        "median",
        10,
        10_000,
    )
    assert (p.max_time, p.consecutive, p.max_warmup, p.gc) == (10.0, 3, 50, "collect")
    assert RoundPolicy(max_time=math.inf).max_time == math.inf


# -- check cadence -------------------------------------------------------------------------


def test_check_schedule_grows_geometrically() -> None:
    schedule = [10]
    while len(schedule) < 8:
        schedule.append(next_check(schedule[-1]))
    assert schedule == [10, 12, 15, 18, 22, 27, 33, 40]
    for n in [1, 2, 3, 7, 100, 12_345]:
        assert next_check(n) >= max(n + 1, 1.2 * n)


# -- stopping ------------------------------------------------------------------------------


def test_stops_once_target_met() -> None:
    bench = FakeBench(alternating(1.0, 1.0001))
    res = run(bench, RoundPolicy(max_time=math.inf))
    assert res.stop_reason == STOP_TARGET and res.target_met
    # Settled at once (no warmup), then checks at 10, 12 and 15 rounds all pass.
    assert res.warmup == () and res.warmup_settled
    assert res.rounds == 15 and res.checks == 3
    assert bench.calls == 15
    assert res.precision <= 0.01
    assert res.interval.estimator == "median" and res.interval.n == 15
    assert "target +/-1.00% met" in res.describe()


def test_extends_when_noise_is_high() -> None:
    bench = FakeBench(lognormal_stream(1, 0.010, 0.3))
    policy = RoundPolicy(target=0.02, max_time=math.inf)
    res = run(bench, policy)
    assert res.stop_reason == STOP_TARGET and res.target_met
    # sigma=0.3 needs ~(1.96 * 1.25 * 0.3 / 0.02)^2 ~ 1350 rounds for +/-2% on the median.
    assert res.rounds > 500
    assert res.precision <= 0.02
    assert res.interval.low <= 0.010 <= res.interval.high
    assert res.checks < 40  # geometric spacing: few interval computations


def test_stops_at_time_budget_and_says_target_missed() -> None:
    bench = FakeBench(lognormal_stream(2, 0.01, 0.5), setup=0.005)
    res = run(bench, RoundPolicy(target=0.001, max_time=2.0))
    assert res.stop_reason == STOP_TIME
    assert not res.target_met
    assert res.elapsed <= 2.0  # a round that would overrun is not started
    assert res.elapsed > 1.9
    assert res.precision > 0.001
    assert "TARGET MISSED" in res.describe() and "time budget" in res.describe()


def test_stops_at_max_rounds() -> None:
    bench = FakeBench(lognormal_stream(3, 0.01, 0.5))
    res = run(bench, RoundPolicy(target=0.001, max_rounds=50, max_time=math.inf))
    assert res.stop_reason == STOP_MAX_ROUNDS
    assert not res.target_met
    assert res.rounds == 50
    assert bench.calls == 50 + len(res.warmup)


def test_budget_stop_before_min_rounds_is_not_target_met() -> None:
    bench = FakeBench(alternating(1.0, 1.0))
    res = run(bench, RoundPolicy(max_time=4.0, max_warmup=0))
    assert res.stop_reason == STOP_TIME
    assert res.rounds == 4 and not res.target_met
    assert res.interval.precision == math.inf  # n=4: the median cannot be bounded at 95%


def test_forced_stop_with_precise_final_interval_counts_as_met() -> None:
    # The budget ends the run between checks, but the interval reported meets the target.
    bench = FakeBench(alternating(1.0, 1.0001))
    res = run(bench, RoundPolicy(max_time=13.5, max_warmup=0))
    assert res.stop_reason == STOP_TIME
    assert res.checks == 2  # passed at 10 and 12; the third check would come at 15
    assert res.rounds == 13 and res.target_met


# -- warmup --------------------------------------------------------------------------------


def test_decaying_start_is_counted_as_warmup() -> None:
    steady = alternating(10.0, 10.01)
    bench = FakeBench([50.0, 30.0, 20.0, 12.0, *(next(steady) for _ in range(200))])
    res = run(bench, RoundPolicy(max_time=math.inf))
    assert res.warmup == (50.0, 30.0, 20.0, 12.0)
    assert res.warmup_settled
    assert max(res.samples) <= 10.01
    assert res.stop_reason == STOP_TARGET


def test_noisy_decaying_start_is_detected() -> None:
    rng = np.random.default_rng(4)
    i = np.arange(5000)
    durations = 0.01 * (1 + 2.0 * np.exp(-i / 3.0)) * rng.lognormal(0, 0.01, i.size)
    bench = FakeBench(durations.tolist())
    res = run(bench, RoundPolicy(max_time=math.inf))
    assert res.warmup_settled
    assert 8 <= len(res.warmup) <= 25  # elevated by > 5% until i ~ 11
    assert res.interval.low <= 0.01 <= res.interval.high


def test_warmup_cap_when_never_settling() -> None:
    # Timings that keep falling: warmup is capped and reported as not settled.
    bench = FakeBench(100.0 * 0.97**k for k in range(10_000))
    res = run(bench, RoundPolicy(max_warmup=20, max_rounds=30, max_time=math.inf))
    assert not res.warmup_settled
    assert 0 < len(res.warmup) <= 20
    assert res.stop_reason == STOP_MAX_ROUNDS


def test_budget_spent_during_warmup_keeps_measured_rounds() -> None:
    # Slow target: 2 s per round and a 9 s budget never leaves room for warmup detection.
    bench = FakeBench(alternating(2.0, 2.0))
    res = run(bench, RoundPolicy(max_time=9.0))
    assert res.stop_reason == STOP_TIME and not res.target_met
    assert not res.warmup_settled
    assert res.rounds >= 1 and res.rounds + len(res.warmup) == bench.calls == 4


def test_no_warmup_when_disabled() -> None:
    bench = FakeBench([50.0, *[1.0] * 100])
    res = run(bench, RoundPolicy(max_warmup=0, max_time=math.inf))
    assert res.warmup == () and res.samples[0] == 50.0


# -- lucky early runs ----------------------------------------------------------------------


def lucky_then_noisy(seed: int) -> Iterator[float]:
    # The first 10 rounds happen to be identical (cache-hot, say), then the true spread shows:
    # every later round is 5-50% slower. The true median is ~12.75.
    rng = np.random.default_rng(seed)
    yield from [10.0] * 10
    while True:
        yield from rng.uniform(10.5, 15.0, 256).tolist()


def test_lucky_early_run_would_stop_without_the_rule() -> None:
    # Without the consecutive rule, the first check (precision 0) stops the loop on a lie.
    bench = FakeBench(lucky_then_noisy(0))
    res = run(bench, RoundPolicy(consecutive=1, max_warmup=0, max_time=math.inf))
    assert res.stop_reason == STOP_TARGET and res.rounds == 10
    assert res.interval.estimate == 10.0
    # Checking after every round would not save it: at 10, 11 and 12 rounds the exact median
    # interval is still zero-width, so three back-to-back checks would pass.
    fresh = lucky_then_noisy(0)
    seq = [next(fresh) for _ in range(12)]
    assert [interval(seq[:n]).precision for n in (10, 11, 12)] == [0.0, 0.0, 0.0]


def test_lucky_early_run_does_not_stop_the_loop() -> None:
    bench = FakeBench(lucky_then_noisy(0))
    res = run(bench, RoundPolicy(max_warmup=0, max_time=math.inf))
    assert res.stop_reason == STOP_TARGET
    # Spaced checks (10, 12, 15, ...) catch the noise; the loop runs until the real median
    # is pinned down.
    assert res.rounds > 500
    assert 12.5 < res.interval.estimate < 13.0
    assert res.interval.low <= 12.75 <= res.interval.high


def test_min_rounds_is_respected_with_zero_noise() -> None:
    bench = FakeBench(alternating(1.0, 1.0))
    res = run(bench, RoundPolicy(min_rounds=40, max_warmup=0, max_time=math.inf))
    assert res.stop_reason == STOP_TARGET
    # Identical rounds pass every check, yet the loop still takes the spaced checks.
    assert res.rounds == next_check(next_check(40)) == 58


# -- hooks and reporting -------------------------------------------------------------------


def test_progress_reports_on_the_fake_clock() -> None:
    bench = FakeBench(lognormal_stream(5, 0.25, 0.3))
    seen: list[Progress] = []
    res = run(
        bench,
        RoundPolicy(target=0.05, max_time=math.inf),
        on_progress=seen.append,
        progress_every=5.0,
    )
    assert len(seen) >= 3
    elapsed = [p.elapsed for p in seen]
    assert elapsed == sorted(elapsed)
    assert all(b - a >= 5.0 for a, b in zip(elapsed[:-2], elapsed[1:-1], strict=True))
    assert seen[-1].rounds == res.rounds and seen[-1].warmup_done
    assert seen[-1].precision == res.precision


def test_before_round_hook_runs_once_per_round() -> None:
    bench = FakeBench(lognormal_stream(6, 0.01, 0.05))
    calls: list[int] = []
    res = run(bench, RoundPolicy(max_time=math.inf), before_round=lambda: calls.append(1))
    assert len(calls) == bench.calls == res.rounds + len(res.warmup)


@pytest.mark.parametrize("bad", [math.nan, -1.0, math.inf])
def test_measure_must_return_a_duration(bad: float) -> None:
    with pytest.raises(ValueError, match="measure\\(\\) must return a finite duration"):
        run_rounds(lambda: bad, RoundPolicy(), clock=lambda: 0.0)


def test_progress_every_validation() -> None:
    with pytest.raises(ValueError, match="progress_every"):
        run_rounds(lambda: 1.0, RoundPolicy(), clock=lambda: 0.0, progress_every=0)


@pytest.mark.parametrize("estimator", ["mean", "min"])
def test_other_estimators(estimator: str) -> None:
    bench = FakeBench(lognormal_stream(7, 0.01, 0.1))
    policy = RoundPolicy(estimator=estimator, target=0.01, max_time=math.inf, gc="disable")  # type: ignore[arg-type]
    res = run(bench, policy)
    assert res.stop_reason == STOP_TARGET
    assert res.interval.estimator == estimator
    assert res.policy.gc == "disable"
    if estimator == "min":
        assert res.rounds >= 72  # the 5th percentile cannot be bounded below that


def test_real_clock_default_smoke() -> None:
    # Default clock wiring only; nothing about the timing is asserted.
    values: Callable[[], float] = iter([0.001] * 100_000).__next__
    res = run_rounds(values, RoundPolicy(max_warmup=0))
    assert res.stop_reason == STOP_TARGET and res.rounds == 15
