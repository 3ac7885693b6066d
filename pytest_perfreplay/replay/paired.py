"""Paired A/B in one session: the code at a git revision against today's, on one snapshot.

Process pairs (a baseline worker and a candidate worker each, every process with its own
``PYTHONHASHSEED``) run in waves: a wave's pairs are started together, warmed, measured,
and closed before the next wave starts. Rounds ("letters": a few fresh-argument calls,
summarized by their median) alternate between the two sides of one pair in randomized
ABBA or BAAB blocks; only one worker runs at any moment. Each block yields two adjacent
(baseline, candidate) pairs, and the statistic is taken on their log ratios
(:mod:`.pairstats`): Hodges-Lehmann within each process pair, then over the pairs' estimates.

Why waves of short-lived pairs: each process pair carries an offset of its own that
outlasts any number of rounds; same hash seeds, ASLR off and pinning both sides to one CPU
each left it in place in exploratory runs. Only more pairs average it out.

Why both processes of a pair share one CPU (:func:`pair_cpus`): a letter's neighbour then
runs on the same core. Timing the pattern alone (``benchmarks/pair_noise.py``, ~70-100 ms
calls, 4 rounds of 16 pairs each way) the log ratios spread less pinned on an idle 2-core
VM (0.66x within pairs, 0.52x across) and about the same beside a CPU hog; in the verdict
runs the process pairs' spread did not visibly move. The pairs of a wave go round the
CPUs this process may use, from a random start, so a CPU's own speed is a process-pair
effect like the rest.

The stopping rule aims at the decision: after every wave from the second on it stops once
the interval of the ratio clears the minimum-effect band (a change) or sits inside it (no
change that matters), and otherwise when the budget is spent, and says which. With the
default budget a long call gets a floor of waves, and a comparison still undecided when
time is up, whose estimate lies outside the band, runs on for a while (:data:`EXTEND`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

from ..errors import PerfReplayError
from .pairstats import PooledLogRatio, decide, pool, signed_rank_depth
from .workers import WorkerJob, _worker_env

if TYPE_CHECKING:
    from .baseline import Baseline

#: Process pairs alive at once (a wave) when ``--perf-replay-processes`` does not say.
DEFAULT_PROCESS_PAIRS = 4
#: Budget of a comparison when --perf-replay-max-time is not given: about 30 process
#: pairs of a 10 ms call on a 2-core machine, which the default of timed rounds (10 s)
#: would cut to 15.
DEFAULT_PAIRED_BUDGET = 20.0
#: ABBA blocks each process pair takes in its wave: 8 log ratios, enough for a Wilcoxon
#: interval at 95% (6 is the least).
WAVE_BLOCKS = 4
#: Waves before the first look: 8 process pairs, the fewest whose Wilcoxon interval cuts
#: more than one Walsh average from each end (4 of 36).
MIN_WAVES = 2
#: Waves the letters are sized for at the default pace (more run while the budget lasts).
PACE_WAVES = 6
#: Share of the budget the measured letters aim to fill (the rest: start-up, warm-up).
PACE_SHARE = 0.4
#: With the default budget, waves run before time may end a comparison (28 process pairs):
#: a 100 ms call fills 20 s with 2-3 waves, too few pairs to see a 2% change.
FLOOR_WAVES = 7
#: ... but never past this many times the default budget (a call of seconds). A wave of
#: ~100 ms calls took about 8 s on a quiet machine (the first, with its full warm-up, 12):
#: 4.5 lets the floor's 7 waves run beside a CPU hog too.
FLOOR_CAP = 4.5
#: With the default budget, a comparison still undecided when time ends it, whose estimate
#: lies outside the minimum-effect band, runs on to this many times the waves it had: it
#: looks like a change too small to confirm yet. 28 process pairs of a ~100 ms call found
#: a 2% change 13 times in 20; the misses read 1.0099-1.0198 with intervals ±0.8-1.8%.
#: Running on found 19 in 20 (7 ran on, in 90-121 s), none of 41 A/A called a change.
EXTEND = 2.0
#: ... but never past this many times the default budget.
EXTEND_CAP = 9.0
#: Warm-up calls a later wave's worker makes at the least: the first call pays one-time
#: costs (lazy imports, caches filled on first use), the second shows it has paid them.
LATER_WARMUP_MIN = 2
STOP_SIGNIFICANT = "decided: the interval clears the minimum-effect band"
STOP_EQUIVALENT = "decided: the interval sits inside the minimum-effect band"
STOP_TIME = "budget spent (time) before a decision"
STOP_ROUNDS = "budget spent (round cap) before a decision"
STOP_TIME_FLOOR = (
    f"budget spent (time, run past the default budget to {FLOOR_WAVES} waves for a long call) "
    "before a decision"
)
STOP_TIME_RAN_ON = (
    "budget spent (time, run on past the default budget while the estimate lay outside the "
    "band) before a decision"
)


class PairedError(PerfReplayError):
    """A paired comparison cannot run; ``kind`` is the worker's reason (target, unpickle...)."""

    def __init__(self, message: str, kind: str = "failed") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class PairedVerdict:
    """Candidate against baseline, paired in one session (the contract other modes share)."""

    ratio: float  # candidate / baseline: > 1 means the candidate is slower
    low: float
    high: float
    confidence: float
    significant: bool  # the interval clears the min-effect band
    equivalent: bool  # the interval sits inside the band
    direction: Literal["slower", "faster", "same"]
    unit: Literal["seconds", "instructions", "cycles"]
    deterministic: bool
    method: str
    rev: str
    sha: str
    process_pairs: int
    pairs: int
    min_effect: float
    stop_reason: str = ""
    # Each process pair's own ratio, in the order they ran: which pairs disagreed.
    pair_ratios: tuple[float, ...] = ()

    def _span(self) -> str:
        if self.direction == "faster":  # a speedup reads as a factor > 1, like a slowdown
            r, lo, hi = 1 / self.ratio, 1 / self.high, 1 / self.low
        else:
            r, lo, hi = self.ratio, self.low, self.high
        digits = 3
        while digits < 6 and f"{lo:.{digits}f}" == f"{hi:.{digits}f}":
            digits += 1
        word = f" {self.direction}" if self.direction != "same" else ""
        return f"{r:.{digits}f}x{word} [{lo:.{digits}f}-{hi:.{digits}f}]"

    def _context(self) -> str:
        return f"paired, same session, {self.process_pairs} process pairs, {self.pairs} pairs"

    def line(self) -> str:
        """``change: 1.073x slower [1.061-1.085] vs HEAD (paired, ...), significant``."""
        if self.significant:
            return f"change: {self._span()} vs {self.rev} ({self._context()}), significant"
        band = f"±{self.min_effect:g}% band"
        why = f"inside the {band}" if self.equivalent else f"interval reaches the {band}: undecided"
        return f"no significant change vs {self.rev} ({self._context()}; {self._span()}, {why})"

    def gate(self, fail_slower: float | None) -> bool:
        """True when ``--perf-replay-fail-slower=PCT`` fails this verdict."""
        return (
            fail_slower is not None
            and self.significant
            and self.direction == "slower"
            and self.ratio > 1 + fail_slower / 100
        )


