"""Glue between a snapshot item and a paired comparison: timing, reports, the CI gate.

``items.py`` calls these few functions; the comparison itself lives in :mod:`.paired`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from .paired import (
    DEFAULT_PAIRED_BUDGET,
    EXTEND,
    EXTEND_CAP,
    FLOOR_CAP,
    FLOOR_WAVES,
    PairedError,
    PairedPolicy,
    compare_with_baseline,
)
from .pairstats import PooledLogRatio
from .rounds import RoundPolicy, RoundsResult
from .session import ItemOutcome, ReplayFailure, ReplaySession
from .stats import estimate, group_interval, interval

if TYPE_CHECKING:
    from .config import ReplayConfig


class GateFailure(ReplayFailure):
    """``--perf-replay-fail-slower`` failed the item; its measurement is still reported."""


def paired_policy_for(cfg: ReplayConfig, policy: RoundPolicy) -> PairedPolicy:
    """The paired loop's policy from the session's settings. The default budget gives a
    long call a floor of waves and lets an undecided comparison outside the band run on;
    a budget the user set is kept as given."""
    default = not cfg.max_time_explicit
    return PairedPolicy(
        process_pairs=cfg.processes if cfg.processes > 1 else PairedPolicy.process_pairs,
        max_time=DEFAULT_PAIRED_BUDGET if default else policy.max_time,
        floor_waves=FLOOR_WAVES if default else 0,
        hard_cap=FLOOR_CAP * DEFAULT_PAIRED_BUDGET if default else math.inf,
        extend=EXTEND if default else 1.0,
        extend_cap=EXTEND_CAP * DEFAULT_PAIRED_BUDGET if default else math.inf,
        max_letters=policy.max_rounds,
        confidence=policy.confidence,
        min_effect=cfg.min_effect,
    )


def time_paired(
    state: ReplaySession,
    outcome: ItemOutcome,
    *,
    snapshot_path: Path,
    target: str,
    captured_target: str,
    policy: RoundPolicy,
    why_not_workers: str | None,
    write: Callable[[str], None] | None,
) -> RoundsResult | None:
    """Time the snapshot paired against the baseline; None when the target is new there.

    The returned rounds are the candidate's letters (seconds per call), so pytest-benchmark
    and the ledger keep their usual figures; the verdict goes to ``outcome.paired``.
    """
    cfg, baseline = state.config, state.baseline
    assert baseline is not None
    if why_not_workers is not None:
        raise ReplayFailure(
            f"perfreplay cannot compare with {baseline.rev}: the comparison runs in worker "
            f"processes, and {why_not_workers}"
        )
    paired_policy = paired_policy_for(cfg, policy)

    def on_look(process_pairs: int, pooled: PooledLogRatio, elapsed: float) -> None:
        if write is not None and elapsed >= 3.0:
            write(
                f"perfreplay {target}: paired vs {baseline.rev}, {process_pairs} process pairs, "
                f"{pooled.pairs} pairs, "
                f"{pooled.ratio:.3f}x [{pooled.ratio_low:.3f}-{pooled.ratio_high:.3f}] "
                f"after {elapsed:.0f} s"
            )

    profile_settings = None
    if cfg.profiler:
        profile_settings = {
            "profiler": cfg.profiler,
            "rate": cfg.profile_rate,
            "min_samples": cfg.profile_samples,
            "profiles_dir": str(state.store.profiles_dir / f"baseline-{baseline.sha[:12]}"),
            "native": cfg.profile_native,
            "gil": cfg.profile_gil,
            "idle": cfg.profile_idle,
            "nonblocking": cfg.profile_nonblocking,
            "diff_threshold": cfg.profile_diff_threshold,
        }
    try:
        done = compare_with_baseline(
            baseline=baseline,
            snapshot_path=snapshot_path,
            store=state.store.root,
            allow_unsigned=cfg.allow_unsigned,
            target=target,
            captured_target=captured_target,
            policy=paired_policy,
            gc=policy.gc,
            on_look=on_look,
            profile_settings=profile_settings,
        )
    except PairedError as exc:
        raise ReplayFailure(f"perfreplay {exc}") from None
    if done.verdict is None or done.run is None:
        outcome.notes.append(f"{done.new_at_rev}; timed the candidate alone")
        return None
    outcome.paired = done.verdict
    outcome.paired_profile = done.profile
    run = done.run
    samples = [x for side in run.candidate for x in side]
    iv = interval(samples, policy.estimator, policy.confidence)
    groups = [g for g in run.candidate if g]
    if len(groups) >= 2:
        iv = group_interval(groups, policy.estimator, policy.confidence)
    outcome.notes.append(
        f"paired: {run.calls_per_letter} call(s) per round (their median is the round's "
        f"time), stopped: {run.stop_reason} "
        f"({run.looks} look(s), {run.elapsed:.1f} s)"
    )
    return RoundsResult(
        samples=tuple(samples),
        warmup=(),
        interval=iv,
        target_met=iv.precision <= policy.target,
        stop_reason=run.stop_reason,
        elapsed=run.elapsed,
        policy=policy,
        warmup_settled=all(b["settled"] and c["settled"] for b, c in run.warm),
        processes=len(groups),
        groups=tuple(len(g) for g in groups),
        group_estimates=tuple(estimate(g, policy.estimator) for g in groups),
    )


def report_paired(item: pytest.Item, benchmark: Any, outcome: ItemOutcome) -> None:
    """``extra_info["paired"]`` for pytest-benchmark, JUnit properties for CI."""
    v = outcome.paired
    if v is None:
        return
    benchmark.extra_info["paired"] = asdict(v)
    item.user_properties.extend(
        [
            ("perfreplay_baseline", f"{v.rev} {v.sha}"),
            ("perfreplay_ratio", f"{v.ratio:.6g}"),
            ("perfreplay_interval", f"{v.low:.6g} {v.high:.6g}"),
            ("perfreplay_verdict", v.direction if v.significant else "no significant change"),
            ("perfreplay_line", v.line()),
        ]
    )


def baseline_profile(outcome: ItemOutcome) -> tuple[Any, float] | None:
    """The baseline's profile as a "previous" for the profile diff, and today's per-call
    time: the baseline's, times the paired ratio (so unchanged code shows no movers)."""
    v, prof = outcome.paired, outcome.paired_profile
    if v is None or not prof or not prof.get("path"):
        return None
    previous = SimpleNamespace(
        profile=prof["path"],
        profile_calls=prof.get("calls"),
        estimate=prof["median"],
        iteration=f"{v.rev} ({v.sha[:12]})",
    )
    # Without a significant change the paired verdict says "same": scale both sides alike.
    return previous, float(prof["median"]) * (v.ratio if v.significant else 1.0)


