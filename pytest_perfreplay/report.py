"""The terminal summary, built as lines; ``plugin.py`` only writes them."""

from __future__ import annotations

from pathlib import Path

from .items import ItemOutcome, ReplaySession


def _fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.4g} {unit}"
    return f"{seconds / 1e-9:.4g} ns"


def header_line(state: ReplaySession, count: int) -> str:
    cfg = state.config
    return (
        f"perfreplay: store {state.store.root}, {count} snapshot(s), target "
        f"±{cfg.precision:.2%} of the {cfg.estimator} at {cfg.confidence:.0%} confidence, "
        f"budget {cfg.max_time:g} s per snapshot"
    )


def outcome_lines(o: ItemOutcome, cwd: Path) -> list[str]:
    title = f"{o.target} [{o.snapshot_id}]"
    lines = [title + (f"  iteration {o.iteration}" if o.iteration else "")]
    if o.error:
        lines.append(f"  FAILED: {o.error}")
    r = o.rounds
    if r is not None:
        iv = r.interval
        status = "target met" if r.target_met else f"TARGET MISSED ({r.stop_reason})"
        lines.append(
            f"  {iv.estimator} {_fmt_time(iv.estimate)}  "
            f"{iv.confidence:.0%} CI [{_fmt_time(iv.low)} – {_fmt_time(iv.high)}]  "
            f"precision ±{r.precision:.2%} ({status})"
        )
        lines.append(
            f"  rounds {r.rounds} after {len(r.warmup)} warmup, {r.elapsed:.1f} s, "
            f"gc={r.policy.gc}, stopped on {r.stop_reason}"
        )
    if o.vs_previous is not None:
        lines.append(f"  vs previous: {o.vs_previous.describe()}")
    if o.vs_first is not None:
        lines.append(f"  vs first:    {o.vs_first.describe()}")
    if o.result_check:
        lines.append(f"  result: {o.result_check}")
    if o.mutated:
        lines.append("  note: the call mutates its arguments (fresh arguments every round)")
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
    for o in state.outcomes:
        lines.extend(outcome_lines(o, cwd))
    missed = [o for o in state.outcomes if o.rounds is not None and not o.rounds.target_met]
    if missed:
        lines.append(
            f"{len(missed)} snapshot(s) missed the precision target: raise "
            "--perf-replay-max-time, or run on a quieter machine (--perf-replay-strict fails them)"
        )
    lines.append(
        f"history: {_rel(state.store.history_dir, cwd)}"
        + (f"; profiles: {_rel(state.store.profiles_dir, cwd)}" if state.config.profiler else "")
        + "; open a profile with `perfreplay open FILE`"
    )
    return lines
