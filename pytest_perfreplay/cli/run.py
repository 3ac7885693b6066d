"""``perfreplay run [--targets T] -- CMD...``: capture by dotted name without editing code."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..capture.options import OptionsError, capture_only, configured_targets
from ..capture.targets import parse_env
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
    g = p.add_argument_group(
        "capture options",
        'for every target named here, over [tool.perfreplay.targets."pkg.mod:func"] '
        "in pyproject.toml (which also gives options per target)",
    )
    g.add_argument("--sample-rate", type=_rate, help="fraction of calls considered (0..1)")
    g.add_argument("--slower-than", type=_nonneg, metavar="SECONDS", help="keep slower calls")
    g.add_argument("--max-snapshots", type=_count, metavar="N", help="kept per target")
    g.add_argument("--max-bytes", type=_count, metavar="N", help="pickled-size cap")
    g.add_argument(
        "--keep-result", action="store_true", default=None, help="keep the return value too"
    )
    g.add_argument("--no-redact", action="store_true", help="turn redaction off")
    g.add_argument(
        "--redact", action="append", default=[], metavar="KEY", help="an extra key to scrub"
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise PerfReplayError("run needs a command: perfreplay run --targets mod:func -- CMD")
    env = dict(os.environ)
    try:
        configured = {t: capture_only(o) for t, o in configured_targets().items()}
    except OptionsError as exc:
        raise PerfReplayError(str(exc)) from None
    named = [t.strip() for group in args.targets for t in group.split(",") if t.strip()]
    flags = _flag_options(args)
    if named or flags:
        if not named and not configured and not env.get("PERFREPLAY_TARGETS"):
            raise PerfReplayError("capture options need targets: give --targets mod:func")
        if named:
            chosen = {t: {**configured.get(t, {}), **flags} for t in named}
        elif configured:
            chosen = {t: {**o, **flags} for t, o in configured.items()}
        else:
            try:
                existing = parse_env(env["PERFREPLAY_TARGETS"])
            except ValueError as exc:
                raise PerfReplayError(f"PERFREPLAY_TARGETS: {exc}") from None
            base = existing if isinstance(existing, dict) else {t: {} for t in existing}
            chosen = {t: {**o, **flags} for t, o in base.items()}
        env["PERFREPLAY_TARGETS"] = _encode(chosen)
    elif configured and not env.get("PERFREPLAY_TARGETS"):
        env["PERFREPLAY_TARGETS"] = _encode(configured)
    if not env.get("PERFREPLAY_TARGETS"):
        raise PerfReplayError(
            "no targets: give --targets mod:func, set PERFREPLAY_TARGETS, or list them under "
            '[tool.perfreplay.targets."pkg.mod:func"] in pyproject.toml'
        )
    if args.store:
        env["PERFREPLAY_STORE"] = args.store
    env.setdefault("PERFREPLAY_CAPTURE", "1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BOOT), env.get("PYTHONPATH")) if p)
    exe = shutil.which(command[0], path=env.get("PATH"))
    if exe is None:
        raise PerfReplayError(f"command not found: {command[0]!r}")
    os.execve(exe, command, env)  # replaces this process: exit codes and signals pass through
    return 0  # pragma: no cover - execve does not return


def _flag_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {
        name: getattr(args, name)
        for name in ("sample_rate", "slower_than", "max_snapshots", "max_bytes", "keep_result")
        if getattr(args, name) is not None
    }
    if args.no_redact and args.redact:
        raise PerfReplayError("--no-redact and --redact KEY contradict each other; pick one")
    if args.no_redact:
        options["redact"] = False
    elif args.redact:
        options["redact"] = list(args.redact)
    return options


def _encode(targets: dict[str, dict[str, Any]]) -> str:
    if not any(targets.values()):
        return ",".join(targets)  # the plain form, readable in `ps`
    return json.dumps(targets, sort_keys=True)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _rate(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 1")
    return value


def _nonneg(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative; give seconds >= 0")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value
