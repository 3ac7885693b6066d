"""A fixed reference workload, timed beside the rounds: how much did the machine itself move?

Two sessions of the same code on a shared machine differ by 3-20% (once 2x) because the
machine differs: load beside us, frequency, the hypervisor. Rounds inside one session
cannot see that. A fixed piece of pure-Python work, timed interleaved with the rounds,
measures it: the ratio of its medians in two sessions is the machine's move between them.

Measured on the shared 2-core VM this was built on, the move does not *scale* away: the
machine's speed switched between two levels 1.75x apart within seconds, and workloads
respond to it by different amounts (a dict-heavy reference moved 15-22% between sessions
in which an integer loop moved 3-7%; dividing by the reference ratio made the
cross-session spread of a workload worse, not better). So the move *widens* the
comparison of those two sessions (see :func:`~pytest_perfreplay.replay.stats.compare`,
``machine_move``); it never corrects the ratio.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: Share of the session's wall time given to the reference workload.
SHARE = 0.05
#: Reference samples kept in the ledger: enough for a median, small on disk.
MAX_SAMPLES = 400
#: Samples taken before and after the rounds when they run in worker processes.
BRACKET = 15


def _step(acc: int, value: int) -> int:
    return (acc * 31 + value) % 1_000_003


def reference_work(n: int = 150) -> int:
    """Fixed pure-Python work (~0.1 ms): calls, int-keyed dicts, tuples, sorting, integers.

    Integer keys only: string hashes change with each process's hash seed, and the
    reference must not move with it.
    """
    acc = 0
    counts: dict[int, int] = {}
    items = []
    for i in range(n):
        key = i * 7919 % 1009
        items.append((key % 17, key))
        counts[key] = counts.get(key, 0) + 1
        acc = _step(acc, key)
    items.sort()
    for group, key in items:
        acc = _step(acc, group + counts[key])
    return acc


def time_reference() -> float:
    t0 = time.perf_counter_ns()
    reference_work()
    return (time.perf_counter_ns() - t0) / 1e9


@dataclass
class ReferenceClock:
    """Takes reference samples between rounds, spread evenly in time.

    Before a round, :meth:`tick` runs the reference until it has had its :data:`SHARE` of
    the wall time so far: one sample every few rounds for long rounds, several per round
    for short ones, and never inside a timed call.
    """

    share: float = SHARE
    clock: Callable[[], float] = time.perf_counter
    timer: Callable[[], float] = time_reference
    samples: list[float] = field(default_factory=list)
    _spent: float = 0.0
    _start: float | None = None

    def tick(self) -> None:
        now = self.clock()
        if self._start is None:
            self._start = now
        while self._spent < self.share * (now - self._start):
            t0 = self.clock()
            self.samples.append(self.timer())
            now = self.clock()
            self._spent += max(now - t0, self.samples[-1])

    def bracket(self, count: int = BRACKET) -> None:
        """Take ``count`` samples now (around rounds that run in other processes)."""
        self.samples.extend(time_reference() for _ in range(count))

    def wrap(self, measure: Callable[[], float]) -> Callable[[], float]:
        """``measure`` with the reference ticked before each round, outside its timing."""

        def measured() -> float:
            self.tick()
            return measure()

        return measured

    def estimate(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def kept(self) -> list[float]:
        step = max(1, -(-len(self.samples) // MAX_SAMPLES))
        return self.samples[::step]
