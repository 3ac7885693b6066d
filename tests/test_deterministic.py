"""Deterministic mode, the pure parts: the verdict over two counts, the gate, the plan,
preflight messages, cachegrind parsing, the cycle formula and the honesty note.

The real-valgrind sessions are in ``test_deterministic_valgrind.py``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_perfreplay.replay.deterministic import (
    BLIND_SPOTS,
    DeterministicVerdict,
    PlainCalls,
    deterministic_verdict,
    gate_failure,
    phase_words,
    verdict_from_counts,
    waiting_note,
)
from pytest_perfreplay.replay.paired import PairedVerdict
from pytest_perfreplay.replay.valgrind import (
    CYCLES_FORMULA,
    MIN_WARMUP,
    QUICKENED_WARMUP,
    CountError,
    CountResult,
    Valgrind,
    _tool_args,
    bracket_available,
    counting_env,
    cycles,
    parse_cachegrind,
    parse_version,
    phases,
    plan,
    preflight,
    summarize,
    toggles_available,
    too_long,
    unsupported_platform,
)


def count(per_process: list[float], unit: str = "instructions") -> CountResult:
    mean, low, high, spread, method = summarize(per_process, 0.95)
    return CountResult(
        unit=unit,
        per_process=tuple(per_process),
        estimate=mean,
        low=low,
        high=high,
        confidence=0.95,
        spread=spread,
        calls=5,
        warmup=2,
        method=method,
        tool="valgrind --tool=cachegrind",
        valgrind="3.19.0",
        elapsed=1.0,
        target="svc:work",
    )


BASE = [12_000_000.0, 12_000_130.0, 11_999_950.0]


def test_fewer_instructions_reads_exactly_as_promised() -> None:
    cand = [x * 0.982 for x in BASE]
    v = deterministic_verdict(count(BASE), count(cand), rev="HEAD", sha="abc123")
    assert isinstance(v, PairedVerdict) and isinstance(v, DeterministicVerdict)
    assert v.line() == "1.8% fewer instructions than HEAD (deterministic)"
    assert v.significant and not v.equivalent
    assert v.direction == "faster" and v.unit == "instructions" and v.deterministic
    assert v.ratio == pytest.approx(0.982)
    assert v.low <= v.ratio <= v.high
    assert v.process_pairs == 3 and v.rev == "HEAD" and v.sha == "abc123"
    assert "process pairs" in v.method


def test_more_cycles_and_the_json_shape() -> None:
    cand = [x * 1.05 for x in BASE]
    v = deterministic_verdict(count(BASE, "cycles"), count(cand, "cycles"), rev="v1", sha="s")
    assert v.line() == "5.0% more estimated cycles than v1 (deterministic)"
    data = dataclasses.asdict(v)
    assert set(data) == {f.name for f in dataclasses.fields(PairedVerdict)}
    assert data["unit"] == "cycles" and data["direction"] == "slower"


def test_a_change_inside_the_band_is_no_change_and_equivalent() -> None:
    cand = [x * 1.002 for x in BASE]
    v = deterministic_verdict(count(BASE), count(cand), rev="HEAD", sha="s", min_effect=0.01)
    assert not v.significant and v.equivalent and v.direction == "same"
    assert v.line() == (
        "no significant change vs HEAD: 0.2% more instructions, within the 1% minimum effect "
        "(deterministic)"
    )


def test_a_small_change_is_significant_with_a_small_band() -> None:
    cand = [x * 1.005 for x in BASE]
    v = verdict_from_counts(BASE, cand, unit="instructions", rev="HEAD", sha="", min_effect=0.002)
    assert v.significant and v.line() == "0.5% more instructions than HEAD (deterministic)"


def test_identical_counts_are_the_same_with_a_point_interval() -> None:
    v = verdict_from_counts(BASE, BASE, unit="instructions", rev="HEAD", sha="")
    assert v.ratio == 1.0 and v.low == v.high == 1.0
    assert v.line() == "same instructions as HEAD (deterministic)"
    assert v.equivalent and not v.significant


def test_spread_between_processes_widens_the_interval() -> None:
    noisy = [12e6, 12.6e6, 11.4e6]  # 10% spread: a 2% change cannot be claimed
    cand = [x * 0.98 for x in reversed(noisy)]
    v = verdict_from_counts(noisy, cand, unit="instructions", rev="HEAD", sha="")
    assert not v.significant and v.high - v.low > 0.05


# Per-process counts of one 2 ms loop over ints, counted under valgrind here: process i of
# 3 holds i/3 of a pool's worth of blocks of every size class. At some places in the pools
# the same call costs 5.7% more (each allocation fills a pool, each free reopens it).
CHEAP, DEAR = (34_071_911.0, 34_071_907.0, 34_071_916.0), 36_021_782.0


def test_one_pair_at_a_dearer_heap_position_does_not_make_a_change() -> None:
    cand = [*CHEAP[:2], DEAR]  # today's process 2 sits where the count jumps; the baseline's not
    v = verdict_from_counts(CHEAP, cand, unit="instructions", rev="HEAD", sha="")
    assert v.ratio == pytest.approx(1.0, abs=1e-6)  # the median pair
    assert not v.significant and v.direction == "same"
    assert v.high >= DEAR / CHEAP[2]  # the interval holds every pair's ratio
    assert "median of 3 process pairs" in v.method


def test_pairs_that_disagree_on_a_real_change_are_not_a_verdict() -> None:
    agree = [x * 1.02 for x in CHEAP]
    assert verdict_from_counts(CHEAP, agree, unit="instructions", rev="HEAD", sha="").significant
    disagree = [*agree[:2], DEAR * 1.02]
    v = verdict_from_counts(CHEAP, disagree, unit="instructions", rev="HEAD", sha="")
    assert v.ratio == pytest.approx(1.02, rel=1e-6)
    assert not v.significant  # one place in the pools says 7.8%: the data don't pin it down


def test_unequal_process_counts_use_the_welch_interval() -> None:
    cand = [x * 0.9 for x in BASE[:2]]
    v = verdict_from_counts(BASE, cand, unit="instructions", rev="HEAD", sha="")
    assert "Welch" in v.method and v.significant and v.direction == "faster"
    assert v.ratio == pytest.approx(0.9, rel=1e-4)


def test_one_process_per_side_is_never_significant() -> None:
    v = verdict_from_counts([10.0], [5.0], unit="instructions", rev="HEAD", sha="")
    assert math.isinf(v.high) and not v.significant


def test_units_must_match_and_counts_be_positive() -> None:
    with pytest.raises(ValueError, match="cannot compare instructions with cycles"):
        deterministic_verdict(count(BASE), count(BASE, "cycles"), rev="HEAD", sha="")
    with pytest.raises(ValueError, match="positive"):
        verdict_from_counts([0.0], [1.0], unit="instructions", rev="HEAD", sha="")


def test_gate_follows_the_contract_whatever_the_unit() -> None:
    slower = verdict_from_counts(
        BASE, [x * 1.03 for x in BASE], unit="instructions", rev="HEAD", sha=""
    )
    faster = verdict_from_counts(
        BASE, [x * 0.9 for x in BASE], unit="instructions", rev="HEAD", sha=""
    )
    assert gate_failure(slower, None) is None
    assert gate_failure(slower, 5) is None  # 3% slower is under a 5% gate
    message = gate_failure(slower, 2)
    assert message == (
        "3.0% more instructions than HEAD (deterministic): over the "
        "--perf-replay-fail-slower=2% gate"
    )
    assert gate_failure(faster, 0) is None
    timed = dataclasses.replace(slower, unit="seconds", deterministic=False)
    assert gate_failure(timed, 2) is not None  # the rule does not look at the unit
    unsure = dataclasses.replace(slower, significant=False)
    assert gate_failure(unsure, 0) is None


# -- preflight ------------------------------------------------------------------------------


def test_preflight_names_the_package_when_valgrind_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PERFREPLAY_VALGRIND", raising=False)
    with pytest.raises(
        CountError, match=r"not on PATH: install it with `sudo apt-get install valgrind`"
    ):
        preflight(which=lambda name: None)


def test_preflight_refuses_an_old_valgrind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERFREPLAY_VALGRIND", raising=False)
    with pytest.raises(CountError, match=r"needs valgrind >= 3\.16, found 3\.13\.0 at /opt/vg"):
        preflight(which=lambda name: "/opt/vg", run=lambda path: "valgrind-3.13.0")
    vg = preflight(which=lambda name: f"/usr/bin/{name}", run=lambda path: "valgrind-3.22.0")
    assert vg.version == (3, 22, 0) and vg.version_text == "3.22.0"


def test_platforms_where_valgrind_cannot_run() -> None:
    assert "Apple silicon" in (unsupported_platform("Darwin", "arm64") or "")
    assert "Windows" in (unsupported_platform("Windows", "AMD64") or "")
    assert unsupported_platform("Darwin", "x86_64") is None
    assert unsupported_platform("Linux", "x86_64") is None
    assert parse_version("valgrind-3.19.0") == (3, 19, 0)
    assert parse_version("nonsense") is None


def test_plan_and_the_too_long_refusal() -> None:
    short = plan(0.001, 0.0001, processes=3, method="difference")
    assert short.warmup == 10 and short.calls == 2  # quickening needs ~8 executions
    long = plan(0.2, 0.001, processes=3, method="difference")
    assert long.warmup == MIN_WARMUP and long.calls == 1
    estimate = long.estimate("instructions", startup=0.0, jobs=2)
    # eight warm-up calls, then three counted ones on two cores, all at cachegrind's ~17x
    assert estimate > (8 + 3 / 2) * 0.2 * 17
    assert long.estimate("cycles", startup=0.0, jobs=2) > estimate
    message = too_long(estimate, 10, "3 processes")
    assert message is not None
    assert f"about {estimate:.0f} s (3 processes), over the 10 s budget" in message
    assert "--perf-replay-max-time" in message and "rather than cycles" not in message
    assert "rather than cycles" in (too_long(estimate, 10, "x", "cycles") or "")
    assert too_long(estimate, estimate + 1, "x") is None


# -- parsing and formulas ---------------------------------------------------------------------


def test_parse_cachegrind_and_the_cycle_formula(tmp_path: Path) -> None:
    out = tmp_path / "cachegrind.out"
    out.write_text(
        "desc: I1 cache: 32768 B, 64 B, 8-way associative\ncmd: python\n"
        "events: Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw\n"
        "fl=x.c\nfn=f\n1 1000 10 1 400 20 2 200 10 1\n"
        "summary: 1000 10 1 400 20 2 200 10 1\n"
    )
    events = parse_cachegrind(out)
    assert events["Ir"] == 1000 and events["DLmw"] == 1
    # accesses 1600, L1 misses 40, RAM 4: 1560 L1 hits + 5 x 36 LL hits + 30 x 4
    assert cycles(events) == 1560 + 5 * 36 + 30 * 4
    assert "L1 hits + 5 x LL hits + 30 x RAM" in CYCLES_FORMULA
    bad = tmp_path / "bad.out"
    bad.write_text("nothing here\n")
    with pytest.raises(CountError, match="cannot read valgrind's totals"):
        parse_cachegrind(bad)


def test_summarize_over_processes() -> None:
    mean, low, high, spread, method = summarize([100.0, 101.0, 99.0], 0.95)
    assert mean == 100.0 and low < 100 < high
    assert spread == pytest.approx(0.02)
    assert "Student-t over 3 processes" in method
    assert summarize([5.0, 5.0, 5.0], 0.95)[1:3] == (5.0, 5.0)


def test_counting_env_is_reproducible() -> None:
    base = {"PYTHONHASHSEED": "random", "PYTHONMALLOC": "malloc", "HOME": "/root"}
    env = counting_env(["/baseline"], base)
    assert env["PYTHONHASHSEED"] == "0" and "PYTHONMALLOC" not in env
    assert env["PYTHONPATH"].split(":")[0] == "/baseline"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PERFREPLAY_CAPTURE"] == "0"


def test_waiting_note_flags_a_call_that_mostly_waits() -> None:
    busy = PlainCalls(wall=(0.010, 0.010), cpu=(0.0098, 0.0099), unpickle=0.0)
    idle = PlainCalls(wall=(0.100, 0.100), cpu=(0.001, 0.002), unpickle=0.0)
    assert waiting_note(busy) is None
    preempted = PlainCalls(wall=(0.010, 0.200, 0.150), cpu=(0.0099, 0.010, 0.010), unpickle=0.0)
    assert waiting_note(preempted) is None  # load slows some calls; one undisturbed suffices
    note = waiting_note(idle)
    assert note is not None and note.startswith("!! 98% of this call's wall time")
    assert "--perf-replay-measure=time" in note
    assert "neither I/O, nor sleeping, nor waiting on locks or the network" in BLIND_SPOTS


def test_history_table_keeps_counts_and_times_apart() -> None:
    from pytest_perfreplay.cli.history import table
    from pytest_perfreplay.replay.history import Entry, aa_pairs

    def entry(i: int, unit: str, estimate: float, samples: list[float]) -> Entry:
        return Entry(
            iteration=i,
            time=0.0,
            commit="abc",
            dirty=False,
            target="svc:f",
            snapshot="s",
            estimator="median" if unit == "seconds" else "mean",
            estimate=estimate,
            low=estimate,
            high=estimate,
            precision=0.0,
            rounds=len(samples) or 5,
            target_met=True,
            samples=samples,
            processes=1 if unit == "seconds" else 3,
            group_estimates=[] if unit == "seconds" else [estimate, estimate + 3, estimate - 3],
            code_hash="h",
            unit=unit,
        )

    timed = [0.010 + 0.00001 * k for k in range(30)]
    entries = [
        entry(1, "seconds", 0.010, timed),
        entry(2, "instructions", 1_000_000.0, []),
        entry(3, "seconds", 0.005, [x / 2 for x in timed]),
    ]
    # The table shows the comparison the run recorded (iteration 3 against 1, the
    # previous *timed* one), never one recomputed across units.
    recorded = {"against": 1, "ratio": 2.0, "significant": True, "verdict": "faster"}
    entries[2] = dataclasses.replace(entries[2], vs_previous=recorded)
    lines = table(entries)
    assert "1,000,000  instructions per call, spread over 3 processes 0.0006%" in lines[2]
    assert "2x faster" in lines[3]
    assert aa_pairs(entries) == []  # a count and a time never make an A/A pair


def test_both_sides_of_a_pair_are_counted_at_once() -> None:
    import threading

    from pytest_perfreplay.replay.deterministic import count_both_sides

    both_running = threading.Barrier(2, timeout=30)  # one side alone would time out

    def side(import_roots: list[str], cancel: threading.Event) -> CountResult:
        both_running.wait()
        return count(BASE if import_roots else [x * 1.05 for x in BASE])

    baseline, candidate = count_both_sides(side, ["/base"], baseline_label="counting HEAD")
    assert baseline.per_process == tuple(BASE) and candidate.estimate > baseline.estimate


def test_a_failing_side_stops_the_other_and_is_the_error_reported() -> None:
    import threading

    from pytest_perfreplay.replay.deterministic import count_both_sides
    from pytest_perfreplay.replay.valgrind import CountCancelled, CountError

    stopped: list[bool] = []

    def side(import_roots: list[str], cancel: threading.Event) -> CountResult:
        if import_roots:
            raise CountError("the counting process failed (exit 1) for svc:work")
        stopped.append(cancel.wait(30))  # a long count, until told to stop
        raise CountCancelled("stopped")

    with pytest.raises(CountError) as info:
        count_both_sides(side, ["/base"], baseline_label="counting HEAD (abc)")
    assert (
        str(info.value) == "counting HEAD (abc): the counting process failed (exit 1) for svc:work"
    )
    assert stopped == [True]

    def candidate_fails(import_roots: list[str], cancel: threading.Event) -> CountResult:
        if not import_roots:
            raise CountError("the counting process failed (exit 1) for svc:work")
        stopped.append(cancel.wait(30))
        raise CountCancelled("stopped")

    with pytest.raises(CountError, match=r"^the counting process failed"):
        count_both_sides(candidate_fails, ["/base"], baseline_label="counting HEAD (abc)")
    assert stopped == [True, True]


def test_count_pair_counts_both_sides_alike_with_the_baseline_root_first() -> None:
    from pytest_perfreplay.replay.deterministic import count_pair

    calls: list[tuple[str, dict[str, object]]] = []

    def fake_counter(snapshot: str, target: str, **options: object) -> CountResult:
        calls.append((target, options))
        roots = options["import_roots"]
        return count(BASE if roots else [x * 0.982 for x in BASE])

    baseline, candidate, v = count_pair(
        "s.prsnap",
        "svc:work",
        baseline_root="/tmp/base-tree",
        rev="HEAD",
        sha="abc",
        counter=fake_counter,
        store=".perfreplay",
        mode="instructions",
        processes=3,
        import_roots=["ignored"],
    )
    assert sorted(c[1]["import_roots"] for c in calls) == [[], ["/tmp/base-tree"]]
    assert all(c[1]["processes"] == 3 and c[1]["store"] == ".perfreplay" for c in calls)
    assert v.line() == "1.8% fewer instructions than HEAD (deterministic)"
    assert baseline.per_process == tuple(BASE) and candidate.estimate < baseline.estimate


def test_a_call_below_the_process_noise_is_said_to_be_uncountable() -> None:
    from pytest_perfreplay.replay.deterministic import count_lines, countable

    busy = PlainCalls(wall=(0.03,), cpu=(0.0001,), unpickle=0.0)
    lines = count_lines(count([-600.0, 250.0, -100.0]), busy)
    assert not countable(count([-600.0, 250.0, -100.0]))
    assert any("does too little work to count apart from the process itself" in x for x in lines)
    assert any(x.startswith("  !! 100% of this call's wall time") for x in lines)
    assert countable(count(BASE))


def test_every_count_is_warmed_up_past_quickening_whatever_the_call_length() -> None:
    # 3.11 quickens a code object on its 8th entry: code entered once per call runs
    # unquickened in calls 1-7 however long the call (a long call once got 2 warm-ups).
    for seconds in (1e-5, 1e-3, 0.005, 0.02, 0.1, 1.0, 30.0):
        for method in ("bracket", "difference"):
            assert plan(seconds, 0.0, processes=3, method=method).warmup >= MIN_WARMUP >= 8
    assert plan(1e-3, 0.0, processes=3).warmup == 10  # short calls fill 50 ms of warm-up
    # Where the counting process quickens what the first call entered: 3, whatever the
    # call's length (one to enter, one to quicken and specialize, one settled).
    for seconds in (1e-5, 1e-3, 0.02, 1.0):
        quick = plan(seconds, 0.0, processes=3, quicken=True)
        assert quick.quicken and quick.warmup == QUICKENED_WARMUP == 3


def test_quickening_at_once_takes_what_a_call_entered_and_nothing_else() -> None:
    """CPython 3.11 quickens a code object on its 8th entry; after one call, what the
    call entered quickens on its next entry, and code it never entered is left alone."""
    import dis

    from pytest_perfreplay.replay.quicken import FRESH, _warmup, quicken_entered, supported

    if sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11):
        assert not supported()
        assert quicken_entered() == 0
        return
    assert supported()
    scope: dict[str, Any] = {}
    exec(  # fresh code objects, not shared with any other test
        "def inner(x):\n"
        "    return x + 1\n"
        "def entered(n):\n"
        "    squares = [i * i for i in (n, n)]\n"
        "    return inner(squares[0])\n"
        "def never(n):\n"
        "    return n - 1\n",
        scope,
    )
    entered, inner, never = scope["entered"], scope["inner"], scope["never"]
    (comprehension,) = [c for c in entered.__code__.co_consts if hasattr(c, "co_code")]

    def first_op(code: Any) -> str:
        return next(iter(dis.get_instructions(code, adaptive=True))).opname

    entered(3)
    for code in (entered.__code__, inner.__code__, comprehension):
        # one up per entry and per backward jump (the comprehension loops twice)
        assert FRESH < _warmup(code).value < 0 and first_op(code) != "RESUME_QUICK"
    assert quicken_entered() >= 3
    assert _warmup(never.__code__).value == FRESH  # never entered: untouched
    entered(3)  # the second call: every code object it enters quickens on entry
    for code in (entered.__code__, inner.__code__, comprehension):
        assert first_op(code) == "RESUME_QUICK", code.co_name
    never(3)
    assert _warmup(never.__code__).value == FRESH + 1  # counts its own eight, as before
    assert first_op(never.__code__) != "RESUME_QUICK"


def test_quickening_is_refused_where_the_interpreter_cannot(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A count asked to quicken at once on another interpreter fails with what to do,
    rather than counting code the warm-up left cold."""
    import pytest_perfreplay.replay.quicken as quicken
    import pytest_perfreplay.replay.valgrind as valgrind
    from pytest_perfreplay.replay.counting import _quicken

    monkeypatch.setattr(valgrind, "quicken_supported", lambda: False)
    vg = Valgrind("/usr/bin/valgrind", (3, 24, 0), None)
    with pytest.raises(CountError, match="needs CPython 3.11 .* 8 plain warm-up calls"):
        valgrind.count_calls(
            tmp_path / "x.prsnap", "m:f", store=tmp_path, valgrind=vg, quicken=True
        )
    monkeypatch.setattr(quicken, "supported", lambda: False)
    with pytest.raises(RuntimeError, match="do not have CPython 3.11's layout"):
        _quicken()


