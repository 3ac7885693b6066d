"""``perfreplay history TARGET``: the iterations of the loop for one target, and a chart."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from ..errors import PerfReplayError
from ..replay.history import Entry, Ledger
from ..replay.stats import Comparison, compare
from ..snapshot.store import Store, target_slug


def register(sub: Any) -> None:
    p = sub.add_parser(
        "history",
        help="the iteration table of the loop for a target",
        description="One row per replay run of each snapshot of TARGET: estimate, interval, "
        "precision, and the change against the previous and the first iteration.",
    )
    p.add_argument("target", help="module:qualname, or a snapshot id")
    p.add_argument(
        "--store", default=None, help="store folder (default $PERFREPLAY_STORE or .perfreplay)"
    )
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        type=Path,
        default=None,
        help="also draw the estimate with its interval over iterations (needs matplotlib)",
    )
    p.set_defaults(func=run)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.4g}" if math.isfinite(seconds) else "inf"


def _change(c: Comparison | None) -> str:
    if c is None:
        return "-"
    if not c.significant:
        return f"~ ({c.ratio:.3g}x)"
    ratio = c.ratio if c.verdict == "faster" else 1 / c.ratio
    return f"{ratio:.3g}x {c.verdict}"


def _compare(a: Entry, b: Entry) -> Comparison | None:
    if not a.samples or not b.samples or a.unit != b.unit:
        return None
    est = b.estimator if b.estimator in ("median", "mean", "min") else "median"
    return compare(a.samples, b.samples, estimator=est)  # type: ignore[arg-type]


def table(entries: list[Entry]) -> list[str]:
    head = (
        f"  {'iter':>4}  {'when':<16} {'commit':<13} {'estimate ms':>11}  "
        f"{'interval ms':<19} {'prec':>7}  {'rounds':>6}  {'target':<6}  "
        f"{'vs previous':<15} {'vs first':<15}"
    )
    lines = [head]
    for i, e in enumerate(entries):
        commit = (e.commit or "-") + ("*" if e.dirty else "")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.time))
        timed = [x for x in entries[:i] if x.unit == e.unit]  # comparable: same unit only
        prev = _compare(timed[-1], e) if timed else None
        first = _compare(timed[0], e) if len(timed) > 1 else None
        if e.unit != "seconds":  # a count, not a time: its own unit, never compared
            lines.append(
                f"  {e.iteration:>4}  {when:<16} {commit:<13} {e.estimate:>11,.0f}  "
                f"{e.unit} per call, spread over {e.processes} processes "
                f"{_count_spread(e):.4%} (deterministic)"
            )
            continue
        lines.append(
            f"  {e.iteration:>4}  {when:<16} {commit:<13} {_ms(e.estimate):>11}  "
            f"{'[' + _ms(e.low) + ', ' + _ms(e.high) + ']':<19} {e.precision:>7.2%}  "
            f"{e.rounds:>6}  {'met' if e.target_met else 'MISSED':<6}  "
            f"{_change(prev):<15} {_change(first):<15}"
        )
    return lines


def _count_spread(e: Entry) -> float:
    values = e.group_estimates or [e.estimate]
    return (max(values) - min(values)) / e.estimate if e.estimate else 0.0


def _bar(seconds: float) -> float:
    return max(0.0, seconds * 1e3) if math.isfinite(seconds) else 0.0


def plot(ledgers: list[tuple[str, list[Entry]]], out: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PerfReplayError(
            "--plot needs matplotlib, which is not installed: pip install "
            "'pytest-perfreplay[plot]' (or pip install matplotlib)"
        ) from None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, all_entries in ledgers:
        entries = [e for e in all_entries if e.unit == "seconds"]  # counts are not ms
        xs = [e.iteration for e in entries]
        ys = [e.estimate * 1e3 for e in entries]
        lower = [
            max(0.0, (e.estimate - e.low) * 1e3) if math.isfinite(e.low) else 0.0 for e in entries
        ]
        upper = [
            max(0.0, (e.high - e.estimate) * 1e3) if math.isfinite(e.high) else 0.0 for e in entries
        ]
        ax.errorbar(xs, ys, yerr=[lower, upper], marker="o", capsize=4, label=name)
        for e in entries:
            if not e.target_met:
                ax.annotate("missed", (e.iteration, e.estimate * 1e3), fontsize=7)
    ax.set_xlabel("iteration")
    ax.set_ylabel("estimate (ms), with its confidence interval")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if len(ledgers) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    store = Store.from_env(args.store)
    folder = store.history_dir / target_slug(args.target)
    ledgers = (
        sorted(folder.glob("*.jsonl"))
        if folder.is_dir()
        else sorted(store.history_dir.glob(f"*/{args.target}*.jsonl"))
    )
    if not ledgers:
        print(f"no history for {args.target!r} under {store.history_dir}")
        return 1
    drawn: list[tuple[str, list[Entry]]] = []
    for path in ledgers:
        entries = Ledger(path).entries()
        if not entries:
            continue
        print(f"{entries[0].target} [snapshot {path.stem}]")
        for line in table(entries):
            print(line)
        drawn.append((path.stem, entries))
    if args.plot is not None and drawn:
        plot(drawn, args.plot, drawn[0][1][0].target)
        print(f"plot: {args.plot}")
    return 0
