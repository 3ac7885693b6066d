"""Statistics checked against scipy, independent reference computations and seeded simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats  # type: ignore[import-untyped, unused-ignore]
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_perfreplay.replay import stats
from pytest_perfreplay.replay.stats import (
    Comparison,
    Interval,
    compare,
    detect_warmup,
    estimate,
    group_interval,
    interval,
    quantile_interval,
    session_drift,
)

# -- independent references (pure Python, no scipy) ----------------------------------------


def binom_cdf(n: int, p: float) -> list[float]:
    """CDF of Binomial(n, p) at 0..n, exact rationals when p = 1/2."""
    out, acc = [], 0.0
    for j in range(n + 1):
        acc += math.comb(n, j) * p**j * (1 - p) ** (n - j)
        out.append(acc)
    return out


def reference_median_ranks(n: int, confidence: float) -> tuple[int, int, float] | None:
    """1-based ranks (l, u) of the textbook symmetric median interval and its exact coverage."""
    cdf = binom_cdf(n, 0.5)
    tail = (1 - confidence) / 2
    js = [j for j in range(n + 1) if cdf[j] <= tail]
    if not js:
        return None
    j = max(js)
    lo, hi = j + 1, n - j
    return lo, hi, cdf[hi - 1] - cdf[lo - 1]


# -- Interval ------------------------------------------------------------------------------


def test_interval_properties() -> None:
    iv = Interval(10.0, 9.0, 11.5, 0.95, "median", 20, "m")
    assert iv.half_width == pytest.approx(1.25)
    assert iv.precision == pytest.approx(0.125)
    assert Interval(0.0, -1, 1, 0.95, "mean", 3, "m").precision == math.inf
    assert Interval(-1.0, -2, 1, 0.95, "mean", 3, "m").precision == math.inf
    assert Interval(1.0, -math.inf, 2, 0.95, "median", 3, "m").precision == math.inf
    assert not Interval(1.0, -math.inf, 2, 0.95, "median", 3, "m").defined


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"samples": []}, "empty"),
        ({"samples": [1.0, math.nan]}, "non-finite"),
        ({"samples": [1.0, 2.0], "confidence": 1.0}, "confidence must be strictly between 0 and 1"),
        ({"samples": [1.0, 2.0], "estimator": "p99"}, "estimator must be one of median, mean"),
    ],
)
def test_interval_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        interval(**kwargs)  # type: ignore[arg-type]


# -- Student-t -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 10, 31, 500])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_mean_interval_equals_scipy_t_interval(n: int, confidence: float) -> None:
    x = np.random.default_rng(n).lognormal(0, 0.3, n)
    iv = interval(x.tolist(), "mean", confidence)
    low, high = scipy.stats.t.interval(confidence, n - 1, loc=np.mean(x), scale=scipy.stats.sem(x))
    assert iv.estimate == pytest.approx(np.mean(x), rel=1e-12)
    assert iv.low == pytest.approx(low, rel=1e-12)
    assert iv.high == pytest.approx(high, rel=1e-12)
    assert iv.coverage == confidence
    assert "Student-t" in iv.method and f"{n - 1} df" in iv.method


def test_mean_interval_small_n_is_honest() -> None:
    one = interval([1.0], "mean")
    assert (one.low, one.high) == (-math.inf, math.inf)
    assert one.precision == math.inf
    flat = interval([2.0, 2.0, 2.0], "mean")
    assert (flat.low, flat.high, flat.precision) == (2.0, 2.0, 0.0)
    # n=5: Student-t (2.776) is far wider than a normal z (1.96) would claim.
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert interval(x, "mean").half_width == pytest.approx(2.776 * np.std(x, ddof=1) / 5**0.5, 1e-3)


# -- median: exact order statistics --------------------------------------------------------


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
@pytest.mark.parametrize("n", [*range(2, 41), 63, 100, 101, 250, 1000])
def test_median_interval_matches_reference_ranks(n: int, confidence: float) -> None:
    data = np.random.default_rng(n).permutation(np.arange(1.0, n + 1))  # x(i) == i
    iv = interval(data.tolist(), "median", confidence)
    ref = reference_median_ranks(n, confidence)
    assert iv.estimate == pytest.approx((n + 1) / 2)
    if ref is None:
        assert (iv.low, iv.high) == (-math.inf, math.inf)
        assert iv.precision == math.inf and "too small" in iv.method
        return
    lo, hi, coverage = ref
    assert (iv.low, iv.high) == (lo, hi)
    assert iv.coverage == pytest.approx(coverage, rel=1e-9)
    assert iv.coverage >= confidence


def test_median_interval_known_table_values() -> None:
    # Classic tables (e.g. Conover, Practical Nonparametric Statistics) at 95%.
    for n, ranks in {6: (1, 6), 10: (2, 9), 20: (6, 15), 100: (40, 61)}.items():
        iv = interval([float(i) for i in range(1, n + 1)])
        assert (iv.low, iv.high) == ranks
    assert not interval([1.0, 2.0, 3.0, 4.0, 5.0]).defined  # n=5 cannot reach 95%
    # Agrees with scipy's binomial quantile too: l - 1 = binom.ppf(0.025) - 1 when not exact.
    n = 100
    assert scipy.stats.binom.ppf(0.025, n, 0.5) == 40


def test_median_interval_coverage_simulation() -> None:
    # n=17 is a sample size where the exact discrete coverage is close to nominal.
    n, runs = 17, 2000
    exact = reference_median_ranks(n, 0.95)
    assert exact is not None
    assert exact[:2] == (5, 13)
    assert exact[2] == pytest.approx(0.950958, abs=1e-6)  # the method's nominal coverage
    rng = np.random.default_rng(20240601)
    hits = 0
    for _ in range(runs):
        x = rng.lognormal(0.0, 0.5, n)  # skewed like timings; true median exp(0) = 1
        iv = interval(x.tolist())
        assert iv.coverage == pytest.approx(exact[2])
        hits += iv.low <= 1.0 <= iv.high
    assert 0.94 <= hits / runs <= 0.96


# -- min: 5th percentile -------------------------------------------------------------------


def reference_quantile_ranks(n: int, q: float, confidence: float) -> tuple[int, int] | None:
    """0-based (lo, hi) of the equal-tailed exact interval for the q-quantile."""
    cdf = binom_cdf(n, q)
    tail = (1 - confidence) / 2
    los = [j for j in range(n + 1) if cdf[j] <= tail]
    his = [j for j in range(n) if cdf[j] >= 1 - tail]
    if not los or not his:
        return None
    return max(los), min(his)


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
@pytest.mark.parametrize("n", [72, 100, 200, 333, 1000])
def test_min_uses_fifth_percentile_with_exact_interval(n: int, confidence: float) -> None:
    x = np.random.default_rng(3).permutation(np.arange(1.0, n + 1))  # x(k) == k
    iv = interval(x.tolist(), "min", confidence)
    assert iv.estimator == "min"
    assert iv.estimate == pytest.approx(np.quantile(x, 0.05))
    assert "5th percentile" in iv.method
    ref = reference_quantile_ranks(n, 0.05, confidence)
    if ref is None:
        assert iv.low == -math.inf
        return
    lo, hi = ref
    assert (iv.low, iv.high) == (lo + 1, hi + 1)
    cdf = binom_cdf(n, 0.05)
    assert iv.coverage == pytest.approx(cdf[hi] - cdf[lo], rel=1e-9)
    assert iv.coverage >= confidence


def test_min_interval_is_unbounded_below_until_n_72() -> None:
    # The lowest order statistic only bounds the 5th percentile from below at 95% when
    # 0.95**n <= 0.025, i.e. n >= 72.
    assert interval([float(i) for i in range(71)], "min").low == -math.inf
    assert interval([float(i) for i in range(71)], "min").precision == math.inf
    assert interval([float(i) for i in range(72)], "min").defined


def test_min_interval_coverage_simulation() -> None:
    rng = np.random.default_rng(7)
    true_q = -math.log(0.95)  # 5th percentile of Exp(1)
    runs, hits = 1000, 0
    for _ in range(runs):
        iv = quantile_interval(rng.exponential(size=150).tolist(), 0.05)
        hits += iv.low <= true_q <= iv.high
    assert hits / runs >= 0.94


def test_quantile_interval_validation() -> None:
    with pytest.raises(ValueError, match="q must be strictly between 0 and 1"):
        quantile_interval([1.0, 2.0], 1.0)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(1e-7, 1e3, allow_nan=False), min_size=1, max_size=300),
    st.sampled_from(["median", "mean", "min"]),
    st.sampled_from([0.8, 0.95, 0.99]),
)
def test_interval_brackets_estimate(
    samples: list[float], estimator: stats.Estimator, confidence: float
) -> None:
    iv = interval(samples, estimator, confidence)
    assert iv.low <= iv.estimate * (1 + 1e-12) and iv.estimate <= iv.high * (1 + 1e-12)
    assert iv.n == len(samples)
    assert iv.estimate == pytest.approx(estimate(samples, estimator))
    assert iv.precision >= 0


# -- group_interval ------------------------------------------------------------------------


def test_group_interval_single_group_equals_interval() -> None:
    x = np.random.default_rng(0).lognormal(0, 0.2, 40).tolist()
    for est in ("median", "mean", "min"):
        assert group_interval([x], est) == interval(x, est)


def _groups(
    rng: np.random.Generator, k: int, m: int, between: float, within: float
) -> list[list[float]]:
    centers = 100.0 + rng.normal(0.0, between, k)
    return [(c + rng.normal(0.0, within, m)).tolist() for c in centers]


def test_group_interval_wider_than_pooled_with_between_process_variance() -> None:
    rng = np.random.default_rng(11)
    groups = _groups(rng, k=6, m=50, between=5.0, within=1.0)
    pooled = [v for g in groups for v in g]
    for est in ("mean", "median"):
        g = group_interval(groups, est)
        p = interval(pooled, est)
        assert g.half_width > 3 * p.half_width
        assert "Student-t over 6 per-process" in g.method and "5 df" in g.method
        assert g.n == len(pooled)


@pytest.mark.parametrize("estimator", ["mean", "median"])
def test_group_interval_coverage_simulation(estimator: stats.Estimator) -> None:
    rng = np.random.default_rng(5)
    runs, hits, pooled_hits = 1000, 0, 0
    for _ in range(runs):
        # The quantity of interest is the mean over processes: 100.
        groups = _groups(rng, k=6, m=20, between=3.0, within=1.0)
        g = group_interval(groups, estimator)
        hits += g.low <= 100.0 <= g.high
        p = interval([v for grp in groups for v in grp], estimator)
        pooled_hits += p.low <= 100.0 <= p.high
    assert 0.93 <= hits / runs <= 0.97
    assert pooled_hits / runs < 0.6  # ignoring processes overclaims badly


def test_group_interval_floors_at_within_process_uncertainty() -> None:
    # Identical per-process means by construction: the between spread is 0, but the
    # within-process noise still limits what the grand mean can claim.
    base = [9.0, 10.0, 11.0, 10.0, 10.0]
    groups = [base, base[::-1]]
    g = group_interval(groups, "mean")
    within = interval(base, "mean").half_width
    assert g.half_width == pytest.approx(math.sqrt(2 * within**2) / 2)
    assert "floored" in g.method


def test_group_interval_small_groups_and_validation() -> None:
    # Three values per process (pyperf-like): per-process median CIs are unbounded, the
    # between-process t interval still works.
    g = group_interval([[1.0, 1.1, 1.2], [1.3, 1.2, 1.4], [1.0, 1.0, 1.1]])
    assert g.defined and g.low < g.estimate < g.high
    with pytest.raises(ValueError, match="groups is empty"):
        group_interval([])
    with pytest.raises(ValueError, match=r"groups\[1\] is empty"):
        group_interval([[1.0], []])


# -- detect_warmup -------------------------------------------------------------------------


def test_detect_warmup_decaying_start() -> None:
    seq = [50.0, 30.0, 20.0, 12.0] + [10.0] * 8
    assert detect_warmup(seq[:9]) is None  # too few to judge
    assert detect_warmup(seq[:11]) is None  # still trending down
    assert detect_warmup(seq) == 4
    assert detect_warmup([*seq, 10.0, 10.0]) == 4


def first_settled(x: list[float]) -> tuple[int, int]:
    """Feed samples one at a time, as the round loop does: (count, samples seen)."""
    for n in range(1, len(x) + 1):
        w = detect_warmup(x[:n])
        if w is not None:
            return w, n
    raise AssertionError("never settled")


@pytest.mark.parametrize(("tau", "amp", "lo", "hi"), [(1.0, 4.0, 4, 9), (2.0, 3.0, 6, 16)])
def test_detect_warmup_noisy_decay(tau: float, amp: float, lo: int, hi: int) -> None:
    rng = np.random.default_rng(2)
    i = np.arange(200)
    for _ in range(50):
        x = 10.0 * (1 + amp * np.exp(-i / tau)) * rng.lognormal(0, 0.01, i.size)
        w, seen = first_settled(x.tolist())
        assert seen <= 40
        assert lo <= w <= hi  # elevated by > 3% (3 sigma) until i ~ lo..hi
        # A look back over the whole series agrees on the scale of the warmup.
        late = detect_warmup(x.tolist(), final=True)
        assert late is not None and lo <= late <= hi


def test_detect_warmup_does_not_flag_pure_noise() -> None:
    rng = np.random.default_rng(3)
    counts, unsettled = [], 0
    for _ in range(200):
        x = rng.normal(10.0, 0.5, 30)
        unsettled += detect_warmup(x[:10].tolist()) is None
        w = detect_warmup(x.tolist())
        counts.append(0 if w is None else w)
    assert unsettled <= 20  # settles on the first look in >= 90% of runs
    assert sum(c > 0 for c in counts) <= 10  # <= 5% flag anything
    assert max(counts) <= 2


def test_detect_warmup_final_and_validation() -> None:
    assert detect_warmup([5.0, 4.0, 3.0]) is None
    assert detect_warmup([5.0, 4.0, 3.0], final=True) == 0
    assert detect_warmup([50.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0], final=True) == 1
    # A still-falling series, forced: leaves at least one sample.
    falling = [float(v) for v in range(40, 0, -1)]
    assert detect_warmup(falling) is None
    w = detect_warmup(falling, final=True)
    assert w is not None and 0 < w < len(falling)
    with pytest.raises(ValueError, match="window must be an integer >= 2"):
        detect_warmup([1.0] * 20, window=1)


# -- compare -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nb", "nc", "shift", "ties"),
    [(30, 30, 1.0, False), (12, 57, 1.1, False), (200, 35, 0.97, True), (5, 8, 1.5, False)],
)
def test_compare_p_value_equals_scipy_mann_whitney(
    nb: int, nc: int, shift: float, ties: bool
) -> None:
    rng = np.random.default_rng(nb * nc)
    b = rng.lognormal(0, 0.2, nb) * shift
    c = rng.lognormal(0, 0.2, nc)
    if ties:
        b, c = np.round(b, 1), np.round(c, 1)
    res = compare(b.tolist(), c.tolist())
    ref = scipy.stats.mannwhitneyu(b, c, alternative="two-sided")
    assert res.p_value == ref.pvalue
    assert (res.n_baseline, res.n_candidate) == (nb, nc)
    assert "Mann-Whitney" in res.method


def test_compare_aa_false_positive_rate() -> None:
    rng = np.random.default_rng(99)
    with_effect, p_only = 0, 0
    for i in range(200):
        a = rng.lognormal(0, 0.1, 60).tolist()
        b = rng.lognormal(0, 0.1, 80).tolist()
        res = compare(a, b, seed=i, resamples=500)
        with_effect += res.significant
        p_only += compare(a, b, seed=i, resamples=500, min_effect=0.0).significant
    assert with_effect / 200 <= 0.05
    assert p_only / 200 <= 0.08  # the rank test alone is calibrated near 5%


@pytest.mark.parametrize("estimator", ["median", "mean", "min"])
def test_compare_detects_1_3x_speedup(estimator: stats.Estimator) -> None:
    # A 95% interval misses 5% of the time, so judge coverage over several seeded runs.
    runs, covered = 40, 0
    for seed in range(runs):
        rng = np.random.default_rng(10_000 + seed)  # data stream apart from the bootstrap's
        baseline = (1.3 * rng.lognormal(0, 0.1, 300)).tolist()
        candidate = rng.lognormal(0, 0.1, 250).tolist()
        res = compare(baseline, candidate, estimator=estimator, seed=seed, resamples=1000)
        assert res.significant and res.verdict == "faster"
        assert res.low < res.ratio < res.high
        assert res.describe().endswith(", significant") and " faster [" in res.describe()
        covered += res.low <= 1.3 <= res.high
        flipped = compare(candidate, baseline, estimator=estimator, seed=seed, resamples=1000)
        assert flipped.verdict == "slower" and " slower [" in flipped.describe()
    assert covered / runs >= 0.85


def test_compare_is_deterministic_and_handles_large_samples() -> None:
    rng = np.random.default_rng(4)
    a = rng.lognormal(0, 0.1, 10_000).tolist()
    b = rng.lognormal(0, 0.1, 10_000).tolist()
    first = compare(a, b, seed=3)
    assert first == compare(a, b, seed=3)
    assert first.verdict == "no change"
    assert first.low < 1 < first.high


def test_compare_min_effect_gate() -> None:
    rng = np.random.default_rng(8)
    a = (1.003 * rng.lognormal(0, 0.02, 5000)).tolist()
    b = rng.lognormal(0, 0.02, 5000).tolist()
    res = compare(a, b)
    assert res.p_value < 0.05  # real, tiny difference
    assert not res.significant and res.verdict == "no change"
    assert "below the 1% minimum effect" in res.describe()
    assert compare(a, b, min_effect=0.0).significant


def test_compare_all_ties_and_validation() -> None:
    res = compare([1.0, 1.0, 1.0], [1.0, 1.0])
    assert res.p_value == 1.0 and res.verdict == "no change"
    with pytest.raises(ValueError, match="baseline is empty"):
        compare([], [1.0])
    with pytest.raises(ValueError, match="min_effect must be"):
        compare([1.0], [1.0], min_effect=-0.1)
    with pytest.raises(ValueError, match="resamples must be"):
        compare([1.0], [1.0], resamples=10)


def test_describe_formats() -> None:
    fast = Comparison(1.3201, 1.2904, 1.3512, 1e-9, True, "faster", 0.95, 0.01, "m")
    assert fast.describe() == "1.32x faster [1.29-1.35], significant"
    same = Comparison(1.01, 0.99, 1.03, 0.41, False, "no change", 0.95, 0.01, "m")
    assert same.describe() == "no significant change (1.01x [0.99-1.03], p=0.41)"
    slow = Comparison(1 / 1.32, 1 / 1.35, 1 / 1.29, 1e-9, True, "slower", 0.95, 0.01, "m")
    assert slow.describe() == "1.32x slower [1.29-1.35], significant"
    narrow = Comparison(1.0004, 0.9981, 1.0027, 0.7, False, "no change", 0.95, 0.01, "m")
    assert narrow.describe() == "no significant change (1.000x [0.998-1.003], p=0.7)"


@pytest.mark.parametrize(("n", "q"), [(51, 0.5), (50, 0.5), (400, 0.05)])
def test_exact_order_statistic_bootstrap_matches_brute_force(n: int, q: float) -> None:
    rng = np.random.default_rng(n)
    xs = np.sort(rng.lognormal(0, 0.3, n))
    fast = stats._bootstrap_order_stat(xs, q, np.random.default_rng(1), 40_000)
    idx = np.random.default_rng(2).integers(0, n, size=(40_000, n))
    brute = np.quantile(xs[idx], q, axis=1)
    probs = [0.025, 0.1, 0.5, 0.9, 0.975]
    spread = float(np.quantile(brute, 0.975) - np.quantile(brute, 0.025))
    for f, b in zip(np.quantile(fast, probs), np.quantile(brute, probs), strict=True):
        assert abs(f - b) <= 0.03 * spread
    assert abs(float(np.mean(fast)) - float(np.mean(brute))) <= 0.01 * spread


# -- between-session drift ------------------------------------------------------------


def _session(rng: np.random.Generator, true: float, drift: float, n: int) -> list[float]:
    """One session: its own multiplicative offset, then per-round lognormal noise."""
    offset = math.exp(rng.normal(0.0, math.log1p(drift)))
    return list(true * offset * np.exp(rng.normal(0.0, 0.02, n)))


def test_drift_zero_is_the_plain_comparison() -> None:
    rng = np.random.default_rng(11)
    a, b = list(rng.lognormal(0, 0.05, 300)), list(rng.lognormal(0.01, 0.05, 300))
    plain, zero = compare(a, b), compare(a, b, drift=0.0)
    assert (plain.low, plain.high, plain.p_value) == (zero.low, zero.high, zero.p_value)


def test_drift_keeps_aa_false_positives_near_nominal() -> None:
    rng = np.random.default_rng(2024)
    drift = 0.03
    naive = aware = 0
    runs = 200
    for _ in range(runs):
        a, b = _session(rng, 1.0, drift, 200), _session(rng, 1.0, drift, 200)
        naive += compare(a, b, resamples=500).significant
        aware += compare(a, b, resamples=500, drift=drift).significant
    # Without the allowance, session offsets look like real changes most of the time.
    assert naive / runs > 0.5
    assert aware / runs <= 0.06


def test_drift_still_detects_a_real_speedup() -> None:
    rng = np.random.default_rng(7)
    a, b = _session(rng, 1.3, 0.02, 200), _session(rng, 1.0, 0.02, 200)
    c = compare(a, b, drift=0.02)
    assert c.significant and c.verdict == "faster"
    assert c.low < 1.3 < c.high
    assert "drift" in c.method


def test_session_drift_pools_prior_and_pairs() -> None:
    assert session_drift([], prior=0.02) == pytest.approx(0.02)
    rng = np.random.default_rng(5)
    pairs = [
        (math.exp(rng.normal(0, math.log1p(0.05))), math.exp(rng.normal(0, math.log1p(0.05))))
        for _ in range(400)
    ]
    assert session_drift(pairs, prior=0.02) == pytest.approx(0.05, rel=0.15)
    assert session_drift([(1.0, 1.0)] * 2, prior=0.02) < 0.02  # quiet reruns lower it


def test_drift_is_validated() -> None:
    with pytest.raises(ValueError, match="drift"):
        compare([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], drift=-0.1)
