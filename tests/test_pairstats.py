"""The paired statistic on synthetic data: exact small cases, A/A calibration, power, widening."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import stats  # type: ignore[import-untyped, unused-ignore]

from pytest_perfreplay.replay.paired import (
    LATER_WARMUP_MIN,
    MIN_WAVES,
    STOP_EQUIVALENT,
    STOP_SIGNIFICANT,
    STOP_TIME,
    STOP_TIME_FLOOR,
    STOP_TIME_RAN_ON,
    WAVE_BLOCKS,
    PairedPolicy,
    PairedVerdict,
    close_pairs,
    later_warmup,
    run_pairs,
    verdict_of,
)
from pytest_perfreplay.replay.pairstats import decide, hodges_lehmann, pool, signed_rank_depth


def test_signed_rank_depth_matches_the_wilcoxon_table() -> None:
    # Two-sided 5% critical values of the signed-rank statistic (T <= c rejects):
    # n=6: 0, n=8: 3, n=10: 8, n=20: 52. The interval cuts c + 1 Walsh averages per end.
    assert signed_rank_depth(5, 0.95) is None  # 2 / 32 > 0.025: no 95% interval exists
    assert signed_rank_depth(6, 0.95) == 1
    assert signed_rank_depth(8, 0.95) == 4
    assert signed_rank_depth(10, 0.95) == 9
    assert signed_rank_depth(20, 0.95) == 53


def test_hodges_lehmann_small_exact_case() -> None:
    # Walsh averages of 1, 2, 3, 4, 5, 6 are 21 numbers with median 3.5; depth 1 at 95%.
    est = hodges_lehmann([1, 2, 3, 4, 5, 6], 0.95)
    assert est.estimate == 3.5
    assert (est.low, est.high) == (1.0, 6.0)
    walsh = sorted((a + b) / 2 for i, a in enumerate(range(1, 11)) for b in range(a, 11))
    est10 = hodges_lehmann([float(x) for x in range(1, 11)], 0.95)
    assert (est10.low, est10.high) == (walsh[8], walsh[-9])


def test_too_few_pairs_give_an_unbounded_interval() -> None:
    est = hodges_lehmann([0.01, 0.02, 0.0], 0.95)
    assert math.isinf(est.low) and math.isinf(est.high)
    pooled = pool([[0.01, 0.02], [0.0, 0.01]], 0.95)
    assert math.isinf(pooled.low) and math.isinf(pooled.high)


def _groups(
    rng: np.random.Generator, k: int, n: int, shift: float, sd: float, between: float
) -> list[list[float]]:
    return [list(shift + rng.normal(0, between) + rng.standard_t(5, n) * sd) for _ in range(k)]


def test_aa_false_calls_near_alpha() -> None:
    """A/A with process-level offsets: about 5% of intervals exclude 0 at 95%."""
    rng = np.random.default_rng(20261125)
    trials = 600
    false = 0
    for _ in range(trials):
        pooled = pool(_groups(rng, 8, 8, 0.0, 0.02, 0.005), 0.95)
        false += not (pooled.low <= 0 <= pooled.high)
    rate = false / trials
    assert 0.01 <= rate <= 0.08, rate


def test_aa_with_the_band_calls_nothing() -> None:
    rng = np.random.default_rng(7)
    calls = 0
    for _ in range(300):
        pooled = pool(_groups(rng, 8, 8, 0.0, 0.01, 0.002), 0.95)
        calls += decide(pooled.ratio_low, pooled.ratio_high, 0.01).significant
    assert calls <= 15  # <= 5%


def test_known_shift_is_found_in_the_right_direction() -> None:
    rng = np.random.default_rng(3)
    found = 0
    for _ in range(200):
        pooled = pool(_groups(rng, 8, 8, math.log(1.05), 0.02, 0.003), 0.95)
        d = decide(pooled.ratio_low, pooled.ratio_high, 0.01)
        assert d.direction != "faster"
        found += d.significant and d.direction == "slower"
        assert pooled.ratio_low < 1.06 and pooled.ratio_high > 1.04 or not d.significant
    assert found >= 190


def test_interval_widens_when_process_pairs_disagree() -> None:
    rng = np.random.default_rng(11)
    base = [list(rng.normal(0, 0.01, 8)) for _ in range(8)]
    agree = pool(base, 0.95)
    offsets = [-0.03, 0.03, -0.02, 0.02, -0.04, 0.04, -0.01, 0.01]
    disagree = pool([[x + o for x in g] for g, o in zip(base, offsets, strict=True)], 0.95)
    assert disagree.spread > 2 * agree.spread
    assert disagree.high - disagree.low > 2 * (agree.high - agree.low)
    assert "8 process pairs' estimates" in disagree.method


def _two_speed_groups(rng: np.random.Generator, k: int, shift: float) -> list[list[float]]:
    """Process pairs as a 2-core VM gave them: each process keeps one of two speeds for
    its life, the slow one (~45% slower) for about one process in 25."""

    def speed() -> float:
        return math.log(1.45) if rng.random() < 0.04 else 0.0

    return [
        list(shift + speed() - speed() + rng.normal(0, 0.006) + rng.normal(0, 0.05, 8))
        for _ in range(k)
    ]


def test_ranks_hold_their_level_and_beat_a_mean_on_two_speed_processes() -> None:
    """The interval over process pairs stays calibrated when a few processes run slow for
    their whole life, and is narrower than the mean's t interval, which follows those few."""
    rng = np.random.default_rng(20261206)
    misses = 0
    rank_widths, mean_widths = [], []
    for _ in range(400):
        groups = _two_speed_groups(rng, 16, 0.0)
        pooled = pool(groups, 0.95)
        misses += not (pooled.low <= 0 <= pooled.high)
        rank_widths.append(pooled.high - pooled.low)
        estimates = np.array([hodges_lehmann(g).estimate for g in groups])
        half = stats.t.ppf(0.975, 15) * estimates.std(ddof=1) / 4
        mean_widths.append(2 * half)
    assert misses <= 0.08 * 400  # the level holds (about 5%)
    assert np.median(rank_widths) < 0.85 * np.median(mean_widths)