def test_the_planner_takes_the_method_its_estimate_says_costs_less() -> None:
    # Forked processes carry no start-up noise: a couple of calls, one from 5 ms on.
    short = plan(0.001, 0.0001, processes=3, method="bracket")
    assert short.method == "bracket" and short.warmup == 10 and short.calls == 2
    assert plan(0.005, 0.0, processes=3, method="bracket").calls == 1
    assert plan(0.2, 0.001, processes=3, method="bracket").calls == 1
    jobs = os.cpu_count() or 1
    for seconds in (0.001, 0.01, 0.02, 0.1, 0.2, 1.0):
        both = {
            m: plan(seconds, 0.0, processes=3, method=m).estimate("instructions", jobs=jobs)
            for m in ("bracket", "difference")
        }
        chosen = plan(seconds, 0.0, processes=3).method
        if not bracket_available():
            assert chosen == "difference"
        else:
            assert both[chosen] == min(both.values()), (seconds, chosen, both)
    # callgrind's uninstrumented start-up and warm-up win for short and ~10 ms calls;
    # cachegrind's cheaper instrumented calls for long ones
    assert plan(0.001, 0.0, processes=3, method="bracket").estimate("instructions", jobs=2) < plan(
        0.001, 0.0, processes=3, method="difference"
    ).estimate("instructions", jobs=2)
    assert plan(1.0, 0.0, processes=3, method="difference").estimate("instructions", jobs=2) < plan(
        1.0, 0.0, processes=3, method="bracket"
    ).estimate("instructions", jobs=2)
    # cycles simulate caches: dearer than instructions under either method
    assert short.estimate("cycles", jobs=2) > short.estimate("instructions", jobs=2)