@dataclass(frozen=True)
class PairedPolicy:
    process_pairs: int = DEFAULT_PROCESS_PAIRS  # per wave
    max_time: float = DEFAULT_PAIRED_BUDGET
    max_letters: int = 10_000
    confidence: float = 0.95
    min_effect: float = 1.0  # percent
    max_warmup_calls: int = 50
    floor_waves: int = 0  # waves before the time budget applies (default budget only)
    hard_cap: float = math.inf  # wall seconds no floor may pass
    # Undecided with the estimate outside the band when time is up: run on to this many
    # times the waves run so far (1: never), within extend_cap wall seconds.
    extend: float = 1.0
    extend_cap: float = math.inf


class Side(Protocol):
    """One worker process as the loop sees it (a fake in unit tests)."""

    def warm(self, max_calls: int, max_seconds: float) -> dict[str, Any]: ...

    def run(self, calls: int) -> float: ...


Pairs = Sequence[tuple[Side, Side]]


@dataclass
class PairedRun:
    pooled: PooledLogRatio
    log_ratios: list[list[float]]  # per process pair, in the order they ran
    baseline: list[list[float]]  # per process pair, letter medians (seconds per call)
    candidate: list[list[float]]
    calls_per_letter: int
    stop_reason: str
    elapsed: float
    looks: int
    waves: int = 0
    warm: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)


