"""The paired verdict: one frozen record of "candidate against baseline", whatever the unit.

It goes into pytest-benchmark's JSON as ``extra_info["paired"]`` (``dataclasses.asdict``)
and into the history ledger under ``"paired"``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PairedVerdict:
    ratio: float  # candidate / baseline (> 1: the candidate is slower)
    low: float
    high: float  # interval of the ratio
    confidence: float
    significant: bool  # the interval clears the min-effect band
    equivalent: bool  # the interval sits inside the band
    direction: str  # "slower" | "faster" | "same"
    unit: str  # "seconds" | "instructions" | "cycles"
    deterministic: bool  # True for instruction and cycle counts
    method: str
    rev: str  # what the user gave
    sha: str  # the resolved commit
    process_pairs: int
    pairs: int
    min_effect: float

    def line(self) -> str:
        where = f"paired, same session, {self.process_pairs} process pairs, {self.pairs} pairs"
        if not self.significant:
            return f"no significant change vs {self.rev} ({where})"
        r, lo, hi = self.ratio, self.low, self.high
        if self.direction == "faster":
            r, lo, hi = 1 / r, 1 / hi, 1 / lo
        return (
            f"change: {r:.3f}x {self.direction} [{lo:.3f}-{hi:.3f}] vs {self.rev} ({where}), "
            "significant"
        )
