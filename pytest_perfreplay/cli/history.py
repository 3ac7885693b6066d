"""``perfreplay history TARGET``: the iterations of the loop for one target, and a chart."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from ..errors import PerfReplayError
from ..replay.history import Entry, Ledger
from ..snapshot.store import Store, target_slug


def register(sub: Any) -> None:
    p = sub.add_parser(
        "history",
        help="the iteration table of the loop for a target",
        description="One row per replay run of each snapshot of TARGET: estimate, interval, "
        "precision, and the change against the previous iteration and the first one that met "
        "its precision target, exactly as the run reported them (read from the ledger, never "
        "recomputed; rows recorded before comparisons were kept show '-').",
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
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also print each run's change line as it printed it",
    )
    p.add_argument(
        "--reset-drift",
        action="store_true",
        help="forget the between-session drift learned so far for TARGET's snapshots: later "
        "runs learn it again from reruns of identical code",
    )
    p.set_defaults(func=run)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.4g}" if math.isfinite(seconds) else "inf"


def _change(record: dict[str, Any] | None) -> str:
    """A stored comparison (``ratio = baseline / candidate``), compactly."""
    if not record:
        return "-"
    ratio = float(record.get("ratio", math.nan))
    if not record.get("significant"):
        return f"~ ({ratio:.3g}x)"
    if record.get("verdict") == "slower":
        ratio = 1 / ratio
    return f"{ratio:.3g}x {record.get('verdict')}"


def _paired(record: dict[str, Any] | None) -> str:
    """A paired verdict (``ratio = candidate / baseline``), compactly."""
    if not record:
        return "-"
    ratio = float(record.get("ratio", math.nan))
    rev = record.get("rev", "?")
    if not record.get("significant"):
        return f"~ vs {rev}"
    shown = ratio if ratio >= 1 else 1 / ratio
    return f"{shown:.3g}x {record.get('direction')} vs {rev}"


def table(entries: list[Entry], *, verbose: bool = False) -> list[str]:
    head = (
        f"  {'iter':>4}  {'when':<16} {'commit':<13} {'estimate ms':>11}  "
        f"{'interval ms':<19} {'prec':>7}  {'rounds':>6}  {'target':<6}  "
        f"{'vs previous':<15} {'vs first':<15}"
    )
    paired = any(e.paired for e in entries)
    lines = [head + (" paired" if paired else "")]
    for e in entries:
        commit = (e.commit or "-") + ("*" if e.dirty else "")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.time))
        if e.unit != "seconds":  # a count, not a time: its own unit, never compared
            lines.append(
                f"  {e.iteration:>4}  {when:<16} {commit:<13} {e.estimate:>11,.0f}  "
                f"{e.unit} per call, spread over {e.processes} processes "
                f"{_count_spread(e):.4%} (deterministic)"
            )
            continue
        first = _change(e.vs_first)
        if e.vs_first and "against" in e.vs_first:
            first += f" (#{e.vs_first['against']})"
        lines.append(
            f"  {e.iteration:>4}  {when:<16} {commit:<13} {_ms(e.estimate):>11}  "
            f"{'[' + _ms(e.low) + ', ' + _ms(e.high) + ']':<19} {e.precision:>7.2%}  "
            f"{e.rounds:>6}  {'met' if e.target_met else 'MISSED':<6}  "
            f"{_change(e.vs_previous):<15} {first:<15}"
            + (f" {_paired(e.paired)}" if paired else "")
        )
        if verbose and e.change:
            lines.append(f"        change: {e.change}")
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
    if args.reset_drift:
        for path in ledgers:
            after = Ledger(path).reset_drift()
            print(
                f"drift reset for snapshot {path.stem}: runs after iteration {after} learn it "
                "again from reruns of identical code"
            )
        return 0
    drawn: list[tuple[str, list[Entry]]] = []
    for path in ledgers:
        entries = Ledger(path).entries()
        if not entries:
            continue
        print(f"{entries[0].target} [snapshot {path.stem}]")
        for line in table(entries, verbose=args.verbose):
            print(line)
        drawn.append((path.stem, entries))
    if args.plot is not None and drawn:
        plot(drawn, args.plot, drawn[0][1][0].target)
        print(f"plot: {args.plot}")
    return 0
