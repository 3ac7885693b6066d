"""``perfreplay pull URL``: copy a remote store into the local cache, verifying every file."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..snapshot.remote import RemoteStore, default_cache, is_remote, parse_since
from ..snapshot.store import STORE_ENV, Store


def _since(text: str) -> float:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pull",
        help="copy a remote store (s3://…, gs://…) into the local cache, verifying every file",
        description=(
            "Download the snapshots of a remote store into a local store, checking each "
            "signature first (set PERFREPLAY_KEY to the fleet's key). Files already present "
            "are skipped, so pulling again is incremental."
        ),
    )
    p.add_argument(
        "url",
        nargs="?",
        default=None,
        help=f"remote store URL, e.g. s3://bucket/prefix (default ${STORE_ENV})",
    )
    p.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="TARGET",
        help="only this target (module:qualname); repeat for more",
    )
    p.add_argument(
        "--since",
        type=_since,
        default=None,
        metavar="WHEN",
        help="only snapshots captured since WHEN: a duration ago (30m, 2h, 7d) or an ISO date",
    )
    p.add_argument(
        "--into",
        default=None,
        metavar="DIR",
        help="local store folder (default .perfreplay/remote/<url>, the replay cache)",
    )
    p.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="also keep unsigned snapshots (only if you trust everyone who can write there)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get(STORE_ENV, "")
    if not is_remote(url):
        raise StoreError(
            f"{url!r} is not a remote store URL; expected s3://bucket/prefix, gs://bucket/prefix "
            f"or another fsspec URL (argument or ${STORE_ENV})"
        )
    remote = RemoteStore.from_url(url)
    remote.check()
    dest = Store(Path(args.into) if args.into else default_cache(url))
    report = remote.pull(
        dest, targets=args.target, since=args.since, allow_unsigned=args.allow_unsigned
    )
    for line in report.lines():
        print(line)
    if report.new or report.present:
        print(f"replay with: pytest --perf-replay --perf-replay-store {dest.root}")
    return 0 if report.ok else 1