def test_cachegrind_toggles_keep_start_up_and_warm_up_out_of_the_instrumented_cost() -> None:
    """valgrind >= 3.22: a difference count's parent runs uninstrumented (~10x, not ~17x),
    which for a 100 ms call is most of what a count costs."""
    old = Valgrind("/usr/bin/valgrind", (3, 19, 0), None)
    new = Valgrind("/opt/valgrind", (3, 24, 0), None)
    assert not toggles_available(old)
    assert toggles_available(new) == bracket_available()  # client requests needed too
    assert not toggles_available(new, "cycles")  # each child's simulated caches: cold
    for seconds in (0.01, 0.1, 1.0):
        plain = plan(seconds, 0.0, processes=3, method="difference")
        toggled = plan(seconds, 0.0, processes=3, method="difference", toggles=True)
        assert toggled.toggles and not plain.toggles
        assert toggled.estimate("instructions", jobs=2) < plain.estimate("instructions", jobs=2)
        # the warm-up runs at the uninstrumented ~10x: 8 calls cost 80x the call, not 160x
        saved = plain.estimate("instructions", jobs=2) - toggled.estimate("instructions", jobs=2)
        assert saved > 8 * seconds * 9
    assert not plan(0.1, 0.0, processes=3, method="bracket", toggles=True).toggles
    if bracket_available():
        # With the parent uninstrumented either way, cachegrind's cheaper counted calls win
        # from ~10 ms; below, its forked processes' re-translation after the switch (~0.2 s
        # each; 9 processes then, 6 now) outweighs them. Measured on valgrind 3.24 with 9:
        # 1 ms, 2.09 s bracketed against 2.86 s toggled; 10 ms, 3.55 s against 3.51 s;
        # 100 ms, 20.1 s against 10.8 s.
        assert plan(0.1, 0.0, processes=3, toggles=True).method == "difference"
        assert plan(0.01, 0.0, processes=3, toggles=True).method == "difference"
        assert plan(0.001, 0.0, processes=3, toggles=True).method == "bracket"
    assert "--instr-at-start=no" in _tool_args("instructions", "out", "difference", True)
    assert "--instr-at-start=no" not in _tool_args("instructions", "out", "difference")


