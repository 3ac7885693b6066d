"""Paired statistics for baseline-versus-candidate rounds: pure functions, no I/O.

The data are per-pair log ratios ``log(candidate / baseline)``, one per adjacent
(baseline, candidate) measurement, grouped by the process pair that produced them.

* Within one process pair: the **Hodges-Lehmann** estimate (median of the Walsh averages)
  with the **Wilcoxon signed-rank** interval, exact (the null distribution of the
  signed-rank statistic by dynamic programming) up to :data:`EXACT_MAX` pairs, normal
  beyond. Distribution-free: it only assumes the log ratios are symmetric about their centre.
* Between process pairs: the same again, on the pairs' estimates. Which process of a pair
  is the baseline's is random, so each pair's estimate is the true log ratio plus an offset
  as likely to fall either way (hash seed, memory layout, the speed the host gives that
  process): the Hodges-Lehmann estimate of the pairs' estimates with their Wilcoxon
  interval is exact under that symmetry alone. When process pairs disagree, the interval
  widens: process-level effects count as noise, not as signal. Ranks, not a mean, because
  a few pairs sit far off (see :func:`pool`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np

#: Up to this many pairs the signed-rank distribution is computed exactly.
EXACT_MAX = 300

Direction = Literal["slower", "faster", "same"]


@dataclass(frozen=True)
class PairEstimate:
    """One process pair: Hodges-Lehmann estimate of the log ratio and its interval."""

    estimate: float
    low: float
    high: float
    n: int
    confidence: float = 0.95


@dataclass(frozen=True)
class PooledLogRatio:
    """The log ratio over all process pairs, with its interval and how it was obtained."""

    estimate: float
    low: float
    high: float
    confidence: float
    estimates: tuple[float, ...]  # each process pair's log ratio, in the order they ran
    groups: int
    pairs: int
    method: str

    @property
    def spread(self) -> float:
        """Robust SD of the process pairs' estimates (1.4826 x their median absolute deviation)."""
        x = np.asarray(self.estimates, dtype=np.float64)
        return float(1.4826 * np.median(np.abs(x - np.median(x))))

    @property
    def ratio(self) -> float:
        return math.exp(self.estimate)

    @property
    def ratio_low(self) -> float:
        return math.exp(self.low)

    @property
    def ratio_high(self) -> float:
        return math.exp(self.high)


def _z(confidence: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


@cache
def _signed_rank_cdf(n: int) -> tuple[float, ...]:
    """P(T <= t) for t = 0 .. n(n+1)/2, T the signed-rank statistic of n pairs under H0."""
    top = n * (n + 1) // 2
    dist = np.zeros(top + 1)
    dist[0] = 1.0
    for rank in range(1, n + 1):
        shifted = np.zeros_like(dist)
        shifted[rank:] = dist[:-rank]
        dist = (dist + shifted) / 2  # each rank is in the positive set or not, p = 1/2
    return tuple(float(x) for x in np.cumsum(dist))


def signed_rank_depth(n: int, confidence: float) -> int | None:
    """How many Walsh averages to cut from each end: the interval is [W(c), W(M-1-c)].

    ``c`` is the largest count with ``P(T <= c - 1) <= alpha / 2`` (0-based sorted Walsh
    averages, ``M = n(n+1)/2``). None when ``n`` is too small for the confidence (n < 6 at
    95%): no distribution-free interval exists then.
    """
    if n < 1:
        return None
    alpha = 1 - confidence
    if n <= EXACT_MAX:
        cdf = _signed_rank_cdf(n)
        c = 0
        while c < len(cdf) and cdf[c] <= alpha / 2:
            c += 1
        return c if c > 0 else None
    m = n * (n + 1) / 2
    sd = math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    c = int(math.floor(m / 2 - _z(confidence) * sd + 0.5))
    return c if c > 0 else None


def hodges_lehmann(values: Sequence[float], confidence: float = 0.95) -> PairEstimate:
    """Hodges-Lehmann estimate of the centre of ``values`` with its signed-rank interval.

    The interval is ``(-inf, inf)`` when there are too few values for the confidence.
    """
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        raise ValueError("hodges_lehmann needs at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError("hodges_lehmann: values must be finite")
    i, j = np.triu_indices(n)
    walsh = np.sort((x[i] + x[j]) / 2)
    centre = float(np.median(walsh))
    depth = signed_rank_depth(n, confidence)
    if depth is None:
        return PairEstimate(centre, -math.inf, math.inf, n, confidence)
    low, high = float(walsh[depth - 1]), float(walsh[walsh.size - depth])
    return PairEstimate(centre, low, high, n, confidence)


def pool(groups: Sequence[Sequence[float]], confidence: float = 0.95) -> PooledLogRatio:
    """Combine the per-pair log ratios of several process pairs.

    ``groups[j]`` holds process pair ``j``'s log ratios. Each pair is summarized by its
    Hodges-Lehmann estimate; the answer is the Hodges-Lehmann estimate *of those*, with
    the exact Wilcoxon interval over process pairs. Which process is the baseline's is
    random, so a pair's own offset (layout, hash seed, the speed the host gave that
    process) is as likely to favour either side: the pair estimates are symmetric about
    the true log ratio, which is all the interval needs. It is unbounded until there are
    enough process pairs for the confidence (6 at 95%).

    Why not a mean over pairs (a random effect, or a t interval): on the machine this was
    built on, a process keeps one of two speeds for its life, so in exploratory runs 4 or
    5 process pairs in 30-40 sat 7-27% off while the rest agreed within a few percent. A
    mean and its standard deviation follow those few; ranks do not.
    """
    if not groups or not any(len(g) for g in groups):
        raise ValueError("pool needs at least one group with values")
    per = [hodges_lehmann(g, confidence) for g in groups if len(g)]
    pairs = sum(p.n for p in per)
    if len(per) == 1:
        p = per[0]
        return PooledLogRatio(
            p.estimate,
            p.low,
            p.high,
            confidence,
            (p.estimate,),
            1,
            pairs,
            "Hodges-Lehmann of per-pair log ratios, Wilcoxon interval, 1 process pair",
        )
    estimates = [p.estimate for p in per]
    across = hodges_lehmann(estimates, confidence)
    return PooledLogRatio(
        across.estimate,
        across.low,
        across.high,
        confidence,
        tuple(estimates),
        len(per),
        pairs,
        f"Hodges-Lehmann of per-pair log ratios within each process pair, then of the "
        f"{len(per)} process pairs' estimates, with their Wilcoxon signed-rank interval",
    )


@dataclass(frozen=True)
class Decision:
    """Where the ratio interval sits against the minimum-effect band ``[1/(1+m), 1+m]``."""

    significant: bool  # the interval clears the band
    equivalent: bool  # the interval sits inside the band
    direction: Direction


def decide(low: float, high: float, min_effect: float) -> Decision:
    """Judge a ratio interval ``[low, high]`` (candidate / baseline) against the band."""
    upper, lower = 1 + min_effect, 1 / (1 + min_effect)
    if low > upper:
        return Decision(True, False, "slower")
    if high < lower:
        return Decision(True, False, "faster")
    return Decision(False, lower <= low and high <= upper, "same")
