"""Aggregate a profile per function: self and total time, top functions, flatness."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .model import (
    _TIME_SCALE,
    ALL_THREADS,
    FLAT_THRESHOLD,
    Frame,
    FunctionKey,
    SpeedscopeError,
    _common_unit,
    _display,
    _parse,
    _scale,
    function_key,
    is_library_frame,
)

# --------------------------------------------------------------------------------------------
# aggregation


@dataclass
class _Aggregate:
    """Samples of one document as (function-key stack, weight), in one unit."""

    unit: str
    samples: list[tuple[tuple[FunctionKey, ...], float]]  # one entry per distinct stack
    frames: dict[FunctionKey, Frame]
    count: int = 0  # samples in the input

    @property
    def total(self) -> float:
        return math.fsum(w for _, w in self.samples)


def _aggregate(doc: Mapping[str, Any], unit: str | None = None) -> _Aggregate:
    parsed = _parse(doc)
    # A merged file repeats every sample in "all threads"; count them once.
    chosen = [p for p in parsed.profiles if p.name == ALL_THREADS] or parsed.profiles
    target = unit or _common_unit(p.unit for p in chosen)
    keys = [function_key(f) for f in parsed.frames]
    frames: dict[FunctionKey, Frame] = {}
    for key, frame in zip(keys, parsed.frames, strict=True):
        frames.setdefault(key, frame)
    sums: dict[tuple[int, ...], float] = {}
    count = 0
    for profile in chosen:
        factor = _scale(profile.unit, target)
        for stack, weight in zip(profile.stacks, profile.weights, strict=True):
            if stack and math.isfinite(weight) and weight > 0:
                sums[stack] = sums.get(stack, 0.0) + weight * factor
                count += 1
    by_keys: dict[tuple[FunctionKey, ...], float] = {}
    for stack, weight in sums.items():
        key_stack = tuple(keys[f] for f in stack)
        by_keys[key_stack] = by_keys.get(key_stack, 0.0) + weight
    return _Aggregate(target, list(by_keys.items()), frames, count)


def _self_and_total(
    samples: Iterable[tuple[tuple[FunctionKey, ...], float]],
) -> tuple[dict[FunctionKey, float], dict[FunctionKey, float]]:
    own: dict[FunctionKey, float] = {}
    total: dict[FunctionKey, float] = {}
    for stack, weight in samples:
        own[stack[-1]] = own.get(stack[-1], 0.0) + weight
        for key in set(stack):  # once per sample, even under recursion
            total[key] = total.get(key, 0.0) + weight
    return own, total


def format_weight(value: float, unit: str) -> str:
    """Human-readable weight: ``12.3 ms``, ``4.00 KiB``, ``17``."""
    if unit in _TIME_SCALE:
        seconds = value * _TIME_SCALE[unit]
        magnitude = abs(seconds)
        for limit, suffix, scale in ((1.0, "s", 1.0), (1e-3, "ms", 1e3), (1e-6, "µs", 1e6)):
            if magnitude >= limit:
                return f"{seconds * scale:.3g} {suffix}"
        return f"{seconds * 1e9:.3g} ns"
    if unit == "bytes":
        for limit, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(value) >= limit:
                return f"{value / limit:.3g} {suffix}"
        return f"{value:.0f} B"
    return f"{value:.4g}"


@dataclass(frozen=True)
class SummaryRow:
    function: str
    module: str
    self_weight: float
    total_weight: float
    self_share: float
    total_share: float

    @property
    def display(self) -> str:
        return _display((self.module, self.function))


@dataclass(frozen=True)
class Summary:
    """Where the time goes. Shares are fractions of ``total`` (0..1)."""

    total: float
    unit: str
    samples: int
    rows: list[SummaryRow]  # every function, ranked by self share
    by_self: list[SummaryRow]  # top N by self share
    by_total: list[SummaryRow]  # top N by total share (callers included)
    user_share: float  # self time in user code
    library_share: float  # self time in installed packages, the stdlib, native or unknown code
    flatness: float  # top self share; low means no single function dominates

    @property
    def is_flat(self) -> bool:
        return self.flatness < FLAT_THRESHOLD

    def headline(self) -> str:
        return (
            f"{format_weight(self.total, self.unit)} sampled; user code {self.user_share:.0%}, "
            f"libraries {self.library_share:.0%}; top self share {self.flatness:.1%}"
            + (" (flat: no single function dominates)" if self.is_flat else "")
        )

    def table(self, *, by_total: bool = False) -> list[str]:
        """One ranking (by self time unless ``by_total``), with both shares per function."""
        rows = self.by_total if by_total else self.by_self
        out = [f"  {'self':>6} {'total':>6}  function (by {'total' if by_total else 'self'} time)"]
        out += [f"  {r.self_share:>6.1%} {r.total_share:>6.1%}  {r.display}" for r in rows]
        return out

    def lines(self, *, by_total: bool = False) -> list[str]:
        """Headline and the self-time ranking; ``by_total`` adds the total-time ranking."""
        out = [f"profile: {self.headline()}", *self.table()]
        if by_total:
            out += self.table(by_total=True)
        return out


def summarize(
    doc: Mapping[str, Any],
    *,
    top: int = 5,
    is_user_code: Callable[[Frame], bool] | None = None,
) -> Summary:
    """Top functions by self and total time, user vs library share, and flatness.

    Uses every profile, or only ``"all threads"`` in a :func:`merge` output (which repeats the
    others). ``is_user_code`` defaults to "not :func:`is_library_frame`".
    """
    agg = _aggregate(doc)
    if not agg.samples:
        raise SpeedscopeError("summarize: the profile has no samples")
    user = is_user_code or (lambda frame: not is_library_frame(frame))
    own, total = _self_and_total(agg.samples)
    grand = agg.total
    rows = sorted(
        (
            SummaryRow(
                function=key[1],
                module=key[0],
                self_weight=own.get(key, 0.0),
                total_weight=total[key],
                self_share=own.get(key, 0.0) / grand,
                total_share=total[key] / grand,
            )
            for key in total
        ),
        key=lambda r: (-r.self_weight, -r.total_weight, r.display),
    )
    user_weight = math.fsum(w for key, w in own.items() if user(agg.frames[key]))
    library_weight = math.fsum(w for key, w in own.items() if not user(agg.frames[key]))
    # Each share from its own sum (1 - user would print "-0%"), clamped against float dust.
    user_share = min(1.0, user_weight / grand)
    library_share = min(1.0, max(0.0, library_weight / grand))
    return Summary(
        total=grand,
        unit=agg.unit,
        samples=agg.count,
        rows=rows,
        by_self=rows[:top],
        by_total=sorted(rows, key=lambda r: (-r.total_weight, -r.self_weight, r.display))[:top],
        user_share=user_share,
        library_share=library_share,
        flatness=rows[0].self_share if rows else 0.0,
    )
