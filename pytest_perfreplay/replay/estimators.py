"""The estimators a series of rounds can be summed up by (:mod:`.stats` computes them).

Apart from ``stats`` so that a worker process checks a round policy without numpy.
"""

from __future__ import annotations

from typing import Literal, get_args

Estimator = Literal["median", "mean", "min"]
ESTIMATORS: tuple[str, ...] = get_args(Estimator)