def test_decide_band_edges() -> None:
    assert decide(1.02, 1.05, 0.01).direction == "slower"
    assert decide(0.90, 0.95, 0.01).direction == "faster"
    same = decide(0.995, 1.005, 0.01)
    assert same.equivalent and not same.significant and same.direction == "same"
    undecided = decide(0.99, 1.03, 0.01)
    assert not undecided.equivalent and not undecided.significant


class FakeSide:
    """A worker whose calls take ``base * factor`` seconds with multiplicative noise."""

    def __init__(
        self,
        clock: list[float],
        seconds: float,
        rng: random.Random,
        noise: float = 0.01,
        offset: float = 0.0,
    ) -> None:
        self.clock, self.seconds, self.rng, self.noise = clock, seconds, rng, noise
        self.offset = offset  # this process's own, lasting log offset (layout, hash seed)
        self.runs = 0

    def warm(self, max_calls: int, max_seconds: float) -> dict[str, float | bool]:
        self.clock[0] += 0.1
        return {"calls": 10, "settled": True, "median": self.seconds, "wall": self.seconds}

    def run(self, calls: int) -> float:
        self.runs += 1
        self.clock[0] += calls * self.seconds
        return self.seconds * math.exp(self.offset + self.rng.gauss(0, self.noise))


def _fake_pairs(
    factor: float, seed: int, noise: float = 0.01
) -> tuple[list[tuple[FakeSide, FakeSide]], list[float]]:
    clock = [0.0]
    rng = random.Random(seed)
    pairs = [
        (FakeSide(clock, 0.01, rng, noise), FakeSide(clock, 0.01 * factor, rng, noise))
        for _ in range(4)
    ]
    return pairs, clock


def test_stopping_rule_stops_on_a_clear_slowdown() -> None:
    pairs, clock = _fake_pairs(1.5, 1)
    policy = PairedPolicy(process_pairs=4, max_time=100.0, min_effect=1.0)
    run = run_pairs(pairs, policy, rng=random.Random(1), clock=lambda: clock[0])
    assert run.stop_reason == STOP_SIGNIFICANT
    assert run.looks == 1 and run.waves == MIN_WAVES  # decided at the first look
    v = verdict_of(run, policy, rev="HEAD", sha="0" * 40)
    assert v.significant and v.direction == "slower" and 1.45 < v.ratio < 1.55
    assert v.line().startswith("change: 1.5")
    # A fixed sequence of pairs serves every wave: two waves of four.
    assert " slower [" in v.line() and "vs HEAD (paired, same session, 8 process pairs" in v.line()
    # Both sides of a pair ran equally often, in blocks of four letters.
    assert all(b.runs == c.runs for b, c in pairs)