def run_pairs(
    waves: Pairs | Callable[[int], Pairs],
    policy: PairedPolicy,
    *,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.perf_counter,
    on_look: Callable[[int, PooledLogRatio, float], None] | None = None,
) -> PairedRun:
    """Measure wave after wave of process pairs until a decision or the budget.

    ``waves(i)`` gives wave ``i``'s process pairs, started and ready (a fixed sequence is
    reused for every wave). Each worker is warmed, then every pair takes
    :data:`WAVE_BLOCKS` ABBA/BAAB blocks, pairs in a shuffled order per block. A process
    pair carries an offset of its own (memory layout, hash seed; no setting of ASLR, seeds
    or CPU pinning removed it), which only more pairs average
    out; so the comparison takes many short-lived pairs rather than long runs of a few.

    The stopping rule looks after every wave from :data:`MIN_WAVES` on. ``policy.max_time``
    bounds the wall time from the end of the first wave's start-up: later waves' start-up
    and warm-up count, as a user waits for them too. Time stops nothing before
    ``policy.floor_waves`` waves unless ``policy.hard_cap`` would be passed. When time is
    up on an undecided comparison whose estimate lies outside the minimum-effect band, it
    runs on to ``policy.extend`` times the waves it had, within ``policy.extend_cap``.
    """
    rng = rng or random.Random()
    start_wave = waves if callable(waves) else (lambda _i, fixed=waves: fixed)
    start = clock()
    logs: list[list[float]] = []
    base_letters: list[list[float]] = []
    cand_letters: list[list[float]] = []
    warm: list[tuple[dict[str, Any], dict[str, Any]]] = []
    calls = 0
    looks = 0
    letters = 0
    wave = 0
    stop = STOP_TIME
    pooled: PooledLogRatio | None = None
    budget_start: float | None = None
    extended = False
    budget_waves = 0  # waves run when time was first up (0: not yet)
    warm_calls = policy.max_warmup_calls
    while True:
        pairs = start_wave(wave)
        if budget_start is None:
            budget_start = clock()
        warmed = _warm(pairs, warm_calls, policy.max_time / 20)
        warm += warmed
        if not calls:
            warm_calls = later_warmup(warmed, policy.max_warmup_calls)
            # Letters sized so PACE_WAVES waves fill PACE_SHARE of the budget; at least one
            # call, and a letter's median absorbs one scheduling hiccup when it has several.
            per_call = max(
                max(b.get("cpu", b["median"]), c.get("cpu", c["median"])) for b, c in warmed
            )
            letter_time = policy.max_time * PACE_SHARE / (len(pairs) * PACE_WAVES * 4 * WAVE_BLOCKS)
            calls = max(1, min(10_000, int(letter_time / max(per_call, 1e-9))))
        first = len(logs)
        for _ in pairs:
            logs.append([])
            base_letters.append([])
            cand_letters.append([])
        for _block in range(WAVE_BLOCKS):
            order = list(range(len(pairs)))
            rng.shuffle(order)
            for j in order:
                base, cand = pairs[j]
                pattern = "ABBA" if rng.random() < 0.5 else "BAAB"
                got: dict[str, list[float]] = {"A": [], "B": []}
                for letter in pattern:
                    side = base if letter == "A" else cand
                    got[letter].append(side.run(calls))
                a, b = got["A"], got["B"]
                # ABBA pairs (A1,B1) and (A2,B2) by position: each B sits next to its A.
                for x, y in zip(a, b, strict=True):
                    # A zero reading (below the clock's resolution) must not end the run.
                    logs[first + j].append(math.log(max(y, 1e-12) / max(x, 1e-12)))
                base_letters[first + j].extend(a)
                cand_letters[first + j].extend(b)
                letters += 4
        wave += 1
        # No look before the pairs' estimates can bound an interval (6 at 95%).
        if wave >= MIN_WAVES and signed_rank_depth(len(logs), policy.confidence) is not None:
            looks += 1
            pooled = pool(logs, policy.confidence)
            d = decide(pooled.ratio_low, pooled.ratio_high, policy.min_effect / 100)
            if on_look is not None:
                on_look(len(logs), pooled, clock() - start)
            if d.significant:
                stop = STOP_SIGNIFICANT
                break
            if d.equivalent:
                stop = STOP_EQUIVALENT
                break
            spent = clock() - budget_start
            ahead = spent + spent / wave
            if ahead > policy.max_time:
                if wave < policy.floor_waves and ahead <= policy.hard_cap:
                    extended = True
                else:
                    budget_waves = budget_waves or wave
                    # The point estimate alone clears the band: a change too small to confirm yet.
                    point = decide(pooled.ratio, pooled.ratio, policy.min_effect / 100)
                    outside = point.significant
                    if not (
                        outside
                        and wave < policy.extend * budget_waves
                        and ahead <= policy.extend_cap
                    ):
                        if wave > budget_waves:
                            stop = STOP_TIME_RAN_ON
                        else:
                            stop = STOP_TIME_FLOOR if extended else STOP_TIME
                        break
            if letters + 4 * WAVE_BLOCKS * len(pairs) > policy.max_letters:
                stop = STOP_ROUNDS
                break
    assert pooled is not None
    return PairedRun(
        pooled=pooled,
        log_ratios=logs,
        baseline=base_letters,
        candidate=cand_letters,
        calls_per_letter=calls,
        stop_reason=stop,
        elapsed=clock() - start,
        looks=looks,
        waves=wave,
        warm=warm,
    )