def gate(outcome: ItemOutcome, fail_slower: float | None) -> None:
    """``--perf-replay-fail-slower=PCT``: fail the item on a significant slowdown beyond PCT."""
    v = outcome.paired
    if v is not None and v.gate(fail_slower):
        raise GateFailure(f"perf gate (--perf-replay-fail-slower={fail_slower:g}%): {v.line()}")


def step_summary(state: ReplaySession) -> str | None:
    """A Markdown table of the paired verdicts, for ``$GITHUB_STEP_SUMMARY``."""
    rows = [o for o in state.outcomes if o.paired is not None]
    if not rows or state.baseline is None:
        return None
    fail = state.config.fail_slower
    b = state.baseline
    lines = [
        f"### perfreplay: paired comparison vs `{b.rev}` ({b.sha[:12]})",
        "",
        "| snapshot | ratio (candidate / baseline) | interval | verdict | gate |",
        "| --- | --- | --- | --- | --- |",
    ]
    for o in rows:
        v = o.paired
        assert v is not None
        verdict = f"{v.direction}, significant" if v.significant else "no significant change"
        gated = "FAIL" if v.gate(fail) else ("pass" if fail is not None else "-")
        lines.append(
            f"| `{o.target}` [{o.snapshot_id}] | {v.ratio:.3f}x | {v.low:.3f}-{v.high:.3f} "
            f"| {verdict} | {gated} |"
        )
    lines.append("")
    lines.append(
        f"{rows[0].paired.method if rows[0].paired else ''}; minimum effect "
        f"{state.config.min_effect:g}%"
        + (f"; gate fails beyond {fail:g}% slower" if fail is not None else "")
    )
    return "\n".join(lines) + "\n"


def write_step_summary(state: ReplaySession) -> None:
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    text = step_summary(state)
    if not path or text is None:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