def test_stopping_rule_stops_on_equivalence_or_budget() -> None:
    pairs, clock = _fake_pairs(1.0, 2)
    policy = PairedPolicy(process_pairs=4, max_time=1000.0, min_effect=1.0)
    run = run_pairs(pairs, policy, rng=random.Random(2), clock=lambda: clock[0])
    assert run.stop_reason == STOP_EQUIVALENT
    v = verdict_of(run, policy, rev="main", sha="1" * 40)
    assert not v.significant and v.equivalent and v.direction == "same"
    assert v.line().startswith("no significant change vs main (paired, same session")

    # Noise far wider than the band: no decision in so few rounds; the budget ends it (a
    # chance call at one of the few looks stays rare).
    tight = PairedPolicy(process_pairs=4, max_time=0.5, min_effect=1.0)
    reasons = []
    for seed in range(40):
        pairs, clock = _fake_pairs(1.0, seed, noise=0.2)
        run = run_pairs(pairs, tight, rng=random.Random(seed), clock=lambda c=clock: c[0])
        reasons.append(run.stop_reason)
        if run.stop_reason == STOP_TIME:
            # the minimum: two waves, each pair with its blocks
            assert len(run.log_ratios) == 4 * MIN_WAVES
            assert all(len(g) == 2 * WAVE_BLOCKS for g in run.log_ratios)
    assert reasons.count(STOP_TIME) >= 34


def _warmed(*ends: int | None) -> list[tuple[dict[str, object], dict[str, object]]]:
    sides = [
        {"calls": 11, "settled": end is not None, "settled_at": end or 0, "median": 0.1}
        for end in ends
    ]
    return [(sides[i], sides[i + 1]) for i in range(0, len(sides), 2)]


def test_later_waves_warm_up_as_long_as_the_first_wave_needed() -> None:
    # Steady from the first call: the floor of two calls, not the detector's two windows.
    assert later_warmup(_warmed(0, 0, 0, 0), 50) == LATER_WARMUP_MIN == 2
    # The slowest worker to settle sets it, plus one call.
    assert later_warmup(_warmed(0, 6, 3, 1), 50) == 7
    assert later_warmup(_warmed(0, 60, 3, 1), 50) == 50  # never past the policy's cap
    # Half settled is enough to go by; fewer, and every wave keeps the full warm-up.
    assert later_warmup(_warmed(2, 1, None, None), 50) == 3
    assert later_warmup(_warmed(2, None, None, None), 50) == 50
    # A worker that does not say where it settled (an older reply) counts as unsettled.
    assert later_warmup([({"settled": True}, {"settled": True})], 50) == 50


class WarmRecorder(FakeSide):
    """A fake worker that records the warm-up it was asked for and settles at call 3."""

    asked: list[int]

    def warm(self, max_calls: int, max_seconds: float) -> dict[str, float | bool]:
        self.asked.append(max_calls)
        self.clock[0] += 0.1
        return {"calls": min(max_calls, 8), "settled": True, "settled_at": 3, "median": 0.01}


def test_run_pairs_warms_the_first_wave_fully_and_later_waves_briefly() -> None:
    clock = [0.0]
    rng = random.Random(5)
    made: list[WarmRecorder] = []

    def wave(_i: int) -> list[tuple[FakeSide, FakeSide]]:
        pairs = [(WarmRecorder(clock, 0.01, rng), WarmRecorder(clock, 0.01, rng))]
        for side in pairs[0]:
            side.asked = []
            made.append(side)
        return pairs  # type: ignore[return-value]

    policy = PairedPolicy(process_pairs=1, max_time=1e9, min_effect=1.0, max_warmup_calls=40)
    run = run_pairs(wave, policy, rng=random.Random(5), clock=lambda: clock[0])
    assert run.waves >= 3
    assert made[0].asked == made[1].asked == [40]
    assert all(side.asked == [4] for side in made[2:])


def test_default_budget_gives_a_long_call_its_floor_of_waves() -> None:
    # A budget that two waves already fill: with a floor, time ends nothing before five
    # waves, and the reason says the budget was run past; the hard cap still holds.
    floor = PairedPolicy(process_pairs=4, max_time=0.5, min_effect=1.0, floor_waves=5)
    capped = PairedPolicy(
        process_pairs=4, max_time=0.5, min_effect=1.0, floor_waves=5, hard_cap=2.5
    )
    extended = 0
    for seed in range(10):
        pairs, clock = _fake_pairs(1.0, seed, noise=0.2)
        run = run_pairs(pairs, floor, rng=random.Random(seed), clock=lambda c=clock: c[0])
        if run.stop_reason.startswith("budget"):
            assert run.stop_reason == STOP_TIME_FLOOR
            assert run.waves == 5
            extended += 1
        pairs, clock = _fake_pairs(1.0, seed, noise=0.2)
        run = run_pairs(pairs, capped, rng=random.Random(seed), clock=lambda c=clock: c[0])
        assert run.waves < 5 or not run.stop_reason.startswith("budget")
        # Without a floor the same budget stops at the first look.
        pairs, clock = _fake_pairs(1.0, seed, noise=0.2)
        plain = PairedPolicy(process_pairs=4, max_time=0.5, min_effect=1.0)
        run = run_pairs(pairs, plain, rng=random.Random(seed), clock=lambda c=clock: c[0])
        assert run.waves == MIN_WAVES and run.stop_reason != STOP_TIME_FLOOR
    assert extended >= 7  # noise this wide rarely decides within five waves


