"""``perfreplay run [--targets T] -- CMD...``: capture by dotted name without editing code."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import PerfReplayError

BOOT = Path(__file__).resolve().parent.parent / "capture" / "_boot"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run a Python command with capture on for functions named by dotted path",
        description=(
            "Run CMD (a Python program) with capture enabled and the functions named in "
            "--targets or $PERFREPLAY_TARGETS wrapped at start-up, like @capture would. "
            "Example: perfreplay run --targets app.pricing:quote -- gunicorn app:wsgi"
        ),
    )
    p.add_argument(
        "--targets",
        action="append",
        default=[],
        metavar="MOD:QUALNAME",
        help="a function or method to capture (repeatable, or comma-separated)",
    )
    p.add_argument("--store", default=None, help="store folder or URL ($PERFREPLAY_STORE)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise PerfReplayError("run needs a command: perfreplay run --targets mod:func -- CMD")
    env = dict(os.environ)
    targets = [t for group in args.targets for t in group.split(",") if t.strip()]
    if targets:
        env["PERFREPLAY_TARGETS"] = ",".join(targets)
    if not env.get("PERFREPLAY_TARGETS"):
        raise PerfReplayError("no targets: give --targets mod:func or set PERFREPLAY_TARGETS")
    if args.store:
        env["PERFREPLAY_STORE"] = args.store
    env.setdefault("PERFREPLAY_CAPTURE", "1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BOOT), env.get("PYTHONPATH")) if p)
    exe = shutil.which(command[0], path=env.get("PATH"))
    if exe is None:
        raise PerfReplayError(f"command not found: {command[0]!r}")
    os.execve(exe, command, env)  # replaces this process: exit codes and signals pass through
    return 0  # pragma: no cover - execve does not return
