"""Estimators, confidence intervals and significance tests for benchmark timings.

Pure functions over sequences of floats (seconds): no I/O, no global state. Every
interval states its method and, where it is exact, the coverage it really gives.

Methods
-------
* ``median``: exact distribution-free order-statistic interval. With ``B ~ Binomial(n, 1/2)``
  the interval ``[x(l), x(u)]`` covers the population median with probability
  ``P(l <= B < u)``; ``l``/``u`` are the symmetric pair that reaches the requested confidence.
  Discreteness makes it conservative (``Interval.coverage`` reports the exact figure). When
  ``n`` is too small for the confidence (n < 6 at 95%), the interval is unbounded rather
  than a lie.
* ``mean``: Student-t with ``n - 1`` degrees of freedom (never a normal z).
* ``min``: the sample minimum has no distribution-free interval, and it keeps falling as
  rounds are added, so "min" is estimated by the 5th percentile (a robust low-end
  timing) with the exact order-statistic interval of that quantile. This needs
  ``n >= 72`` at 95% before both ends are bounded; below that the interval is unbounded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .estimators import ESTIMATORS, Estimator
from .warmup import detect_warmup

__all__ = [
    "MIN_QUANTILE",
    "ESTIMATORS",
    "Comparison",
    "Estimator",
    "Interval",
    "compare",
    "compare_groups",
    "detect_warmup",
    "estimate",
    "group_interval",
    "interval",
    "quantile_interval",
]


#: Quantile that stands in for the minimum (see the module docstring).
MIN_QUANTILE = 0.05

Verdict = Literal["faster", "slower", "no change"]

FloatArray = npt.NDArray[np.float64]


def _sps() -> Any:
    """scipy.stats, imported on first use: it costs ~0.8 s, and worker processes that only
    take rounds (and detect warmup with numpy) should not pay it at start-up."""
    from scipy import stats  # type: ignore[import-untyped, unused-ignore]

    return stats


def preload_scipy() -> None:
    """Import scipy.stats now, before a timed loop whose budget should not pay for it."""
    _sps()


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval.

    ``low``/``high`` are ``-inf``/``+inf`` on a side the data cannot bound (too few samples
    for the confidence asked); ``precision`` is then ``inf``.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    estimator: str
    n: int
    method: str
    #: The coverage the method actually gives: exact for order statistics (>= confidence
    #: because of discreteness), nominal for Student-t, ``nan`` when unbounded.
    coverage: float = math.nan

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def precision(self) -> float:
        """Half-width relative to the estimate (0.01 means +/-1%)."""
        hw = self.half_width
        if not (math.isfinite(hw) and math.isfinite(self.estimate)) or self.estimate <= 0:
            return math.inf
        return hw / self.estimate

    @property
    def defined(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)


@dataclass(frozen=True)
class Comparison:
    """Baseline versus candidate: ``ratio = baseline / candidate`` (> 1: candidate faster)."""

    ratio: float
    low: float
    high: float
    p_value: float
    significant: bool
    verdict: Verdict
    confidence: float
    min_effect: float
    method: str
    estimator: str = "median"
    baseline_estimate: float = math.nan
    candidate_estimate: float = math.nan
    n_baseline: int = 0
    n_candidate: int = 0
    #: Smallest change this comparison can tell from noise: its interval's half-width as a
    #: ratio minus one (nan for in-session comparisons, where it is not the limit).
    detectable: float = math.nan

    def describe(self) -> str:
        """One line such as ``1.32x faster [1.29-1.35], significant``."""
        if self.significant and self.verdict == "slower":
            # Report slowdowns as a factor > 1 too: "1.32x slower" reads better than "0.76x".
            r, lo, hi = 1 / self.ratio, 1 / self.high, 1 / self.low
        else:
            r, lo, hi = self.ratio, self.low, self.high
        d = _digits(lo, hi)
        span = f"{_fmt(r, d)}x [{_fmt(lo, d)}-{_fmt(hi, d)}]"
        if self.significant:
            return f"{span.replace('x [', f'x {self.verdict} [', 1)}, significant"
        text = f"no significant change ({span}, p={self.p_value:.2g}"
        if self.p_value < 1 - self.confidence:
            # The rank test fired, but the effect is not surely above what matters.
            text += f", below the {self.min_effect * 100:g}% minimum effect"
        return text + ")"


def _digits(low: float, high: float) -> int:
    # Enough decimals that a narrow interval does not print as "[1.00-1.00]".
    digits = 2
    while (
        digits < 4
        and math.isfinite(low)
        and math.isfinite(high)
        and round(low, digits) == round(high, digits)
    ):
        digits += 1
    return digits


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


# -- validation helpers -------------------------------------------------------------------


def _check_confidence(confidence: float) -> None:
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}")


def _check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")


def _as_array(samples: Sequence[float], name: str = "samples") -> FloatArray:
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} is empty: at least one sample is needed")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
    return x


# -- estimators and intervals -------------------------------------------------------------


def _quantile_of_sorted(xs: FloatArray, q: float) -> float:
    # numpy's default ("linear") quantile; written out so the bootstrap can mirror it.
    h = (xs.size - 1) * q
    lo = math.floor(h)
    frac = h - lo
    if frac == 0 or lo + 1 >= xs.size:
        return float(xs[lo])
    return float(xs[lo] + frac * (xs[lo + 1] - xs[lo]))


def estimate(samples: Sequence[float], estimator: Estimator = "median") -> float:
    """The point estimate used by :func:`interval` (``min`` is the 5th percentile)."""
    _check_estimator(estimator)
    return _estimate(_as_array(samples), estimator)


def _estimate(x: FloatArray, estimator: Estimator) -> float:
    if estimator == "mean":
        return float(np.mean(x))
    q = 0.5 if estimator == "median" else MIN_QUANTILE
    return _quantile_of_sorted(np.sort(x), q)


def _order_stat_indices(n: int, q: float, confidence: float) -> tuple[int | None, int | None]:
    """0-based indices ``(lo, hi)`` of the equal-tailed exact interval for quantile ``q``.

    The number of samples below the true quantile is ``B ~ Binomial(n, q)``. ``x(lo)`` (0-based)
    is above the quantile when ``B <= lo``; ``x(hi)`` is below it when ``B >= hi + 1``. Each tail
    gets at most ``alpha / 2``. ``None`` marks a side no order statistic can bound.
    """
    alpha = 1 - confidence
    tail = alpha / 2
    # Largest j with P(B <= j) <= tail. ppf gives the smallest j with P(B <= j) >= tail.
    j = int(_sps().binom.ppf(tail, n, q))
    if _sps().binom.cdf(j, n, q) > tail * (1 + 1e-12):
        j -= 1
    lo: int | None = j if j >= 0 else None
    if q == 0.5:
        # Symmetric by construction; avoids float asymmetry from a second ppf call.
        hi: int | None = n - 1 - j if j >= 0 else None
    else:
        # Smallest j with P(B <= j) >= 1 - tail; that order statistic (0-based) is x[j].
        k = int(_sps().binom.ppf(1 - tail, n, q))
        if k > 0 and _sps().binom.cdf(k - 1, n, q) >= (1 - tail) * (1 - 1e-12):
            k -= 1
        hi = k if k <= n - 1 else None
    return lo, hi


def quantile_interval(
    samples: Sequence[float], q: float, confidence: float = 0.95, *, estimator: str | None = None
) -> Interval:
    """Exact distribution-free order-statistic interval for the ``q``-quantile."""
    _check_confidence(confidence)
    if not 0 < q < 1:
        raise ValueError(f"q must be strictly between 0 and 1, got {q!r}")
    return _quantile_interval(_as_array(samples), q, confidence, estimator)


def _quantile_interval(
    x: FloatArray, q: float, confidence: float, estimator: str | None
) -> Interval:
    xs = np.sort(x)
    n = int(xs.size)
    point = _quantile_of_sorted(xs, q)
    lo, hi = _order_stat_indices(n, q, confidence)
    # At tiny n an extreme quantile's point estimate (interpolated between x[h0] and x[h1])
    # can fall outside the exact interval; widening to bracket it keeps the coverage valid.
    h0 = math.floor((n - 1) * q)
    h1 = min(math.ceil((n - 1) * q), n - 1)
    lo = None if lo is None else min(lo, h0)
    hi = None if hi is None else max(hi, h1)
    low = float(xs[lo]) if lo is not None else -math.inf
    high = float(xs[hi]) if hi is not None else math.inf
    name = "median" if q == 0.5 else f"{q:g}-quantile"
    if lo is not None and hi is not None:
        # P(lo < B <= hi), B ~ Binomial(n, q): the exact coverage of [x(lo), x(hi)].
        coverage = float(_sps().binom.cdf(hi, n, q) - _sps().binom.cdf(lo, n, q))
        method = f"exact order-statistic interval for the {name} (x[{lo + 1}], x[{hi + 1}] of {n})"
    else:
        coverage = math.nan
        method = (
            f"order-statistic interval for the {name}: unbounded, n={n} is too small "
            f"for {confidence:.0%} confidence"
        )
    return Interval(
        estimate=point,
        low=low,
        high=high,
        confidence=confidence,
        estimator=estimator if estimator is not None else name,
        n=n,
        method=method,
        coverage=coverage,
    )


def _t_interval(x: FloatArray, confidence: float) -> Interval:
    n = int(x.size)
    mean = float(np.mean(x))
    if n < 2:
        return Interval(
            mean,
            -math.inf,
            math.inf,
            confidence,
            "mean",
            n,
            "Student-t interval for the mean: unbounded, n=1 has no spread estimate",
        )
    sem = float(np.std(x, ddof=1)) / math.sqrt(n)
    hw = float(_sps().t.ppf((1 + confidence) / 2, n - 1)) * sem
    return Interval(
        mean,
        mean - hw,
        mean + hw,
        confidence,
        "mean",
        n,
        f"Student-t interval for the mean ({n - 1} df)",
        coverage=confidence,
    )


def interval(
    samples: Sequence[float], estimator: Estimator = "median", confidence: float = 0.95
) -> Interval:
    """Confidence interval for ``estimator`` of one set of samples (see module docstring)."""
    _check_estimator(estimator)
    _check_confidence(confidence)
    return _interval(_as_array(samples), estimator, confidence)


def _interval(x: FloatArray, estimator: Estimator, confidence: float) -> Interval:
    if estimator == "mean":
        return _t_interval(x, confidence)
    if estimator == "median":
        return _quantile_interval(x, 0.5, confidence, "median")
    iv = _quantile_interval(x, MIN_QUANTILE, confidence, "min")
    return Interval(
        iv.estimate,
        iv.low,
        iv.high,
        iv.confidence,
        "min",
        iv.n,
        f"{iv.method}; the 5th percentile stands in for the minimum, which has no "
        "distribution-free interval",
        iv.coverage,
    )


def group_interval(
    groups: Sequence[Sequence[float]],
    estimator: Estimator = "median",
    confidence: float = 0.95,
) -> Interval:
    """Interval for samples taken in several worker processes.

    Each process has its own hash seed, memory layout and so on, so samples within a
    process are not independent draws of the quantity of interest. The estimate is the
    mean of the per-process estimates, and its interval is Student-t over those ``k``
    estimates with ``k - 1`` degrees of freedom: their spread holds both the between-process
    and the within-process variance. With few processes the sample spread of ``k`` values can
    be small by chance, so the half-width is floored at the within-process uncertainty alone
    (``sqrt(sum(hw_i^2)) / k``), which no mean of the ``k`` estimates can beat. One group gives
    exactly :func:`interval`.
    """
    _check_estimator(estimator)
    _check_confidence(confidence)
    if len(groups) == 0:
        raise ValueError("groups is empty: at least one group of samples is needed")
    arrays = [_as_array(g, f"groups[{i}]") for i, g in enumerate(groups)]
    if len(arrays) == 1:
        return _interval(arrays[0], estimator, confidence)
    per_group = [_interval(a, estimator, confidence) for a in arrays]
    k = len(per_group)
    ests = np.array([iv.estimate for iv in per_group], dtype=np.float64)
    center = float(np.mean(ests))
    between = float(_sps().t.ppf((1 + confidence) / 2, k - 1)) * float(np.std(ests, ddof=1))
    between /= math.sqrt(k)
    hws = [iv.half_width for iv in per_group]
    hw = between
    floor_note = ""
    if all(math.isfinite(h) for h in hws):
        within = math.sqrt(sum(h * h for h in hws)) / k
        if within > between:
            hw = within
            floor_note = "; floored at the within-process uncertainty"
    n = sum(iv.n for iv in per_group)
    return Interval(
        estimate=center,
        low=center - hw,
        high=center + hw,
        confidence=confidence,
        estimator=estimator,
        n=n,
        method=(f"Student-t over {k} per-process {estimator} estimates ({k - 1} df){floor_note}"),
        coverage=confidence,
    )


# -- warmup: in .warmup, free of numpy (worker processes import it) -------------------


# -- comparison ---------------------------------------------------------------------------


def _bootstrap_order_stat(
    xs: FloatArray, q: float, rng: np.random.Generator, resamples: int
) -> FloatArray:
    """Bootstrap replicates of the linear ``q``-quantile of sorted ``xs``, drawn exactly.

    A resample's sorted values are ``xs[floor(n * U_(i))]`` for uniform order statistics
    ``U_(i)``. The quantile needs only two adjacent ones, and ``U_(k) ~ Beta(k, n - k + 1)``
    with ``U_(k+1) = U_(k) + (1 - U_(k)) * Beta(1, n - k)``. This is the ordinary bootstrap
    distribution, at O(resamples) cost instead of O(resamples * n).
    """
    n = int(xs.size)
    h = (n - 1) * q
    lo = math.floor(h)
    frac = h - lo
    k = lo + 1  # 1-based rank of the lower order statistic
    u1 = rng.beta(k, n - k + 1, size=resamples)
    i1 = np.minimum((u1 * n).astype(np.int64), n - 1)
    out = xs[i1]
    if frac > 0 and k < n:
        u2 = u1 + (1 - u1) * rng.beta(1, n - k, size=resamples)
        i2 = np.minimum((u2 * n).astype(np.int64), n - 1)
        out = out + frac * (xs[i2] - out)
    return out


def _bootstrap_mean(x: FloatArray, rng: np.random.Generator, resamples: int) -> FloatArray:
    n = int(x.size)
    out = np.empty(resamples, dtype=np.float64)
    # Chunks keep memory near 8 MB however large n is.
    chunk = max(1, 1_000_000 // n)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = x[idx].mean(axis=1)
    return out


def _bootstrap(
    x: FloatArray, estimator: Estimator, rng: np.random.Generator, resamples: int
) -> FloatArray:
    if estimator == "mean":
        return _bootstrap_mean(x, rng, resamples)
    q = 0.5 if estimator == "median" else MIN_QUANTILE
    return _bootstrap_order_stat(np.sort(x), q, rng, resamples)


def _decide(
    ratio: float, low: float, high: float, p: float, alpha: float, min_effect: float
) -> tuple[bool, Verdict]:
    """Significant only if the test rejects and the whole interval clears the minimum effect."""
    outside = high < 1 / (1 + min_effect) or low > 1 + min_effect
    if p < alpha and outside:
        return True, "faster" if ratio > 1 else "slower"
    return False, "no change"


def compare(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    estimator: Estimator = "median",
    confidence: float = 0.95,
    min_effect: float = 0.01,
    seed: int = 0,
    resamples: int = 2000,
    drift: float = 0.0,
    machine_move: float = 0.0,
) -> Comparison:
    """Compare two sets of timings (any sizes).

    * p-value: two-sided Mann-Whitney U (rank test; no normality or equal-n assumption).
    * Ratio ``baseline / candidate`` of the estimators with a percentile bootstrap interval
      (independent resampling of each side, seeded so the answer is reproducible).
    * ``drift``: the relative standard deviation of a whole session's estimate around the
      truth (hash seed, memory layout, machine load). Rounds within one session cannot see
      it, so comparing two sessions adds it, once per side, to the log-ratio's variance;
      the interval widens and a normal test on the widened log ratio can only raise p.
    * ``machine_move``: how much the machine itself moved between these two sessions, as
      the ratio of a reference workload's medians minus one (``replay/reference.py``).
      The target may have moved as much, so its log is added in full to the log-ratio's
      standard error. It widens; it never corrects the ratio (the target and the reference
      do not move alike: measured, correcting made the cross-session spread worse).
    * Significant only when ``p < 1 - confidence`` and the whole ratio interval lies outside
      ``[1 / (1 + min_effect), 1 + min_effect]``: a real but negligible change is no change.
    """
    _check_estimator(estimator)
    _check_confidence(confidence)
    if not (isinstance(min_effect, (int, float)) and min_effect >= 0 and math.isfinite(min_effect)):
        raise ValueError(f"min_effect must be a finite number >= 0, got {min_effect!r}")
    if not isinstance(resamples, int) or resamples < 100:
        raise ValueError(f"resamples must be an integer >= 100, got {resamples!r}")
    if not (isinstance(drift, (int, float)) and 0 <= drift < 1):
        raise ValueError(f"drift must be a number in [0, 1), got {drift!r}")
    if not (isinstance(machine_move, (int, float)) and math.isfinite(machine_move)):
        raise ValueError(f"machine_move must be a finite number, got {machine_move!r}")
    move = abs(math.log1p(machine_move)) if machine_move > -1 else math.inf
    if not math.isfinite(move):
        raise ValueError(f"machine_move must be above -1, got {machine_move!r}")
    b = _as_array(baseline, "baseline")
    c = _as_array(candidate, "candidate")

    mw = _sps().mannwhitneyu(b, c, alternative="two-sided")
    p = float(mw.pvalue)
    if not math.isfinite(p):
        p = 1.0  # all values tied: no evidence of a difference

    b_est = _estimate(b, estimator)
    c_est = _estimate(c, estimator)
    ratio = b_est / c_est if c_est > 0 else math.inf

    rng = np.random.default_rng(seed)
    b_boot = _bootstrap(b, estimator, rng, resamples)
    c_boot = _bootstrap(c, estimator, rng, resamples)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = b_boot / c_boot
    ratios = np.where(c_boot > 0, ratios, np.inf)
    alpha = 1 - confidence
    low, high = (float(v) for v in np.quantile(ratios, [alpha / 2, 1 - alpha / 2]))
    detectable = math.nan
    widened = drift > 0 or move > 0
    if widened and 0 < low <= high < math.inf and 0 < ratio < math.inf:
        z = float(_sps().norm.ppf(1 - alpha / 2))
        center = math.log(ratio)
        within = max(center - math.log(low), math.log(high) - center) / z
        se = math.sqrt(within**2 + 2 * math.log1p(drift) ** 2 + move**2)
        low, high = math.exp(center - z * se), math.exp(center + z * se)
        p = max(p, float(2 * _sps().norm.sf(abs(center) / se)))
        detectable = math.expm1(z * se)

    significant, verdict = _decide(ratio, low, high, p, alpha, min_effect)
    return Comparison(
        ratio=ratio,
        low=low,
        high=high,
        p_value=p,
        significant=significant,
        verdict=verdict,
        confidence=confidence,
        min_effect=min_effect,
        method=(
            f"two-sided Mann-Whitney U; percentile bootstrap of the {estimator} ratio "
            f"({resamples} resamples, seed {seed})"
            + (f"; widened for {drift:.1%} between-session drift per side" if drift else "")
            + (
                f"; widened for the machine's {machine_move:+.1%} move (reference workload)"
                if move
                else ""
            )
        ),
        estimator=estimator,
        baseline_estimate=b_est,
        candidate_estimate=c_est,
        n_baseline=int(b.size),
        n_candidate=int(c.size),
        detectable=detectable,
    )


def session_drift(
    pairs: Sequence[tuple[float, float]], *, prior: float = 0.02, prior_weight: float = 2.0
) -> float:
    """Between-session drift (relative SD of one session's estimate), learned from A/A pairs.

    Each pair holds the estimates of two sessions of the *same* code. Their log ratio has
    variance 2 * drift**2. With few pairs the estimate is noisy, so it is pooled with
    ``prior`` counted as ``prior_weight`` pairs' worth of evidence.
    """
    squares = [
        math.log(a / b) ** 2 / 2 for a, b in pairs if a > 0 and b > 0 and math.isfinite(a / b)
    ]
    pooled = (prior_weight * math.log1p(prior) ** 2 + sum(squares)) / (prior_weight + len(squares))
    return math.expm1(math.sqrt(pooled))


def compare_groups(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    estimator: Estimator = "median",
    confidence: float = 0.95,
    min_effect: float = 0.01,
    machine_move: float = 0.0,
) -> Comparison:
    """Compare two runs by their per-process estimates (``--perf-replay-processes``).

    Pooling every round would treat rounds of one process as independent draws, and call
    any between-process (or between-session) shift significant. Here the unit is the
    process: Welch's t-test on the log of the per-process estimates (unequal counts and
    variances), and its interval for the difference of log-means, exponentiated into a
    ratio ``baseline / candidate`` (geometric means). The same minimum-effect rule as
    :func:`compare` applies, and so does the ``machine_move`` widening (its log is added to
    the standard error of the log ratio).
    """
    _check_estimator(estimator)
    _check_confidence(confidence)
    b = np.log(_as_array(baseline, "baseline"))
    c = np.log(_as_array(candidate, "candidate"))
    if b.size < 2 or c.size < 2:
        raise ValueError("compare_groups needs at least two per-process estimates per side")
    if not (isinstance(machine_move, (int, float)) and -1 < machine_move < math.inf):
        raise ValueError(f"machine_move must be a finite number above -1, got {machine_move!r}")
    move = abs(math.log1p(machine_move))
    vb, vc = float(np.var(b, ddof=1)) / b.size, float(np.var(c, ddof=1)) / c.size
    diff = float(np.mean(b) - np.mean(c))
    se = math.sqrt(vb + vc + move**2)
    detectable = math.nan
    if se == 0:
        p, half = (1.0 if diff == 0 else 0.0), 0.0
    else:
        welch = vb + vc
        df = welch**2 / (vb**2 / (b.size - 1) + vc**2 / (c.size - 1)) if welch > 0 else math.inf
        t = diff / se
        p = float(2 * _sps().t.sf(abs(t), df))
        half = float(_sps().t.ppf((1 + confidence) / 2, df)) * se
        if move > 0:
            detectable = math.expm1(half)
    ratio, low, high = math.exp(diff), math.exp(diff - half), math.exp(diff + half)
    significant, verdict = _decide(ratio, low, high, p, 1 - confidence, min_effect)
    return Comparison(
        ratio=ratio,
        low=low,
        high=high,
        p_value=p,
        significant=significant,
        verdict=verdict,
        confidence=confidence,
        min_effect=min_effect,
        method=f"Welch t-test on log per-process {estimator} estimates"
        + (
            f"; widened for the machine's {machine_move:+.1%} move (reference workload)"
            if move
            else ""
        ),
        estimator=estimator,
        baseline_estimate=float(np.exp(np.mean(b))),
        candidate_estimate=float(np.exp(np.mean(c))),
        n_baseline=int(b.size),
        n_candidate=int(c.size),
        detectable=detectable,
    )
