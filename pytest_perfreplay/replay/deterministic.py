"""Deterministic mode on the pytest side: count an item, report it, judge a change.

The verdict over two counts is pure (:func:`deterministic_verdict`), and so is the gate
(:func:`gate_failure`), so both are tested exactly; :func:`count_item` is what a snapshot
item runs instead of timed rounds under ``--perf-replay-measure=instructions|cycles``.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from .paired import PairedVerdict
from .valgrind import CountResult

if TYPE_CHECKING:
    from ..snapshot.format import Snapshot
    from .call import Replayer
    from .history import Entry
    from .session import ItemOutcome, ReplaySession
    from .valgrind import Plan, Valgrind

#: Said once per session in this mode: what a count cannot see.
BLIND_SPOTS = (
    "deterministic mode counts the instructions the call executes under valgrind; it sees "
    "neither I/O, nor sleeping, nor waiting on locks or the network"
)
#: The band a change must clear to be called one (a fraction); --perf-replay-min-effect
#: sets it for paired runs.
MIN_EFFECT = 0.01
#: A call whose CPU time is less than this share of its wall time is mostly waiting.
MOSTLY_WAITING = 0.5

_UNIT_WORDS = {"instructions": "instructions", "cycles": "estimated cycles"}


def _pct(x: float) -> str:
    """1.8%, 0.52%, 0.0031%: enough digits to be read, never more than the data has."""
    value = abs(x) * 100
    return f"{value:.1f}%" if value >= 1 else f"{value:.2g}%"


@dataclass(frozen=True)
class DeterministicVerdict(PairedVerdict):
    """A paired verdict on counts: exact enough to be said in plain words."""

    def line(self) -> str:
        words = _UNIT_WORDS.get(self.unit, self.unit)
        change = self.ratio - 1
        if self.significant:
            more = "more" if change > 0 else "fewer"
            return f"{_pct(change)} {more} {words} than {self.rev} (deterministic)"
        if change == 0:
            return f"same {words} as {self.rev} (deterministic)"
        more = "more" if change > 0 else "fewer"
        return (
            f"no significant change vs {self.rev}: {_pct(change)} {more} {words}, within the "
            f"{self.min_effect:g}% minimum effect (deterministic)"
        )


def _t(confidence: float, df: int) -> float:
    from .stats import _sps

    return float(_sps().t.ppf(0.5 + confidence / 2, df))


def verdict_from_counts(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    unit: str,
    rev: str,
    sha: str,
    min_effect: float = 0.01,
    confidence: float = 0.95,
) -> DeterministicVerdict:
    """Candidate / baseline from per-process per-call counts.

    With the same number of processes on each side, process ``i`` of one side pairs with
    process ``i`` of the other (the same heap pad, so both sit at the same place in the
    allocator's pools). The estimate is the median per-pair log ratio: a call's count can
    jump by a few percent at some places in the pools, and a pair in such a place on one
    side only must not move the verdict. The interval is Student-t over the per-pair log
    ratios, widened to hold every pair's ratio, so pairs that disagree are never a
    "significant" change. Otherwise it is a Welch interval on the difference of mean log
    counts. A spread of zero gives a point interval: the counts really did not move.
    """
    if not baseline or not candidate or min(*baseline, *candidate) <= 0:
        raise ValueError("counts must be positive, at least one per side")
    logs_b = [math.log(x) for x in baseline]
    logs_c = [math.log(x) for x in candidate]
    if len(logs_b) == len(logs_c):
        diffs = [c - b for b, c in zip(logs_b, logs_c, strict=True)]
        k = len(diffs)
        centre = statistics.median(diffs)
        if k >= 2:
            mean = statistics.fmean(diffs)
            half = _t(confidence, k - 1) * statistics.stdev(diffs) / math.sqrt(k)
            lo_log = min(mean - half, *diffs)
            hi_log = max(mean + half, *diffs)
        else:
            lo_log, hi_log = -math.inf, math.inf
        method = (
            f"median of {k} process pairs' log count ratios; Student-t interval widened to "
            "every pair's ratio"
        )
        pairs = k
    else:
        kb, kc = len(logs_b), len(logs_c)
        centre = statistics.fmean(logs_c) - statistics.fmean(logs_b)
        vb = statistics.variance(logs_b) / kb if kb > 1 else math.inf
        vc = statistics.variance(logs_c) / kc if kc > 1 else math.inf
        se = math.sqrt(vb + vc)
        if math.isfinite(se) and se > 0:
            df = (vb + vc) ** 2 / (vb**2 / (kb - 1) + vc**2 / (kc - 1))
            half = _t(confidence, max(1, math.floor(df))) * se
        else:
            half = 0.0 if se == 0 else math.inf
        method = f"Welch interval on mean log counts ({kb} vs {kc} processes)"
        pairs = min(kb, kc)
        lo_log, hi_log = centre - half, centre + half
    ratio = math.exp(centre)
    low, high = math.exp(lo_log), math.exp(hi_log)
    band_low, band_high = 1 / (1 + min_effect), 1 + min_effect
    significant = low > band_high or high < band_low
    equivalent = band_low <= low and high <= band_high
    if unit not in ("instructions", "cycles"):
        raise ValueError(f"a count's unit is 'instructions' or 'cycles', not {unit!r}")
    direction: Literal["slower", "faster", "same"] = (
        ("slower" if ratio > 1 else "faster") if significant else "same"
    )
    return DeterministicVerdict(
        ratio=ratio,
        low=low,
        high=high,
        confidence=confidence,
        significant=significant,
        equivalent=equivalent,
        direction=direction,
        unit=cast(Literal["instructions", "cycles"], unit),
        deterministic=True,
        method=f"{method}, counted under valgrind",
        rev=rev,
        sha=sha,
        process_pairs=pairs,
        pairs=pairs,
        min_effect=min_effect * 100,  # percent, like every PairedVerdict
    )


def deterministic_verdict(
    baseline: CountResult,
    candidate: CountResult,
    *,
    rev: str,
    sha: str,
    min_effect: float = 0.01,
    confidence: float = 0.95,
) -> DeterministicVerdict:
    """The paired verdict of two counts of the same snapshot (baseline tree vs today's)."""
    if baseline.unit != candidate.unit:
        raise ValueError(
            f"cannot compare {baseline.unit} with {candidate.unit}: count both sides alike"
        )
    return verdict_from_counts(
        baseline.per_process,
        candidate.per_process,
        unit=candidate.unit,
        rev=rev,
        sha=sha,
        min_effect=min_effect,
        confidence=confidence,
    )


def count_pair(
    snapshot_path: str | Path,
    target: str,
    *,
    baseline_root: str | Path,
    rev: str,
    sha: str,
    min_effect: float = MIN_EFFECT,
    confidence: float = 0.95,
    counter: Callable[..., CountResult] | None = None,
    **count_options: Any,
) -> tuple[CountResult, CountResult, DeterministicVerdict]:
    """Count the baseline tree and today's code alike, and judge the change.

    The baseline differs only by its import root (a checkout of ``rev``, first on
    ``sys.path``); everything else in ``count_options`` (store, mode, processes, warmup,
    calls, gc, ...) is the same for both sides, so their processes pair up one to one.
    Counts are not disturbed by load, so the sides are counted at once
    (:func:`count_both_sides`).
    """
    if counter is None:
        from .valgrind import count_calls

        counter = count_calls
    options = {k: v for k, v in count_options.items() if k != "import_roots"}
    baseline, candidate = count_both_sides(
        lambda **more: counter(snapshot_path, target, **options, **more),
        [str(baseline_root)],
        baseline_label=f"counting {rev}",
    )
    verdict = deterministic_verdict(
        baseline, candidate, rev=rev, sha=sha, min_effect=min_effect, confidence=confidence
    )
    return baseline, candidate, verdict


def count_both_sides(
    count: Callable[..., CountResult],
    baseline_roots: Sequence[str],
    *,
    baseline_label: str,
) -> tuple[CountResult, CountResult]:
    """(baseline, candidate): both counted at once, one thread each.

    ``count(import_roots=..., cancel=...)`` counts one side. A count does not move with
    the machine's load (beside a CPU hog it was the same to the digit), and each side's
    valgrind process runs its start-up and warm-up on one core, so on two cores a pair
    costs little more than one side. When one side fails, or the run is interrupted, the
    other side's processes are killed: nobody waits for a count that cannot be used.
    A baseline failure is prefixed with ``baseline_label``.
    """
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    from .valgrind import CountCancelled, CountError

    cancel = threading.Event()
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="perfreplay-count")
    try:
        base = pool.submit(count, import_roots=list(baseline_roots), cancel=cancel)
        cand = pool.submit(count, import_roots=[], cancel=cancel)
        done, _ = wait([base, cand], return_when=FIRST_EXCEPTION)
        if any(f.exception() is not None for f in done):
            cancel.set()
        wait([base, cand])
    except BaseException:
        cancel.set()  # Ctrl-C: the counts' processes run in sessions of their own
        raise
    finally:
        pool.shutdown(wait=True)
    # the side that failed first on its own, not the one stopped because of it
    errors = [
        (label, f.exception())
        for label, f in ((baseline_label, base), (None, cand))
        if f.exception() is not None
    ]
    errors.sort(key=lambda e: isinstance(e[1], CountCancelled))
    if errors:
        label, exc = errors[0]
        if label is not None and isinstance(exc, CountError):
            raise CountError(f"{label}: {exc}") from exc
        assert exc is not None
        raise exc
    return base.result(), cand.result()


def gate_failure(verdict: PairedVerdict, fail_slower: float | None) -> str | None:
    """``--perf-replay-fail-slower=PCT``: why the item fails, or None. Any unit."""
    if fail_slower is None:
        return None
    if (
        verdict.significant
        and verdict.direction == "slower"
        and verdict.ratio > 1 + fail_slower / 100
    ):
        return f"{verdict.line()}: over the --perf-replay-fail-slower={fail_slower:g}% gate"
    return None


def verdict_json(verdict: PairedVerdict) -> dict[str, Any]:
    return asdict(verdict)


# -- honest labels ------------------------------------------------------------------------


@dataclass(frozen=True)
class PlainCalls:
    """A few plain (native, unprofiled) calls: wall and CPU time, and unpickling time."""

    wall: tuple[float, ...]
    cpu: tuple[float, ...]
    unpickle: float  # seconds, median

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_share(self) -> float:
        """CPU time over wall time of the least disturbed call: on a loaded machine the
        others are preempted, which lowers their share; waiting lowers every call's."""
        shares = [min(1.0, c / w) for c, w in zip(self.cpu, self.wall, strict=True) if w > 0]
        return max(shares) if shares else 1.0


def time_plain_calls(
    fresh_args: Callable[[], tuple[tuple[Any, ...], dict[str, Any]]],
    call: Callable[[tuple[Any, ...], dict[str, Any]], Any],
    *,
    repeat: int = 5,
    budget: float = 2.0,
) -> PlainCalls:
    """Time a few plain calls, wall and process CPU, to estimate the cost and the waiting."""
    walls: list[float] = []
    cpus: list[float] = []
    unpickles: list[float] = []
    started = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        args, kwargs = fresh_args()
        unpickles.append(time.perf_counter() - t0)
        w0, c0 = time.perf_counter(), time.process_time()
        with contextlib.suppress(Exception):  # a raising call is counted on its raising path
            call(args, kwargs)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        if time.perf_counter() - started > budget:
            break
    return PlainCalls(tuple(walls), tuple(cpus), statistics.median(unpickles))


def waiting_note(plain: PlainCalls) -> str | None:
    share = plain.cpu_share
    if share >= MOSTLY_WAITING:
        return None
    return (
        f"!! {1 - share:.0%} of this call's wall time is spent off the CPU (I/O, sleeping, "
        f"locks or network: CPU {share:.0%} of wall even in the least disturbed of "
        f"{len(plain.wall)} plain calls); "
        "the count does not see it, so measure this target with --perf-replay-measure=time"
    )


# -- one snapshot item ----------------------------------------------------------------------

#: Budget for a count when --perf-replay-max-time was not given: valgrind start-up alone
#: takes seconds per process, far over the timed mode's default of 10 s.
DEFAULT_BUDGET = 300.0


def _fmt_count(value: float) -> str:
    if not math.isfinite(value):
        return "unbounded"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def phase_words(phases: Mapping[str, float]) -> str:
    """Where a count's wall time went, for its summary line: "" when it was not timed."""
    if not phases:
        return ""
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases.items())
    return f" ({parts})"