def test_an_undecided_change_outside_the_band_runs_on_and_an_inside_one_does_not() -> None:
    # Budget up at the floor's 3 waves; a 3% change under wide noise is often undecided
    # there with its estimate outside the 1% band: it runs on, to 6 waves at most.
    band = (1 / 1.01, 1.01)
    ran_on = 0
    for factor in (1.03, 1.0):
        for seed in range(12):
            policy = PairedPolicy(
                process_pairs=4, max_time=0.5, min_effect=1.0, floor_waves=3, extend=2.0
            )
            pairs, clock = _fake_pairs(factor, seed, noise=0.2)
            run = run_pairs(pairs, policy, rng=random.Random(seed), clock=lambda c=clock: c[0])
            inside = band[0] <= run.pooled.ratio <= band[1]
            if run.stop_reason == STOP_TIME_FLOOR:
                assert run.waves == 3 and inside
            elif run.stop_reason == STOP_TIME_RAN_ON:
                assert 3 < run.waves <= 6 and (run.waves == 6 or inside)
                ran_on += factor == 1.03
            # The same seed without the run-on: identical up to the budget, never more waves.
            plain = PairedPolicy(process_pairs=4, max_time=0.5, min_effect=1.0, floor_waves=3)
            pairs, clock = _fake_pairs(factor, seed, noise=0.2)
            short = run_pairs(pairs, plain, rng=random.Random(seed), clock=lambda c=clock: c[0])
            assert short.stop_reason != STOP_TIME_RAN_ON and short.waves <= 3
            assert short.waves <= run.waves
            if short.stop_reason.startswith("decided"):
                assert (run.waves, run.stop_reason) == (short.waves, short.stop_reason)
            # A cap the run-on would pass keeps the comparison to its budget.
            capped = PairedPolicy(
                process_pairs=4,
                max_time=0.5,
                min_effect=1.0,
                floor_waves=3,
                extend=2.0,
                extend_cap=0.1,
            )
            pairs, clock = _fake_pairs(factor, seed, noise=0.2)
            run = run_pairs(pairs, capped, rng=random.Random(seed), clock=lambda c=clock: c[0])
            assert run.waves <= 3 and run.stop_reason != STOP_TIME_RAN_ON
    assert ran_on >= 6


def test_running_on_finds_changes_the_budget_left_undecided() -> None:
    # Same seeds, same data up to the budget: the run-on can only add detections.
    found = {1.0: 0, 2.0: 0}
    for seed in range(30):
        for extend in found:
            policy = PairedPolicy(
                process_pairs=4, max_time=0.5, min_effect=1.0, floor_waves=3, extend=extend
            )
            pairs, clock = _fake_pairs(1.03, seed, noise=0.1)
            run = run_pairs(pairs, policy, rng=random.Random(seed), clock=lambda c=clock: c[0])
            found[extend] += run.stop_reason == STOP_SIGNIFICANT
    assert found[2.0] > found[1.0]


def _process_waves(
    factor: float, seed: int, per_process: float
) -> tuple[list[list[tuple[FakeSide, FakeSide]]], list[float], object]:
    """Waves of fresh fake pairs, each process with its own lasting offset."""
    clock = [0.0]
    rng = random.Random(seed)
    started: list[list[tuple[FakeSide, FakeSide]]] = []

    def wave(_i: int) -> list[tuple[FakeSide, FakeSide]]:
        pairs = [
            (
                FakeSide(clock, 0.01, rng, 0.01, rng.gauss(0, per_process)),
                FakeSide(clock, 0.01 * factor, rng, 0.01, rng.gauss(0, per_process)),
            )
            for _ in range(4)
        ]
        started.append(pairs)
        return pairs

    return started, clock, wave


