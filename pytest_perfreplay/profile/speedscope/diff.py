"""Diff two profiles by function identity, normalized per replayed call."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .model import (
    _TIME_SCALE,
    FunctionKey,
    SpeedscopeError,
    _append_sample,
    _common_unit,
    _display,
    _document,
    _FrameTable,
    _Profile,
)
from .summary import _Aggregate, _aggregate, _self_and_total, format_weight

# --------------------------------------------------------------------------------------------
# diff


@dataclass(frozen=True)
class DiffRow:
    """Self weight of one function per replayed call, before and after."""

    function: str
    module: str
    old_per_call: float
    new_per_call: float
    delta: float  # new - old
    ratio: float | None  # new / old; None when the function is new
    moved: bool  # |delta| above the noise floor
    # Inclusive (total) weight per call: a function whose callees got faster moves here
    # even when its own self time did not.
    old_total: float = 0.0
    new_total: float = 0.0

    @property
    def total_delta(self) -> float:
        return self.new_total - self.old_total

    @property
    def display(self) -> str:
        return _display((self.module, self.function))


@dataclass(frozen=True)
class Diff:
    """Per-call profile comparison. ``document`` holds profiles "before", "after" (per call),
    "grew" and "shrank" (the per-stack increases/decreases of the functions that moved, as
    positive weights). An empty "grew" or "shrank" holds one placeholder sample named
    "(nothing grew beyond the noise floor)" / "(nothing shrank ...)" whose weight is the noise
    floor, because the speedscope app cannot show a profile with no samples."""

    unit: str
    old_calls: int
    new_calls: int
    old_total_per_call: float
    new_total_per_call: float
    threshold: float
    noise: float  # absolute per-call noise floor = threshold * max(old, new total per call)
    rows: list[DiffRow]  # every function, ranked by |delta|
    grew: list[DiffRow]
    shrank: list[DiffRow]
    document: dict[str, Any] = field(repr=False)
    scaled: bool = False  # totals per call rescaled to the timed medians

    @property
    def total_movers(self) -> list[DiffRow]:
        """Functions whose inclusive time per call moved beyond the noise floor, biggest first."""
        moved = [r for r in self.rows if abs(r.total_delta) > self.noise]
        return sorted(moved, key=lambda r: (-abs(r.total_delta), r.display))

    @property
    def speedup(self) -> float | None:
        """Old total per call / new total per call (> 1 means faster)."""
        return (
            self.old_total_per_call / self.new_total_per_call if self.new_total_per_call else None
        )

    def _fmt(self, value: float) -> str:
        return format_weight(value, self.unit)

    def headline(self) -> str:
        """``before 10.1 ms (100 calls), after 3.38 ms (400 calls) (2.99x faster); noise floor
        202 µs (2%)``, all per replayed call."""
        fmt = self._fmt
        speed = self.speedup
        # A slowdown reads as a factor > 1 too ("3.00x slower", not "0.33x slower").
        verdict = (
            ""
            if not speed
            else f" ({speed:.2f}x faster)"
            if speed >= 1
            else f" ({1 / speed:.2f}x slower)"
        )
        scale = (
            "; profile shares at the timed medians"
            if self.scaled
            else "; profiler time (sampled, inflated by the profiler; no timed medians known)"
        )
        return (
            f"before {fmt(self.old_total_per_call)} ({self.old_calls} calls), after "
            f"{fmt(self.new_total_per_call)} ({self.new_calls} calls){verdict}; noise floor "
            f"{fmt(self.noise)} ({self.threshold:.0%}){scale}"
        )

    def mover_lines(self, top: int = 5) -> list[str]:
        """The ``top`` functions that moved beyond the noise floor, biggest change first."""
        movers = [r for r in self.rows if r.moved][:top]
        if not movers and not self.total_movers:
            return ["  no function moved beyond the noise floor"]
        out = []
        if movers:
            out.append(f"  {'change':>9}  {'before':>9} -> {'after':<9} {'ratio':>6}  function")
            for row in movers:
                out.append(self._row(row.delta, row.old_per_call, row.new_per_call, row.display))
        out.extend(self.total_mover_lines(top))
        return out

    def _row(self, delta: float, before: float, after: float, display: str) -> str:
        ratio = "new" if not before else f"{after / before:.2f}x"
        sign = "+" if delta > 0 else "-"
        return (
            f"  {sign + self._fmt(abs(delta)):>9}  {self._fmt(before):>9} -> "
            f"{self._fmt(after):<9} {ratio:>6}  {display}"
        )

    def total_mover_lines(self, top: int = 5) -> list[str]:
        """Movers by inclusive time per call (self plus callees), biggest change first."""
        movers = self.total_movers[:top]
        if not movers:
            return []
        out = [f"  {'total':>9}  {'before':>9} -> {'after':<9} {'ratio':>6}  function (by total)"]
        for row in movers:
            out.append(self._row(row.total_delta, row.old_total, row.new_total, row.display))
        return out

    def lines(self, top: int = 5) -> list[str]:
        fmt = self._fmt
        out = [f"per call: {self.headline()}"]
        for title, rows in (("shrank", self.shrank), ("grew", self.grew)):
            if not rows:
                out.append(f"  {title}: nothing beyond the noise floor")
                continue
            out.append(f"  {title}:")
            for row in rows[:top]:
                ratio = "new" if row.ratio is None else f"{row.ratio:.2f}x"
                out.append(
                    f"    {'+' if row.delta > 0 else '-'}{fmt(abs(row.delta))}  "
                    f"{fmt(row.old_per_call)} -> {fmt(row.new_per_call)} ({ratio})  {row.display}"
                )
        unchanged = len(self.rows) - len(self.grew) - len(self.shrank)
        out.append(f"  {unchanged} function(s) unchanged within the noise floor (self time)")
        by_total = self.total_mover_lines(top)
        out.extend(by_total or ["  by total time: nothing beyond the noise floor"])
        return out


def _divisor(agg: _Aggregate, calls: int, per_call: float | None, unit: str) -> float:
    """What to divide weights by: the call count, or what makes the total match ``per_call``."""
    if per_call is None or per_call <= 0 or unit not in _TIME_SCALE or agg.total <= 0:
        return float(calls)
    return agg.total / (per_call / _TIME_SCALE[unit])


def diff(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    old_calls: int,
    new_calls: int,
    threshold: float = 0.02,
    name: str,
    exporter: str,
    old_per_call: float | None = None,
    new_per_call: float | None = None,
) -> Diff:
    """Compare two profiles of the same target per replayed call.

    Functions are matched by :func:`function_key`. Weights are divided by the number of replayed
    calls, so a loop that ran for a fixed time (more calls once the code got faster) cannot make
    an unchanged function look slower. A function moves only if its |self delta per call| exceeds
    ``threshold * max(old total per call, new total per call)``.

    ``old_per_call``/``new_per_call`` (seconds; the *timed* medians) rescale each profile so its
    total per call equals that figure: a sampling profiler's own overhead varies from run to
    run, so the profile is trusted for shares and the timing for scale.
    """
    if old_calls <= 0 or new_calls <= 0:
        raise SpeedscopeError("diff: old_calls and new_calls must be positive")
    before, after = _aggregate(old), _aggregate(new)
    unit = _common_unit((before.unit, after.unit))
    if before.unit != unit:
        before = _aggregate(old, unit)
    if after.unit != unit:
        after = _aggregate(new, unit)
    if not before.samples or not after.samples:
        raise SpeedscopeError("diff: both profiles need samples")
    old_div = _divisor(before, old_calls, old_per_call, unit)
    new_div = _divisor(after, new_calls, new_per_call, unit)
    old_own, old_incl = _self_and_total((s, w / old_div) for s, w in before.samples)
    new_own, new_incl = _self_and_total((s, w / new_div) for s, w in after.samples)
    old_total, new_total = before.total / old_div, after.total / new_div
    noise = threshold * max(old_total, new_total)

    rows: list[DiffRow] = []
    for key in dict.fromkeys([*old_own, *new_own, *old_incl, *new_incl]):
        o, n = old_own.get(key, 0.0), new_own.get(key, 0.0)
        rows.append(
            DiffRow(
                key[1],
                key[0],
                o,
                n,
                n - o,
                n / o if o else None,
                abs(n - o) > noise,
                old_incl.get(key, 0.0),
                new_incl.get(key, 0.0),
            )
        )
    rows.sort(key=lambda r: (-abs(r.delta), r.display))
    grew = [r for r in rows if r.moved and r.delta > 0]
    shrank = [r for r in rows if r.moved and r.delta < 0]

    frames = {**before.frames, **after.frames}  # newest file/line wins for display
    table = _FrameTable()
    index = {key: table.add(frame) for key, frame in frames.items()}

    def per_stack(agg: _Aggregate, calls: float) -> dict[tuple[FunctionKey, ...], float]:
        out: dict[tuple[FunctionKey, ...], float] = {}
        for stack, weight in agg.samples:
            out[stack] = out.get(stack, 0.0) + weight / calls
        return out

    def as_profile(
        label: str, samples: Iterable[tuple[tuple[FunctionKey, ...], float]]
    ) -> _Profile:
        profile = _Profile(label, unit, [], [])
        for stack, weight in samples:
            if weight > 0:
                _append_sample(
                    profile.stacks, profile.weights, tuple(index[k] for k in stack), weight
                )
        return profile

    old_stacks, new_stacks = per_stack(before, old_div), per_stack(after, new_div)
    deltas = {
        s: new_stacks.get(s, 0.0) - old_stacks.get(s, 0.0)
        for s in dict.fromkeys([*old_stacks, *new_stacks])
    }
    grew_keys = {(r.module, r.function) for r in grew}
    shrank_keys = {(r.module, r.function) for r in shrank}
    profiles = [
        as_profile("before", ((s, w / old_div) for s, w in before.samples)),
        as_profile("after", ((s, w / new_div) for s, w in after.samples)),
        as_profile("grew", ((s, d) for s, d in deltas.items() if d > 0 and s[-1] in grew_keys)),
        as_profile(
            "shrank", ((s, -d) for s, d in deltas.items() if d < 0 and s[-1] in shrank_keys)
        ),
    ]
    for profile, verb in ((profiles[2], "grew"), (profiles[3], "shrank")):
        if not profile.stacks:
            placeholder = table.add({"name": f"(nothing {verb} beyond the noise floor)"})
            profile.stacks.append((placeholder,))
            profile.weights.append(noise if noise > 0 else 1.0)
    document = _document(name=name, exporter=exporter, frames=table.frames, profiles=profiles)
    return Diff(
        unit=unit,
        old_calls=old_calls,
        new_calls=new_calls,
        old_total_per_call=old_total,
        new_total_per_call=new_total,
        scaled=old_per_call is not None and new_per_call is not None,
        threshold=threshold,
        noise=noise,
        rows=rows,
        grew=grew,
        shrank=shrank,
        document=document,
    )