def later_warmup(warmed: Sequence[tuple[dict[str, Any], dict[str, Any]]], max_calls: int) -> int:
    """Warm-up calls for the workers of the waves after the first.

    The first wave warms until the detector settles, which takes two windows of calls even
    when the very first call is steady: a wave of a 100 ms call made 88 calls warming up
    (11 in each of 8 workers) for the 64 it measured. Later waves run the same code on the
    same arguments, so they warm for as many calls as the first wave's slowest worker needed
    to settle, plus one. When fewer than half of the first wave's workers settled, every
    wave keeps the full warm-up.
    """
    sides = [w for pair in warmed for w in pair]
    ends = [int(w["settled_at"]) for w in sides if w.get("settled") and "settled_at" in w]
    if 2 * len(ends) < len(sides):
        return max_calls
    return min(max_calls, max(LATER_WARMUP_MIN, max(ends) + 1))


def _warm(
    pairs: Pairs, max_calls: int, max_seconds: float
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Warm every worker of a wave; at once when they can (nothing is measured yet, and
    a wave's warm-up would otherwise take a core-second per pair of 10 ms calls)."""
    sides = [side for pair in pairs for side in pair]
    if all(hasattr(side, "begin_warm") for side in sides):
        for side in sides:
            # A wave's workers share the cores: give each more time than it would need alone.
            side.begin_warm(max_calls, max_seconds * 4)  # type: ignore[attr-defined]
        done = [side.end_warm() for side in sides]  # type: ignore[attr-defined]
        return [(done[2 * i], done[2 * i + 1]) for i in range(len(pairs))]
    return [(b.warm(max_calls, max_seconds), c.warm(max_calls, max_seconds)) for b, c in pairs]


def verdict_of(
    run: PairedRun,
    policy: PairedPolicy,
    *,
    rev: str,
    sha: str,
    unit: Literal["seconds", "instructions", "cycles"] = "seconds",
    deterministic: bool = False,
) -> PairedVerdict:
    p = run.pooled
    d = decide(p.ratio_low, p.ratio_high, policy.min_effect / 100)
    return PairedVerdict(
        ratio=p.ratio,
        low=p.ratio_low,
        high=p.ratio_high,
        confidence=p.confidence,
        significant=d.significant,
        equivalent=d.equivalent,
        direction=d.direction,
        unit=unit,
        deterministic=deterministic,
        method=p.method,
        rev=rev,
        sha=sha,
        process_pairs=p.groups,
        pairs=p.pairs,
        min_effect=policy.min_effect,
        stop_reason=run.stop_reason,
        pair_ratios=tuple(round(math.exp(x), 6) for x in p.estimates),
    )


# -- the worker processes ----------------------------------------------------------------


class WorkerProcess:
    """A persistent worker (``python -m pytest_perfreplay.replay.workers FD serve``)."""

    def __init__(
        self,
        job: WorkerJob,
        *,
        env: dict[str, str],
        cwd: Path | None,
        label: str,
        cpu: int | None = None,
    ) -> None:
        self.label = label
        self._warm_timeout = 60.0
        self.cpu: int | None = None  # the CPU it is pinned to, when pinning took
        read_fd, write_fd = os.pipe()
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pytest_perfreplay.replay.workers", str(write_fd), "serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=self._err,
                pass_fds=(write_fd,),
                env=env,
                cwd=cwd,
            )
        finally:
            os.close(write_fd)
        if cpu is not None:
            # Before it is ready, so before anything is timed; a CPU the mask no longer
            # allows (hot-unplug, a cgroup change) leaves it where the scheduler puts it.
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.proc.pid, {cpu})
                self.cpu = cpu
        self._stream: IO[str] = os.fdopen(read_fd, "r")
        self._send(json.dumps(asdict(job)))

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the worker died; the read below reports why

    def _answer(self, expect: str, timeout: float) -> dict[str, Any]:
        watchdog = threading.Timer(timeout, self.proc.kill)
        watchdog.start()
        try:
            line = self._stream.readline()
        finally:
            watchdog.cancel()
        kind, _, rest = line.rstrip("\n").partition(" ")
        if kind == expect:
            return dict(json.loads(rest))
        if kind == "error":
            data = json.loads(rest)
            raise PairedError(str(data.get("message")), str(data.get("kind", "failed")))
        self.proc.poll()
        self._err.seek(0)
        tail = self._err.read().decode(errors="replace").strip().splitlines()[-1:]
        why = f"exited with code {self.proc.returncode}" if self.proc.returncode else "hung"
        raise PairedError(f"{self.label} worker {why}" + (f": {tail[0]}" if tail else ""))

    def ready(self, timeout: float = 120.0) -> dict[str, Any]:
        return self._answer("ready", timeout)

    def warm(self, max_calls: int, max_seconds: float) -> dict[str, Any]:
        self.begin_warm(max_calls, max_seconds)
        return self.end_warm()

    def begin_warm(self, max_calls: int, max_seconds: float) -> None:
        self._warm_timeout = 60.0 + 3 * max_seconds
        self._send(f"warm {json.dumps([max_calls, max_seconds])}")

    def end_warm(self) -> dict[str, Any]:
        return self._answer("warm", self._warm_timeout)

    def run(self, calls: int) -> float:
        self._send(f"run {calls}")
        return float(self._answer("run", 600.0)["median"])

    def profile(self, settings: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
        self._send(f"profile {json.dumps(settings)}")
        return self._answer("profile", timeout)

    def close(self) -> None:
        self.ask_to_quit()
        self.wait_closed()

    def ask_to_quit(self) -> None:
        self._send("quit")
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.close()

    def wait_closed(self) -> None:
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stream.close()
        self._err.close()


def side_env(
    pythonpath: str | None, seed: int, pycache: str | None = None, rng: random.Random | None = None
) -> dict[str, str]:
    """A worker's environment: its own hash seed and memory layout, the baseline's roots
    first if given, and the bytecode cache both sides share (see
    :func:`compare_with_baseline`)."""
    env = _worker_env(rng)
    env["PYTHONHASHSEED"] = str(seed)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    if pycache is not None:
        env["PYTHONPYCACHEPREFIX"] = pycache
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # the priming pair writes it
    return env


def pair_cpus(process_pairs: int, rng: random.Random) -> list[int | None]:
    """The CPU each process pair of a wave runs on (both of its processes on one).

    Pairs go round the CPUs this process may use (``taskset`` narrows them), from a random
    start per wave. None for every pair when there is only one CPU to use, or no way to
    pin on this platform.
    """
    getaffinity = getattr(os, "sched_getaffinity", None)
    allowed = sorted(getaffinity(0)) if getaffinity is not None else []
    if len(allowed) < 2:
        return [None] * process_pairs
    shift = rng.randrange(len(allowed))
    return [allowed[(shift + i) % len(allowed)] for i in range(process_pairs)]


def start_pairs(
    base_job: WorkerJob,
    cand_job: WorkerJob,
    *,
    process_pairs: int,
    baseline_path: str,
    baseline_cwd: Path,
    rng: random.Random,
    pycache: str | None = None,
) -> list[tuple[WorkerProcess, WorkerProcess]]:
    """Start every worker, a pair's two on one CPU (:func:`pair_cpus`), then wait for all
    to be ready (start-up is never timed)."""
    started: list[tuple[WorkerProcess, WorkerProcess]] = []
    try:
        for i, cpu in enumerate(pair_cpus(process_pairs, rng)):
            base = WorkerProcess(
                base_job,
                env=side_env(baseline_path, rng.randrange(1, 2**32 - 1), pycache, rng),
                cwd=baseline_cwd,
                label=f"baseline #{i + 1}",
                cpu=cpu,
            )
            started.append((base, base))
            cand = WorkerProcess(
                cand_job,
                env=side_env(None, rng.randrange(1, 2**32 - 1), pycache, rng),
                cwd=None,
                label=f"candidate #{i + 1}",
                cpu=cpu,
            )
            started[-1] = (base, cand)
        for base, cand in started:
            base.ready()
            cand.ready()
    except BaseException:
        close_pairs(started)
        raise
    return started


def close_pairs(pairs: Sequence[tuple[WorkerProcess, WorkerProcess]]) -> None:
    """Ask every worker to quit, then wait for them: they exit side by side (one by one,
    a wave of 8 took a quarter of a second, between waves that measure for about one)."""
    workers = list({id(w): w for pair in pairs for w in pair}.values())
    for w in workers:
        with contextlib.suppress(Exception):
            w.ask_to_quit()
    for w in workers:
        with contextlib.suppress(Exception):
            w.wait_closed()


def prime_bytecode(pairs: list[tuple[WorkerProcess, WorkerProcess]], calls: int) -> None:
    """One pair that imports, unpickles and warms up (lazy imports included) and exits: it
    fills the bytecode cache for both sides before any measured worker starts."""
    try:
        _warm(pairs, min(calls, 3), 1.0)
    finally:
        close_pairs(pairs)


class Waves:
    """Wave ``i`` of process pairs for :func:`run_pairs`: the first is started on creation
    (so start-up errors surface before any measuring); each later one closes the wave
    before it first, so only one wave's workers are ever alive. The last stays alive until
    :meth:`close` (the profile runs in one of its baseline workers)."""

    def __init__(self, start: Callable[[], list[tuple[WorkerProcess, WorkerProcess]]]) -> None:
        self._start = start
        self.current = start()
        self._fresh = True

    def __call__(self, _index: int) -> list[tuple[WorkerProcess, WorkerProcess]]:
        if not self._fresh:
            close_pairs(self.current)
            self.current = []  # if the start fails, close() must not close these twice
            self.current = self._start()
        self._fresh = False
        return self.current

    def close(self) -> None:
        close_pairs(self.current)
        self.current = []


# -- one snapshot, end to end ------------------------------------------------------------


@dataclass
class PairedOutcome:
    """What a paired comparison of one snapshot produced."""

    verdict: PairedVerdict | None  # None when the target is new at the revision
    run: PairedRun | None
    new_at_rev: str | None = None  # the note when the baseline has no such target
    profile: dict[str, Any] | None = None  # the baseline's profile: path, calls


def compare_with_baseline(
    *,
    baseline: Baseline,
    snapshot_path: Path,
    store: Path,
    allow_unsigned: bool,
    target: str,
    captured_target: str,
    policy: PairedPolicy,
    gc: str,
    on_look: Callable[[int, PooledLogRatio, float], None] | None = None,
    profile_settings: dict[str, Any] | None = None,
) -> PairedOutcome:
    """Compare the code at ``baseline`` with today's on one snapshot, in fresh workers.

    Raises :class:`PairedError` with a one-line reason when the comparison cannot be made.
    """
    from .baseline import BaselineError, extension_refusal, roots_for, worker_pythonpath

    module = target.partition(":")[0]
    try:
        roots = roots_for(baseline, module, sys.path)
    except BaselineError as exc:
        raise PairedError(str(exc)) from None
    at = f"{baseline.rev} ({baseline.sha[:12]})"
    if roots.new_at_rev:
        return PairedOutcome(None, None, new_at_rev=f"new at {at}: {module} does not exist there")
    refusal = extension_refusal(roots, baseline)
    if refusal is not None:
        raise PairedError(refusal)
    worker_policy = {"gc": gc}
    named = None if target == captured_target else target
    base_job = WorkerJob(
        str(snapshot_path),
        str(store),
        allow_unsigned,
        named,
        worker_policy,
        expect_root=str(roots.baseline_root),
    )
    cand_job = WorkerJob(str(snapshot_path), str(store), allow_unsigned, named, worker_policy)
    mapped_cwd = baseline.mapped(Path.cwd())
    cwd = mapped_cwd if mapped_cwd is not None and mapped_cwd.is_dir() else baseline.tree
    rng = random.Random()
    # Both sides load their modules' bytecode from one cache (keyed by source path), so
    # neither compiles from source while the other reads a .pyc: code objects built the two
    # ways differ in memory, and a working tree with a __pycache__ against a freshly
    # extracted baseline without one read 0.6-1.3% faster in A/A comparisons.
    from .valgrind import bytecode_cache

    pycache = bytecode_cache()

    def start_wave(process_pairs: int = policy.process_pairs) -> list[Any]:
        return start_pairs(
            base_job,
            cand_job,
            process_pairs=process_pairs,
            baseline_path=worker_pythonpath(roots),
            baseline_cwd=cwd,
            rng=rng,
            pycache=pycache,
        )

    try:
        if pycache is not None:
            prime_bytecode(start_wave(1), policy.max_warmup_calls)
        waves = Waves(start_wave)
    except PairedError as exc:
        if exc.kind == "target":
            return PairedOutcome(None, None, new_at_rev=f"new at {at}: {exc}")
        if exc.kind == "import":
            raise PairedError(f"the code at {at} cannot import the target: {exc}") from None
        if exc.kind == "unpickle":
            raise PairedError(
                f"the snapshot's arguments do not unpickle against the classes at {at}: {exc}",
                exc.kind,
            ) from None
        raise PairedError(f"baseline comparison failed: {exc}", exc.kind) from None
    try:
        run = run_pairs(waves, policy, rng=rng, on_look=on_look)
        verdict = verdict_of(run, policy, rev=baseline.rev, sha=baseline.sha)
        base_profile = None
        if profile_settings is not None:
            base_median = _median([x for side in run.baseline for x in side])
            base_profile = waves.current[0][0].profile({**profile_settings, "median": base_median})
            base_profile["median"] = base_median
    except PairedError as exc:
        raise PairedError(f"baseline comparison failed: {exc}", exc.kind) from None
    finally:
        waves.close()
    return PairedOutcome(verdict, run, profile=base_profile)


def _median(values: Sequence[float]) -> float:
    import statistics

    return float(statistics.median(values))
