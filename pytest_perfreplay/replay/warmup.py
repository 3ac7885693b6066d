"""When a series of call timings has warmed up: the detector every round loop uses.

Plain Python on purpose: worker processes call it between rounds, and importing numpy
would add ~70 ms to the start-up of every worker (a paired comparison starts dozens).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from statistics import median

#: Samples per half of the detector's comparison.
WARMUP_WINDOW = 5

# A robust-sigma multiple that pure noise rarely exceeds, and a relative floor so that
# timer quantization (MAD of 0) does not turn a 0.1% wobble into "still warming up".
_WARMUP_SIGMAS = 3.0
_WARMUP_REL_FLOOR = 0.005


def detect_warmup(samples: Sequence[float], *, window: int = 5, final: bool = False) -> int | None:
    """Number of leading samples that are warmup, or ``None`` while not yet settled.

    * Noise scale ``sigma``: ``1.4826 * median |successive difference| / sqrt(2)`` over the
      later part of the series (the last ``max(2 * window, n // 2)`` samples). Differences
      are hardly inflated by a smooth trend, and the median ignores a few big steps.
    * Settled (skipped with ``final=True``): the medians of the last two ``window``-long runs
      must not still be falling by more than 3 standard errors of their difference
      (``3 * sigma * sqrt(pi / window)``). Otherwise the timings are still trending down and
      the answer is ``None``.
    * Count: the steady level is the median of the later half (at least ``window`` samples);
      a sample is elevated when it is more than ``3 * sigma`` above it (and at least 0.5%,
      so timer quantization is not mistaken for warmup). The warmup ends at the first
      ``window``-long run whose median is not elevated, extended past any individual
      elevated samples there.

    Pure noise almost always gives 0 (a leading sample beyond 3 sigma is rare, and dropping
    it costs nothing); a decaying start such as ``50, 30, 20, 12, 10, 10, ...`` gives the
    count of its elevated samples. ``final=True`` is for when no more samples are coming (a
    budget ran out, or a look back over a long series): it always answers, 0 for ``window``
    samples or fewer. At least one sample is always left after the warmup.
    """
    if not isinstance(window, int) or isinstance(window, bool) or window < 2:
        raise ValueError(f"window must be an integer >= 2, got {window!r}")
    x = [float(v) for v in samples]
    n = len(x)
    if n < 2 * window and (not final or n <= window):
        return 0 if final else None
    recent = x[-max(2 * window, n // 2) :]
    scale = 1.4826 / math.sqrt(2) * median(abs(b - a) for a, b in itertools.pairwise(recent))
    level = median(x[-max(window, n // 2) :])
    floor = _WARMUP_REL_FLOOR * abs(level)
    if not final:
        older = median(x[-2 * window : -window])
        newest = median(x[-window:])
        if older - newest > max(_WARMUP_SIGMAS * scale * math.sqrt(math.pi / window), floor):
            return None
    threshold = level + max(_WARMUP_SIGMAS * scale, floor)
    # The first calm run is usually among the first few: stop there, not after all n.
    w = next(
        (i for i in range(n - window + 1) if median(x[i : i + window]) <= threshold),
        n - window,
    )
    while w < n - 1 and x[w] > threshold:
        w += 1
    return w
