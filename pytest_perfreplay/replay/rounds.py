"""The variance-controlled round loop.

Pure: the caller injects ``measure`` (one whole round: fresh setup outside its own timer,
then the timed call; returns the timed seconds) and ``clock`` (wall time, used only for the
budget). Nothing here sleeps, does I/O, touches the garbage collector or imports pytest.
The GC policy is carried in :class:`RoundPolicy` so that it is recorded with the result;
the caller applies it inside ``measure`` (and may pass ``before_round=gc.collect``).

The loop
--------
1. **Warmup.** Rounds are taken until :func:`~pytest_perfreplay.replay.warmup.detect_warmup` says
   the timings have settled (at most ``max_warmup`` warmup rounds). The leading rounds it
   flags are kept aside as warmup; the rest already count as measured rounds. At every
   precision check the whole series is looked at again (``detect_warmup(final=True)``): the
   steady level and noise are known far better by then, so elevated leading rounds that a
   10-round look could not tell from noise are moved to the warmup too (never past
   ``max_warmup``; hitting that cap is reported as ``warmup_settled=False``).
2. **Measurement.** Once there are ``min_rounds`` measured rounds the precision (CI
   half-width / estimate) is checked. Checks are spaced geometrically: each one waits for
   at least 20% more rounds than the previous (and at least one more). Two checks on almost
   the same data would agree by construction, so back-to-back per-round checks would make
   "held on ``consecutive`` checks" meaningless; with the spacing, three passing checks mean
   the target held while the sample grew by about 44%. It also keeps the cost of checking
   at O(log n) interval computations.
3. **Stop** when the target held on ``consecutive`` consecutive checks ("target met"), or
   when ``max_rounds`` ("max rounds") or the wall-time budget ("time budget") is spent. The
   budget stop is predictive: a round is not started when the mean wall time per round so
   far says it would overrun ``max_time``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from .estimators import ESTIMATORS, Estimator
from .warmup import WARMUP_WINDOW, detect_warmup

if TYPE_CHECKING:
    from .stats import Interval

__all__ = [
    "STOP_MAX_PROCESSES",
    "STOP_MAX_ROUNDS",
    "STOP_TARGET",
    "STOP_TIME",
    "GcPolicy",
    "Progress",
    "RoundPolicy",
    "RoundsResult",
    "next_check",
    "run_rounds",
]

GcPolicy = Literal["collect", "disable", "enable"]
GC_POLICIES: tuple[str, ...] = get_args(GcPolicy)

STOP_TARGET = "target met"
STOP_MAX_ROUNDS = "max rounds"
STOP_TIME = "time budget"
STOP_MAX_PROCESSES = "max processes"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class RoundPolicy:
    """How long to keep taking rounds, and how to judge them."""

    target: float = 0.01
    confidence: float = 0.95
    estimator: Estimator = "median"
    min_rounds: int = 10
    max_rounds: int = 10_000
    max_time: float = 10.0
    consecutive: int = 3
    max_warmup: int = 50
    gc: GcPolicy = "collect"

    def __post_init__(self) -> None:
        def bad(field: str, accepted: str, value: object) -> ValueError:
            return ValueError(f"RoundPolicy.{field} must be {accepted}, got {value!r}")

        if not (_is_number(self.target) and 0 < self.target < math.inf):
            raise bad(
                "target",
                "a finite number > 0 (relative CI half-width, e.g. 0.01 for +/-1%)",
                self.target,
            )
        if not (_is_number(self.confidence) and 0 < self.confidence < 1):
            raise bad("confidence", "a number strictly between 0 and 1", self.confidence)
        if self.estimator not in ESTIMATORS:
            raise bad("estimator", f"one of {', '.join(ESTIMATORS)}", self.estimator)
        if not (_is_int(self.min_rounds) and self.min_rounds >= 2):
            raise bad("min_rounds", "an integer >= 2", self.min_rounds)
        if not (_is_int(self.max_rounds) and self.max_rounds >= self.min_rounds):
            raise bad(
                "max_rounds", f"an integer >= min_rounds ({self.min_rounds})", self.max_rounds
            )
        # math.inf is allowed: no time budget, only max_rounds.
        if not (_is_number(self.max_time) and self.max_time > 0):
            raise bad("max_time", "a number of seconds > 0", self.max_time)
        if not (_is_int(self.consecutive) and self.consecutive >= 1):
            raise bad("consecutive", "an integer >= 1", self.consecutive)
        if not (_is_int(self.max_warmup) and self.max_warmup >= 0):
            raise bad("max_warmup", "an integer >= 0 (0 disables warmup)", self.max_warmup)
        if self.gc not in GC_POLICIES:
            raise bad("gc", f"one of {', '.join(GC_POLICIES)}", self.gc)


@dataclass(frozen=True)
class Progress:
    rounds: int
    precision: float
    elapsed: float
    warmup_done: bool


@dataclass(frozen=True)
class RoundsResult:
    samples: tuple[float, ...]
    warmup: tuple[float, ...]
    interval: Interval
    target_met: bool
    stop_reason: str
    elapsed: float
    policy: RoundPolicy
    #: False when warmup was cut short (``max_warmup`` or the budget) before timings settled.
    warmup_settled: bool = True
    #: How many precision checks the stopping rule made.
    checks: int = 0
    #: Worker processes the rounds were spread over (1: the calling process).
    processes: int = 1
    #: Measured rounds per process, in order (empty for one process).
    groups: tuple[int, ...] = ()
    #: The estimator's value in each process, in order (empty for one process).
    group_estimates: tuple[float, ...] = ()

    @property
    def rounds(self) -> int:
        return len(self.samples)

    @property
    def precision(self) -> float:
        return self.interval.precision

    def describe(self) -> str:
        """One line, loud when the target was missed."""
        iv = self.interval
        reached = f"+/-{iv.precision:.2%}" if math.isfinite(iv.precision) else "unbounded"
        head = (
            f"{iv.estimator} {iv.estimate:.6g}s {reached} ({iv.confidence:.0%} CI), "
            f"{self.rounds} rounds in {self.elapsed:.3g}s, stopped: {self.stop_reason}"
        )
        if self.target_met:
            return f"{head}; target +/-{self.policy.target:.2%} met"
        return f"{head}; TARGET MISSED (+/-{self.policy.target:.2%} wanted)"


def next_check(n: int) -> int:
    """Round count of the precision check after one made at ``n`` rounds (>= 20% more)."""
    return n + max(1, (n + 4) // 5)


def run_rounds(
    measure: Callable[[], float],
    policy: RoundPolicy,
    *,
    clock: Callable[[], float] = time.perf_counter,
    on_progress: Callable[[Progress], None] | None = None,
    progress_every: float = 1.0,
    before_round: Callable[[], None] | None = None,
) -> RoundsResult:
    """Run rounds until the precision target holds, or the budget is spent (module docstring).

    ``before_round`` runs before each ``measure()``, outside any timing but inside the wall
    budget; it is the hook for ``gc.collect`` under the "collect" GC policy.
    """
    if not (_is_number(progress_every) and progress_every > 0):
        raise ValueError(f"progress_every must be a number of seconds > 0, got {progress_every!r}")
    from .stats import interval

    start = clock()
    last_report = start
    total_rounds = 0
    precision = math.inf

    def one_round() -> float:
        nonlocal total_rounds
        if before_round is not None:
            before_round()
        value = measure()
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = math.nan
        if isinstance(value, bool) or not 0 <= seconds < math.inf:
            raise ValueError(f"measure() must return a finite duration >= 0 seconds, got {value!r}")
        total_rounds += 1
        return seconds

    def budget_spent(now: float) -> bool:
        elapsed = now - start
        if elapsed >= policy.max_time:
            return True
        # Don't start a round that would, on the average so far, overrun the budget.
        return total_rounds > 0 and elapsed + elapsed / total_rounds > policy.max_time

    def report(now: float, rounds: int, warmup_done: bool, *, force: bool = False) -> None:
        nonlocal last_report
        if on_progress is None or not (force or now - last_report >= progress_every):
            return
        last_report = now
        on_progress(Progress(rounds, precision, now - start, warmup_done))

    # -- warmup ----------------------------------------------------------------------------
    # Every round, warmup or not, in order; the first n_warmup are warmup.
    series: list[float] = []
    n_warmup = 0
    settled = True
    stop_reason: str | None = None
    if policy.max_warmup > 0:
        # Room for max_warmup elevated rounds plus a window of settled ones to prove it.
        cap = max(policy.max_warmup + WARMUP_WINDOW, 2 * WARMUP_WINDOW)
        while True:
            series.append(one_round())
            found = detect_warmup(series, window=WARMUP_WINDOW)
            if found is not None:
                n_warmup = found
                break
            now = clock()
            out_of_time = budget_spent(now)
            if out_of_time or len(series) >= cap:
                # No more evidence is coming: judge what we have, and say it never settled.
                n_warmup = detect_warmup(series, window=WARMUP_WINDOW, final=True) or 0
                settled = False
                if out_of_time:
                    stop_reason = STOP_TIME
                break
            report(now, 0, False)
        if n_warmup > policy.max_warmup:
            n_warmup, settled = policy.max_warmup, False
        # The warmup phase may have taken more settled rounds than max_rounds allows.
        del series[n_warmup + policy.max_rounds :]

    def look_back() -> None:
        # With many more rounds the steady level and noise are known far better than when
        # warmup first looked settled; elevated leading rounds missed then are moved now.
        nonlocal n_warmup, settled
        if policy.max_warmup == 0:
            return
        w = detect_warmup(series, window=WARMUP_WINDOW, final=True) or 0
        if w > policy.max_warmup:
            w, settled = policy.max_warmup, False
        n_warmup = max(n_warmup, w)

    # -- measurement -----------------------------------------------------------------------
    check_at = policy.min_rounds
    in_row = 0
    checks = 0
    last: Interval | None = None
    while stop_reason is None:
        n = len(series) - n_warmup
        if n >= check_at:
            look_back()
            n = len(series) - n_warmup
        if n >= check_at:
            last = interval(series[n_warmup:], policy.estimator, policy.confidence)
            checks += 1
            precision = last.precision
            in_row = in_row + 1 if precision <= policy.target else 0
            if in_row >= policy.consecutive:
                stop_reason = STOP_TARGET
                break
            check_at = next_check(n)
        if n >= policy.max_rounds:
            stop_reason = STOP_MAX_ROUNDS
            break
        now = clock()
        if budget_spent(now):
            stop_reason = STOP_TIME
            break
        report(now, n, True)
        series.append(one_round())

    if stop_reason != STOP_TARGET:
        look_back()
    samples = series[n_warmup:]
    final = (
        last
        if last is not None and last.n == len(samples)
        else interval(samples, policy.estimator, policy.confidence)
    )
    precision = final.precision
    end = clock()
    report(end, len(samples), True, force=True)
    # Met means the reported interval meets the target with at least min_rounds behind it;
    # a forced stop whose final interval happens to meet it still counts.
    target_met = stop_reason == STOP_TARGET or (
        len(samples) >= policy.min_rounds and precision <= policy.target
    )
    return RoundsResult(
        samples=tuple(samples),
        warmup=tuple(series[:n_warmup]),
        interval=final,
        target_met=target_met,
        stop_reason=stop_reason,
        elapsed=end - start,
        policy=policy,
        warmup_settled=settled,
        checks=checks,
    )
