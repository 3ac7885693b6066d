"""The ``perfreplay`` command. Each command group lives in its own module with a
``register(subparsers)`` function; this module only assembles them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from .._version import __version__
from ..errors import PerfReplayError


def _command_modules() -> list[ModuleType]:
    from . import history, keys, profile, remote, run, store

    return [store, keys, remote, run, history, profile]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perfreplay",
        description="Inspect captured snapshots, their replay history and their profiles.",
    )
    parser.add_argument("--version", action="version", version=f"pytest-perfreplay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _command_modules():
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except PerfReplayError as exc:
        print(f"perfreplay: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
