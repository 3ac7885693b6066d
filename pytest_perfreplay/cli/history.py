"""``perfreplay history TARGET``: the iterations of the loop for one target."""

from __future__ import annotations

import argparse
from typing import Any

from ..history import Ledger
from ..store import Store, target_slug


def register(sub: Any) -> None:
    p = sub.add_parser("history", help="the iteration table of the loop for a target")
    p.add_argument("target", help="module:qualname, or a snapshot id")
    p.add_argument(
        "--store", default=None, help="store folder (default $PERFREPLAY_STORE or .perfreplay)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    store = Store.from_env(args.store)
    folder = store.history_dir / target_slug(args.target)
    ledgers = (
        sorted(folder.glob("*.jsonl"))
        if folder.is_dir()
        else sorted(store.history_dir.glob(f"*/{args.target}.jsonl"))
    )
    if not ledgers:
        print(f"no history for {args.target!r} under {store.history_dir}")
        return 1
    for path in ledgers:
        entries = Ledger(path).entries()
        print(f"{entries[0].target if entries else args.target} [{path.stem}]")
        print(f"  {'iter':>4}  {'commit':<13} {'estimate':>11}  {'precision':>9}  {'rounds':>6}")
        for e in entries:
            commit = (e.commit or "-") + ("*" if e.dirty else "")
            print(
                f"  {e.iteration:>4}  {commit:<13} {e.estimate * 1e3:>9.3f}ms  "
                f"±{e.precision:>7.2%}  {e.rounds:>6}"
            )
    return 0