def count_lines(result: CountResult, plain: PlainCalls) -> list[str]:
    """The summary block of one count."""
    words = _UNIT_WORDS.get(result.unit, result.unit)
    ci = f"[{_fmt_count(result.low)} – {_fmt_count(result.high)}]"
    lines = [
        f"  {words} per call {_fmt_count(result.estimate)}  {result.confidence:.0%} CI {ci}  "
        f"spread {_pct(result.spread)} over {result.processes} processes (deterministic)",
        f"  {result.calls} counted calls after {result.warmup} warm-up per process"
        + (" (the first's code quickened at once)" if result.quickened else "")
        + ", each "
        + (
            "call bracketed by callgrind client requests, minus the same bracket around a no-op"
            if result.counting == "bracket"
            else "process's cachegrind total minus "
            + (
                "that of one forked beside it without the calls (each instrumented from its "
                "loop's start to its end only)"
                if result.toggled
                else "that of two forked beside it without the calls"
            )
        )
        + f"; valgrind {result.valgrind}, {result.elapsed:.1f} s{phase_words(result.phases)}",
    ]
    if result.unit == "cycles" and result.cache:
        caches = ", ".join(f"{name} {geometry}" for name, geometry in result.cache.items())
        lines.append(f"  {result.formula}; caches {caches} (size,ways,line)")
        lines.append(f"  instructions per call {_fmt_count(result.events.get('Ir', math.nan))}")
    if not countable(result):
        lines.append(
            f"  !! the counted calls executed no more {words} than the same process without "
            "them: the call does too little work to count apart from the process itself"
        )
    lines.append(
        f"  plain call: wall {plain.wall_median * 1e3:.3g} ms, CPU {plain.cpu_share:.0%} of "
        f"wall (the least disturbed of {len(plain.wall)} calls)"
    )
    note = waiting_note(plain)
    if note:
        lines.append(f"  {note}")
    return lines