def test_waves_average_out_process_offsets() -> None:
    """Each process is ~0.7% off on its own (1% per pair, as measured on a 2-core machine):
    identical code must stay "no significant change", a 2% slowdown must be found."""
    policy = PairedPolicy(process_pairs=4, max_time=20.0, min_effect=1.0)
    outcomes: dict[float, list[tuple[bool, str]]] = {1.0: [], 1.02: []}
    for factor in outcomes:
        for seed in range(60):
            started, clock, wave = _process_waves(factor, seed, per_process=0.007)
            run = run_pairs(wave, policy, rng=random.Random(seed), clock=lambda c=clock: c[0])
            v = verdict_of(run, policy, rev="HEAD", sha="0" * 40)
            outcomes[factor].append((v.significant, v.direction))
            # Every wave had processes of its own, and every pair its blocks.
            assert len(started) == run.waves and len(run.log_ratios) == 4 * run.waves
            assert v.process_pairs == 4 * run.waves
    assert sum(sig for sig, _ in outcomes[1.0]) <= 3  # <= 5% false changes
    found = [d for sig, d in outcomes[1.02] if sig]
    assert len(found) >= 48 and set(found) == {"slower"}  # >= 80%, never "faster"


@pytest.mark.parametrize(
    ("ratio", "significant", "direction", "pct", "fails"),
    [
        (1.10, True, "slower", 5.0, True),
        (1.03, True, "slower", 5.0, False),
        (1.10, False, "same", 5.0, False),
        (0.80, True, "faster", 5.0, False),
        (1.10, True, "slower", None, False),
    ],
)
def test_gate_rule(
    ratio: float, significant: bool, direction: str, pct: float | None, fails: bool
) -> None:
    v = PairedVerdict(
        ratio=ratio,
        low=ratio - 0.01,
        high=ratio + 0.01,
        confidence=0.95,
        significant=significant,
        equivalent=False,
        direction=direction,  # type: ignore[arg-type]
        unit="seconds",
        deterministic=False,
        method="synthetic",
        rev="HEAD",
        sha="0" * 40,
        process_pairs=4,
        pairs=48,
        min_effect=1.0,
    )
    assert v.gate(pct) is fails


def test_faster_line_reads_as_a_speedup() -> None:
    v = PairedVerdict(
        0.5,
        0.48,
        0.52,
        0.95,
        True,
        False,
        "faster",
        "seconds",
        False,
        "m",
        "v1",
        "a" * 40,
        3,
        36,
        1.0,
    )
    assert v.line() == (
        "change: 2.000x faster [1.923-2.083] vs v1 "
        "(paired, same session, 3 process pairs, 36 pairs), significant"
    )


def test_a_waves_workers_are_all_asked_to_quit_before_any_is_awaited() -> None:
    """Closing one by one made each wait for the one before it to exit."""
    log: list[str] = []

    class Worker:
        def __init__(self, name: str) -> None:
            self.name = name

        def ask_to_quit(self) -> None:
            log.append(f"quit {self.name}")

        def wait_closed(self) -> None:
            log.append(f"wait {self.name}")

    a, b, c = Worker("a"), Worker("b"), Worker("c")
    close_pairs([(a, b), (c, c)])  # type: ignore[list-item]
    assert log == ["quit a", "quit b", "quit c", "wait a", "wait b", "wait c"]


def test_only_the_default_budget_gets_a_floor_and_a_run_on() -> None:
    from types import SimpleNamespace

    from pytest_perfreplay.replay.paired import (
        DEFAULT_PAIRED_BUDGET,
        EXTEND,
        EXTEND_CAP,
        FLOOR_CAP,
        FLOOR_WAVES,
    )
    from pytest_perfreplay.replay.paireditem import paired_policy_for
    from pytest_perfreplay.replay.rounds import RoundPolicy

    rounds = RoundPolicy(max_time=45.0, max_rounds=900, confidence=0.9)
    cfg = SimpleNamespace(processes=1, max_time_explicit=False, min_effect=2.0)
    default = paired_policy_for(cfg, rounds)  # type: ignore[arg-type]
    assert default.max_time == DEFAULT_PAIRED_BUDGET
    assert (default.floor_waves, default.extend) == (FLOOR_WAVES, EXTEND) and EXTEND > 1
    assert default.hard_cap == FLOOR_CAP * DEFAULT_PAIRED_BUDGET
    assert default.extend_cap == EXTEND_CAP * DEFAULT_PAIRED_BUDGET
    assert (default.max_letters, default.confidence, default.min_effect) == (900, 0.9, 2.0)
    cfg = SimpleNamespace(processes=6, max_time_explicit=True, min_effect=1.0)
    given = paired_policy_for(cfg, rounds)  # type: ignore[arg-type]
    assert (given.max_time, given.process_pairs) == (45.0, 6)
    assert (given.floor_waves, given.extend) == (0, 1.0)
    assert given.hard_cap == given.extend_cap == math.inf
