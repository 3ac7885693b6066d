"""The terminal summary and live progress, built as lines; ``plugin.py`` only writes them."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

from .session import ItemOutcome, ReplaySession
from .stats import Comparison


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unbounded"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.4g} {unit}"
    return f"{seconds / 1e-9:.4g} ns"


def header_line(state: ReplaySession, count: int) -> str:
    cfg = state.config
    if cfg.measure != "time":
        return (
            f"perfreplay: store {state.store.root}, {count} snapshot(s), measure {cfg.measure} "
            f"per call under valgrind in {max(3, cfg.processes)} processes, gc={cfg.gc}"
        )
    where = "this process" if cfg.processes == 1 else f"{cfg.processes}+ worker processes"
    budget = cfg.max_time
    extra = ""
    if cfg.baseline:
        from .paired import (
            DEFAULT_PAIRED_BUDGET,
            DEFAULT_PROCESS_PAIRS,
            EXTEND,
            EXTEND_CAP,
            FLOOR_CAP,
            FLOOR_WAVES,
        )

        wave = cfg.processes if cfg.processes > 1 else DEFAULT_PROCESS_PAIRS
        where = f"process pairs, {wave} at a time, paired against {cfg.baseline}"
        budget = cfg.max_time if cfg.max_time_explicit else DEFAULT_PAIRED_BUDGET
        if not cfg.max_time_explicit:
            extra = (
                f" (a long call gets at least {FLOOR_WAVES} waves, up to "
                f"{FLOOR_CAP * DEFAULT_PAIRED_BUDGET:g} s; an undecided comparison whose "
                f"estimate lies outside the band runs on to {EXTEND:g}x its waves, up to "
                f"{EXTEND_CAP * DEFAULT_PAIRED_BUDGET:g} s)"
            )
    return (
        f"perfreplay: store {state.store.root}, {count} snapshot(s), target "
        f"±{cfg.precision:.2%} of the {cfg.estimator} at {cfg.confidence:.0%} confidence, "
        f"budget {budget:g} s per snapshot{extra} in {where}, gc={cfg.gc}"
    ) + (
        ""
        if count
        else "\nperfreplay: no snapshots here yet; capture some first, e.g. "
        "`perfreplay run --targets pkg.mod:func -- python -m yourservice`"
    )


def progress_writer(config: pytest.Config) -> Callable[[str], None] | None:
    """Write a progress line during a test without it landing in the captured output.

    The terminal reporter is looked up at write time: at configure time it may not exist yet.
    """
    if config.get_verbosity() < 0:
        return None

    def write(line: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        capman = config.pluginmanager.get_plugin("capturemanager")
        if capman is not None:
            with capman.global_and_fixture_disabled():
                reporter.write_line(line)
        else:
            reporter.write_line(line)

    return write


def _vs(c: Comparison, what: str) -> str:
    if c.significant and c.verdict == "slower":
        r, lo, hi = 1 / c.ratio, 1 / c.high, 1 / c.low
    else:
        r, lo, hi = c.ratio, c.low, c.high
    span = f"{r:.3g}x" + (f" {c.verdict}" if c.significant else "") + f" [{lo:.3g}-{hi:.3g}]"
    if c.significant:
        return f"{span} vs {what}, significant"
    why = ""
    if c.p_value < 1 - c.confidence:  # the test fired, but the interval reaches the dead band
        why = f", not surely beyond the {c.min_effect:.0%} minimum effect"
    return f"no significant change vs {what} ({span}, p={c.p_value:.2g}{why})"


def comparison_line(previous: Comparison | None, first: Comparison | None) -> str | None:
    """``1.32x faster [1.29-1.35] vs previous, significant; 2.1x faster [...] vs first, ...``"""
    parts = []
    if previous is not None:
        parts.append(_vs(previous, "previous"))
    if first is not None:
        parts.append(_vs(first, "first"))
    return "; ".join(parts) if parts else None


def change_text(o: ItemOutcome) -> str | None:
    """The ``change:`` line of an item; the ledger keeps it verbatim for `perfreplay history`."""
    change = comparison_line(o.vs_previous, o.vs_first)
    if not change:
        return None
    allowed = []
    if o.drift:
        allowed.append(f"{o.drift:.1%} drift between sessions")
    if o.machine_move is not None:
        allowed.append(
            f"the machine's {o.machine_move:+.1%} move since previous (reference workload)"
        )
    text = change + (f" (allowing {' and '.join(allowed)})" if allowed else "")
    c = o.vs_previous
    if c is not None and c.detectable > c.min_effect:
        text += (
            f"; between sessions here, changes below ~{c.detectable:.1%} cannot be seen "
            f"(minimum effect {c.min_effect:.0%}): --perf-replay-baseline=REV sees smaller "
            "ones (paired, one session)"
        )
    return text


def outcome_lines(o: ItemOutcome, cwd: Path) -> list[str]:
    title = f"{o.target} [{o.snapshot_id}]"
    lines = [title + (f"  iteration {o.iteration}" if o.iteration else "")]
    if o.error:
        lines.append(f"  FAILED: {o.error}")
    lines.extend(o.measure_lines)
    r = o.rounds
    if r is not None:
        iv = r.interval
        status = "target met" if r.target_met else "TARGET MISSED"
        lines.append(
            f"  {iv.estimator} {_fmt_time(iv.estimate)}  "
            f"{iv.confidence:.0%} CI [{_fmt_time(iv.low)} – {_fmt_time(iv.high)}]  "
            f"±{r.precision:.2%} in-session (target ±{r.policy.target:.2%}: {status})"
        )
        where = f" in {r.processes} processes" if r.processes > 1 else ""
        warm = f"{len(r.warmup)} warmup" + ("" if r.warmup_settled else " (never settled)")
        lines.append(
            f"  {r.rounds} rounds{where} after {warm}, {r.elapsed:.1f} s, gc={r.policy.gc}, "
            f"stopped: {r.stop_reason}"
        )
        if not r.target_met:
            lines.append(
                f"  !! precision target missed: ±{r.precision:.2%} reached, "
                f"±{r.policy.target:.2%} asked; the interval above is honest, just wider"
            )
    if o.paired is not None:
        lines.append(f"  {o.paired.line()}")
    change = change_text(o)
    if change:
        lines.append(f"  change: {change}")
    if o.result_check:
        lines.append(f"  result: {o.result_check}")
    if o.mutated:
        lines.append("  note: the call mutates its arguments (each round got fresh ones)")
    for note in o.notes:
        lines.append(f"  note: {note}")
    if o.profile_path is not None:
        lines.append(f"  profile: {_rel(o.profile_path, cwd)}")
        lines.extend(f"    {line}" for line in o.profile_lines)
    return lines


def _rel(path: Path, cwd: Path) -> str:
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        return str(path)


def summary_lines(state: ReplaySession, cwd: Path) -> list[str]:
    lines: list[str] = []
    if state.config.measure != "time":
        from .deterministic import BLIND_SPOTS

        lines.append(BLIND_SPOTS)
    for o in state.outcomes:
        lines.extend(outcome_lines(o, cwd))
    unsigned = [o for o in state.outcomes if o.unsigned]
    if unsigned:
        lines.append(
            f"!! {len(unsigned)} UNSIGNED snapshot(s) were unpickled without a verified "
            "signature (--perf-replay-allow-unsigned): "
            + ", ".join(f"{o.target} [{o.snapshot_id}]" for o in unsigned)
        )
    standing = [o for o in state.outcomes if o.stand_ins]
    if standing:
        lines.append(
            f"!! {len(standing)} snapshot(s) replayed stand-ins for input that capture could "
            "not scrub (not production's data): "
            + ", ".join(f"{o.target} [{o.snapshot_id}]" for o in standing)
        )
    missed = [o for o in state.outcomes if o.rounds is not None and not o.rounds.target_met]
    if missed:
        lines.append(
            f"!! {len(missed)} snapshot(s) MISSED the precision target: raise "
            "--perf-replay-max-time, try --perf-replay-processes, or run on a quieter machine "
            "(--perf-replay-strict fails them)"
        )
    lines.append(
        f"history: {_rel(state.store.history_dir, cwd)} (`perfreplay history TARGET`)"
        + (f"; profiles: {_rel(state.store.profiles_dir, cwd)}" if state.config.profiler else "")
        + ("; open a profile with `perfreplay open FILE`" if state.config.profiler else "")
    )
    return lines