def countable(result: CountResult) -> bool:
    """Whether every process counted a positive amount of work per call."""
    return min(result.per_process) > 0


def count_item(
    *,
    replayer: Replayer,
    benchmark: Any,
    state: ReplaySession,
    outcome: ItemOutcome,
    snapshot: Snapshot,
    func: Callable[..., Any],
    target: str,
    rootdir: str,
    why_not_fresh: str | None,
) -> CountResult:
    """Count one snapshot's call, report it, and keep it in the history with its unit."""
    from ..snapshot.format import code_hash
    from .history import Entry, Ledger, git_state, now
    from .quicken import supported as quicken_supported
    from .session import ReplayFailure
    from .valgrind import CountError, count_calls, plan, preflight, toggles_available, too_long

    cfg = state.config
    mode = cfg.measure
    if why_not_fresh is not None:
        raise ReplayFailure(
            f"cannot count this snapshot: {why_not_fresh}, and counting runs in fresh "
            "processes under valgrind; use --perf-replay-measure=time for it"
        )
    if snapshot.path is None:
        raise ReplayFailure("cannot count this snapshot: it has no file")
    try:
        vg = preflight()
    except CountError as exc:
        raise ReplayFailure(str(exc)) from None
    plain = time_plain_calls(replayer.fresh_args, replayer.call)
    processes = max(3, cfg.processes)
    p = plan(
        plain.wall_median,
        plain.unpickle,
        processes=processes,
        toggles=toggles_available(vg, mode),
        quicken=quicken_supported(),
    )
    budget = cfg.max_time if cfg.max_time_explicit else DEFAULT_BUDGET
    paired = state.baseline is not None
    # both sides of a pair are counted at once: each has half the cores for its processes
    estimate = p.estimate(mode, jobs=max(1, _cpus() // 2) if paired else _cpus())
    refusal = too_long(
        estimate,
        budget,
        f"{processes} processes forked after {p.warmup} warm-up calls, {p.calls} counted "
        f"calls each of {plain.wall_median * 1e3:.3g} ms, {slowdown_text(mode, p.method)} "
        "under valgrind" + (", baseline and candidate counted at once" if paired else ""),
        mode,
    )
    if refusal:
        raise ReplayFailure(refusal)

    count_options: dict[str, Any] = dict(
        store=state.store.root,
        allow_unsigned=cfg.allow_unsigned,
        mode=mode,
        processes=processes,
        warmup=p.warmup,
        calls=p.calls,
        gc=cfg.gc,
        confidence=cfg.confidence,
        timeout=max(60.0, 2 * budget),
        valgrind=vg,
        method=p.method,
        toggles=p.toggles,
        quicken=p.quicken,
    )
    path = snapshot.path
    baseline = state.baseline
    baseline_roots = _baseline_roots(state, outcome, target)
    counted: CountResult | None = None  # the baseline's count
    try:
        if baseline is None or baseline_roots is None:
            result = count_calls(path, target, **count_options)
        else:
            counted, result = count_both_sides(
                lambda **side: count_calls(path, target, **count_options, **side),
                baseline_roots,
                baseline_label=f"counting {baseline.rev} ({baseline.sha[:12]})",
            )
    except CountError as exc:
        raise ReplayFailure(str(exc)) from None

    outcome.measure_lines.extend(count_lines(result, plain))
    if baseline is not None and counted is not None:
        outcome.paired = deterministic_verdict(
            counted,
            result,
            rev=baseline.rev,
            sha=baseline.sha,
            min_effect=cfg.min_effect / 100,
            confidence=cfg.confidence,
        )
    _report_to_benchmark(benchmark, result, plain, outcome)

    ledger = Ledger.for_snapshot(state.store.history_dir, target, snapshot.id)
    entries = ledger.entries()
    outcome.iteration = entries[-1].iteration + 1 if entries else 1
    same_unit = [e for e in entries if e.unit == result.unit and len(e.group_estimates) >= 1]
    for label, entry in (("previous", same_unit[-1:]), ("first", same_unit[:1])):
        if not entry or (label == "first" and len(same_unit) < 2):
            continue
        if not countable(result) or min(entry[0].group_estimates) <= 0:
            continue  # nothing measurable to compare
        v = verdict_from_counts(
            entry[0].group_estimates,
            result.per_process,
            unit=result.unit,
            rev=f"{label} (iteration {entry[0].iteration})",
            sha=entry[0].commit or "",
            min_effect=MIN_EFFECT,
            confidence=cfg.confidence,
        )
        outcome.measure_lines.append(f"  change: {v.line()}")
    profile_calls = None
    if cfg.profiler:
        profile_calls = _profile(state, outcome, snapshot, target, p, vg, same_unit)
    commit, dirty = git_state(rootdir)
    ledger.append(
        Entry(
            iteration=outcome.iteration,
            time=now(),
            commit=commit,
            dirty=dirty,
            target=target,
            snapshot=snapshot.id,
            estimator="mean",
            estimate=result.estimate,
            low=result.low,
            high=result.high,
            precision=result.precision,
            rounds=result.calls,
            target_met=True,
            stop_reason="counted",
            processes=result.processes,
            group_estimates=list(result.per_process),
            code_hash=code_hash(func),
            unit=result.unit,
            paired=asdict(outcome.paired) if outcome.paired else None,
            profile=str(outcome.profile_path) if outcome.profile_path else None,
            profile_calls=profile_calls,
        )
    )
    return result


def _baseline_roots(state: ReplaySession, outcome: ItemOutcome, target: str) -> list[str] | None:
    """``--perf-replay-baseline`` in a count mode: the import roots of the baseline tree,
    counted the same way as today's code (same processes, warm-up, calls and seeds; only
    the roots differ). None without a baseline, or when the target is new at it."""
    from .baseline import BaselineError, extension_refusal, roots_for
    from .session import ReplayFailure

    baseline = state.baseline
    if baseline is None:
        return None
    try:
        roots = roots_for(baseline, target.partition(":")[0], sys.path)
    except BaselineError as exc:
        raise ReplayFailure(f"perfreplay cannot compare with {baseline.rev}: {exc}") from None
    if roots.new_at_rev:
        outcome.notes.append(
            f"new at {baseline.rev} ({baseline.sha[:12]}): {target} has no module there; "
            "counted the candidate alone"
        )
        return None
    refusal = extension_refusal(roots, baseline)
    if refusal:
        raise ReplayFailure(f"perfreplay {refusal}")
    return list(roots.baseline_path)


def _profile(
    state: ReplaySession,
    outcome: ItemOutcome,
    snapshot: Snapshot,
    target: str,
    p: Plan,
    vg: Valgrind,
    same_unit: list[Entry],
) -> int | None:
    """Where the instructions go: a callgrind profile of the counted calls; never raises."""
    from .._version import __version__
    from ..profile.callgrind import CallgrindError, profile_instructions
    from ..profile.passes import PROFILE_SUFFIX
    from ..snapshot.store import target_slug
    from .valgrind import CountError

    assert snapshot.path is not None
    cfg = state.config
    out = (
        state.store.profiles_dir
        / target_slug(target)
        / f"{outcome.iteration:04d}-{snapshot.id}{PROFILE_SUFFIX}"
    )
    previous = next((e for e in reversed(same_unit) if e.profile), None)
    try:
        done = profile_instructions(
            valgrind=vg,
            snapshot_path=snapshot.path,
            target=target,
            store=state.store.root,
            allow_unsigned=cfg.allow_unsigned,
            warmup=p.warmup,
            calls=p.calls,
            gc=cfg.gc,
            out=out,
            quicken=p.quicken,
            name=f"{target} [{snapshot.id}]",
            exporter=f"pytest-perfreplay@{__version__}",
            timeout=max(60.0, 2 * (cfg.max_time if cfg.max_time_explicit else DEFAULT_BUDGET)),
            previous=previous,
            threshold=cfg.profile_diff_threshold,
        )
    except (CountError, CallgrindError, OSError) as exc:
        outcome.notes.append(f"instruction profile failed: {exc}")
        return None
    outcome.profile_path = done.path
    outcome.profile_lines = done.lines
    outcome.notes.extend(done.notes)
    return done.calls


def slowdown_text(mode: str, method: str) -> str:
    from .valgrind import SLOWDOWN

    key = ("callgrind-cycles" if mode == "cycles" else "callgrind") if method == "bracket" else mode
    return f"about {SLOWDOWN[key]:.0f}x"


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


def _report_to_benchmark(
    benchmark: Any, result: CountResult, plain: PlainCalls, outcome: ItemOutcome
) -> None:
    """Counts go into ``extra_info``; the stats stay seconds: the plain calls' wall times."""
    from .._version import __version__

    benchmark.extra_info.update(
        {
            "perfreplay": __version__,
            "snapshot": outcome.snapshot_id,
            "target": result.target,
            "unit": result.unit,
            "counts": result.as_json(),
            "stats_are": "wall seconds of plain, uncounted calls (for reference only)",
            "cpu_share_of_wall": plain.cpu_share,
            "mutated_arguments": outcome.mutated,
            "result_check": outcome.result_check,
        }
    )
    stats = benchmark._make_stats(1)
    stats.options = {
        "disable_gc": False,
        "timer": "time.perf_counter",
        "min_rounds": len(plain.wall),
        "max_time": 0,
        "min_time": 0,
        "warmup": False,
        "measure": result.unit,
    }
    for seconds in plain.wall:
        stats.update(seconds)