def test_toggles_asked_of_an_old_valgrind_are_refused_with_the_version(tmp_path: Path) -> None:
    from pytest_perfreplay.replay.valgrind import count_calls

    old = Valgrind("/usr/bin/valgrind", (3, 19, 0), None)
    with pytest.raises(CountError, match=r"needs valgrind >= 3\.22.*found valgrind 3\.19\.0"):
        count_calls(
            tmp_path / "x.prsnap",
            "m:f",
            store=tmp_path,
            valgrind=old,
            method="difference",
            toggles=True,
        )


def test_client_requests_are_no_ops_outside_valgrind() -> None:
    from pytest_perfreplay.replay.clientreq import ClientRequests, available

    if not available():
        pytest.skip("client requests exist for x86-64 Linux only")
    vg = ClientRequests()
    # On a real CPU the special sequence does nothing and the default (0) comes back.
    assert vg.running_on_valgrind() == 0
    assert vg.toggle_collect() == 0 and vg.dump_stats() == 0
    assert vg.cachegrind_start() == 0 and vg.cachegrind_stop() == 0


def test_the_counting_process_imports_asyncio_only_for_async_targets() -> None:
    """Its ~50 modules cost about a second of every count's start-up under valgrind."""
    code = (
        "import sys, pytest_perfreplay.replay.counting, pytest_perfreplay.replay.call\n"
        "print('asyncio' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


def test_a_heap_pad_holds_its_share_of_a_pool_in_every_size_class() -> None:
    from pytest_perfreplay.replay.heappad import POOL_BYTES, SIZE_CLASSES, heap_pad

    assert heap_pad(0, 3) == []
    pad = heap_pad(1, 2)
    blocks = [(sys.getsizeof(x) + 15) // 16 * 16 for x in pad]
    for block in SIZE_CLASSES:
        assert blocks.count(block) == POOL_BYTES // block // 2, block
    assert len(heap_pad(2, 3)) > len(pad)


def test_a_counts_wall_time_is_split_into_its_phases_or_not_at_all() -> None:
    marks = {"loaded": 2.0, "warmed": 5.5, "counted": 8.0}
    parts = phases(0.0, 0.4, marks, 8.25)
    assert parts == {
        "prewarm": 0.4,
        "start-up": 1.6,
        "warm-up": 3.5,
        "counted processes": 2.5,
        "exit": 0.25,
    }
    assert sum(parts.values()) == pytest.approx(8.25)
    assert phase_words(parts) == (
        " (prewarm 0.4 s, start-up 1.6 s, warm-up 3.5 s, counted processes 2.5 s, exit 0.2 s)"
    )
    # A process that died before its last mark: no half-filled split.
    assert phases(0.0, 0.4, {"loaded": 2.0}, 3.0) == {}
    assert phase_words({}) == ""


def test_a_phase_mark_is_one_byte_and_leaves_nothing_on_the_heap() -> None:
    """The forked processes' counts depend on the parent's heap: a mark made between the
    warm-up and the forks must not leave an object behind."""
    from pytest_perfreplay.replay.counting import _mark

    read, write = os.pipe()
    try:
        job = {"marks_fd": write}
        _mark(job, b"L")  # first call: whatever a first call sets up
        a = sys.getallocatedblocks()
        b = sys.getallocatedblocks()  # b - a: the int a itself
        c = sys.getallocatedblocks()
        _mark(job, b"W")
        d = sys.getallocatedblocks()
        assert d - c == b - a
        assert os.read(read, 16) == b"LW"
        _mark({}, b"C")  # no fd (the native pre-run): nothing written, no error
        os.close(write)
        _mark(job, b"C")  # the parent is gone: the count goes on
    finally:
        os.close(read)
