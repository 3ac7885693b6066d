"""``perfreplay profile summary|diff|merge`` and ``perfreplay open``: the speedscope toolkit
from the command line.

Calls per profile (for ``diff``): the profiling pass names every profile
``"<target> [<snapshot>] (<N> calls, <profiler>)"``, and ``diff`` reads N from there.
For other files pass ``--old-calls``/``--new-calls`` (the flags win over the names);
``--old-calls 1 --new-calls 1`` compares raw totals.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import shutil
import subprocess
import tempfile
import urllib.parse
import webbrowser
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import PerfReplayError
from ..profile import speedscope

EXPORTER = f"pytest-perfreplay@{__version__}"
ENV_SPEEDSCOPE_DIR = "PERFREPLAY_SPEEDSCOPE_DIR"  # the npm package folder, when not found
VIEWS = ("time-order", "left-heavy", "sandwich")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _share(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a percentage") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 1 (or 0% and 100%)")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser(
        "profile",
        help="summarize, diff and merge speedscope profiles",
        description="Work on speedscope files: the profiling pass's, py-spy's, pyinstrument's "
        "(speedscope output or a .pyisession) and speedscope's own exports.",
    )
    actions = p.add_subparsers(dest="profile_command", metavar="ACTION", required=True)

    s = actions.add_parser("summary", help="top functions, user/library share, flatness")
    s.add_argument("file")
    s.add_argument("--top", type=_positive_int, default=10, help="functions per ranking (10)")
    s.add_argument(
        "--focus", metavar="[MODULE:]QUALNAME", help="only the samples under this function"
    )
    s.set_defaults(func=run_summary)

    d = actions.add_parser(
        "diff",
        help="per-call comparison of two profiles of one target",
        description="Compare OLD and NEW per replayed call. The call counts come from the "
        "profile names the profiling pass writes ('... (N calls, py-spy)'), or from "
        "--old-calls/--new-calls, which take precedence.",
    )
    d.add_argument("old")
    d.add_argument("new")
    d.add_argument("-o", "--output", help="write the before/after/grew/shrank speedscope file here")
    d.add_argument("--old-calls", type=_positive_int, help="replayed calls in OLD")
    d.add_argument("--new-calls", type=_positive_int, help="replayed calls in NEW")
    d.add_argument(
        "--threshold",
        type=_share,
        default=0.02,
        help="noise floor as a share of the per-call total (default 0.02 = 2%%)",
    )
    d.add_argument("--top", type=_positive_int, default=10, help="movers per list (10)")
    d.add_argument(
        "--store",
        default=None,
        help="store whose ledger holds the timed medians of OLD and NEW (default: found "
        "upwards from here)",
    )
    d.set_defaults(func=run_diff)

    m = actions.add_parser("merge", help="threads and runs in one file, frames de-duplicated")
    m.add_argument("files", nargs="+", metavar="FILE")
    m.add_argument("-o", "--output", required=True, help="the merged speedscope file")
    m.add_argument("--name", default=None, help="document name (default: the output's name)")
    m.set_defaults(func=run_merge)

    o = sub.add_parser(
        "open",
        help="open a profile in the speedscope app",
        description="Open FILE in the local speedscope app (npm i -g speedscope) in the default "
        "browser; without it, say how to use speedscope.app, and pyinstrument's HTML view "
        "when the profile has a .pyisession next to it.",
    )
    o.add_argument("file")
    o.add_argument(
        "--print-url", action="store_true", help="print the app URL instead of opening a browser"
    )
    o.add_argument("--view", choices=VIEWS, default=None, help="the view to open on")
    o.add_argument(
        "--html",
        action="store_true",
        help="render pyinstrument's HTML view of the .pyisession next to FILE instead",
    )
    o.set_defaults(func=run_open)


# ------------------------------------------------------------------------------------------
# helpers


def _read(path: str) -> dict[str, Any]:
    try:
        data = speedscope.parse_json(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PerfReplayError(f"{path}: no such file") from None
    except OSError as exc:
        raise PerfReplayError(f"{path}: cannot read: {exc}") from None
    except ValueError as exc:
        raise PerfReplayError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PerfReplayError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _write(path: str, doc: Mapping[str, Any]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:  # in pieces: no second copy as one string
        f.writelines(speedscope.dump_chunks(doc))
    os.replace(tmp, target)


def _weight(doc: Mapping[str, Any]) -> str:
    profile = doc["profiles"][0]
    return speedscope.format_weight(math.fsum(profile["weights"]), profile["unit"])


# ------------------------------------------------------------------------------------------
# commands


def run_summary(args: argparse.Namespace) -> int:
    doc = _read(args.file)
    try:
        if args.focus:
            doc = speedscope.normalize(
                doc,
                name=str(doc.get("name") or Path(args.file).name),
                exporter=EXPORTER,
                focus=speedscope.focus_on(args.focus),
            )
        summary = speedscope.summarize(doc, top=args.top)
    except speedscope.SpeedscopeError as exc:
        raise PerfReplayError(f"{args.file}: {exc}") from None
    name = doc.get("name") or doc.get("target_description") or Path(args.file).name
    print(f"{args.file}: {name}")
    calls = speedscope.calls_in_name(doc)
    if calls:
        per_call = speedscope.format_weight(summary.total / calls, summary.unit)
        print(f"{calls} replayed calls, {per_call} per call")
    for line in summary.lines(by_total=True):
        print(line)
    return 0


def _calls(flag: int | None, doc: Mapping[str, Any], path: str, option: str) -> int:
    if flag is not None:
        return flag
    found = speedscope.calls_in_name(doc)
    if found is None:
        raise PerfReplayError(
            f"{path}: its name does not say how many calls it profiled (expected "
            f"'... (N calls, profiler)', got {doc.get('name')!r}); pass {option} N "
            "(1 for both compares raw totals)"
        )
    return found


def timed_medians(profiles: list[str], store: str | None) -> list[float | None]:
    """The ledger's timed median (seconds) of the run that wrote each profile, when known."""
    from ..snapshot.store import Store

    wanted = {Path(p).resolve(): i for i, p in enumerate(profiles)}
    found: list[float | None] = [None] * len(profiles)
    history = Store.from_env(store).history_dir
    for ledger in sorted(history.glob("*/*.jsonl")) if history.is_dir() else []:
        try:
            lines = ledger.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                entry = json.loads(line)
                where = Path(entry["profile"]).resolve() if entry.get("profile") else None
                estimate = float(entry["estimate"])
            except (ValueError, KeyError, TypeError):
                continue
            if where in wanted and estimate > 0:
                found[wanted[where]] = estimate
    return found


def run_diff(args: argparse.Namespace) -> int:
    old, new = _read(args.old), _read(args.new)
    old_calls = _calls(args.old_calls, old, args.old, "--old-calls")
    new_calls = _calls(args.new_calls, new, args.new, "--new-calls")
    medians = timed_medians([args.old, args.new], getattr(args, "store", None))
    known = all(m is not None for m in medians)
    try:
        d = speedscope.diff(
            old,
            new,
            old_calls=old_calls,
            new_calls=new_calls,
            threshold=args.threshold,
            name=f"diff: {Path(args.old).name} -> {Path(args.new).name} (per call)",
            exporter=EXPORTER,
            old_per_call=medians[0] if known else None,
            new_per_call=medians[1] if known else None,
        )
    except speedscope.SpeedscopeError as exc:
        raise PerfReplayError(str(exc)) from None
    print(f"{args.old} -> {args.new}")
    for line in d.lines(top=args.top):
        print(line)
    if args.output:
        _write(args.output, d.document)
        print(
            f"wrote {args.output} (profiles: before, after, grew, shrank; open it with "
            f"`perfreplay open {args.output}`)"
        )
    return 0


def run_merge(args: argparse.Namespace) -> int:
    docs = [_read(f) for f in args.files]
    try:
        merged = speedscope.merge(docs, name=args.name or Path(args.output).name, exporter=EXPORTER)
    except speedscope.SpeedscopeError as exc:
        raise PerfReplayError(str(exc)) from None
    _write(args.output, merged)
    print(
        f"wrote {args.output}: {len(args.files)} file(s), {len(merged['profiles']) - 1} "
        f"profile(s) plus 'all threads', {len(merged['shared']['frames'])} functions, "
        f"{_weight(merged)} in all"
    )
    return 0


# ------------------------------------------------------------------------------------------
# open


def _package_dirs() -> list[Path]:
    """Where the npm ``speedscope`` package may be, best guess first."""
    override = os.environ.get(ENV_SPEEDSCOPE_DIR)
    if override:
        return [Path(override)]  # explicit: no guessing past it
    found: list[Path] = []
    cli = shutil.which("speedscope")
    if cli:  # <prefix>/bin/speedscope -> <prefix>/lib/node_modules/speedscope/bin/cli.mjs
        found.append(Path(os.path.realpath(cli)).parent.parent)
    found += [
        Path(p) / "speedscope" for p in ("/usr/lib/node_modules", "/usr/local/lib/node_modules")
    ]
    npm = shutil.which("npm")
    if npm:
        try:
            root = subprocess.run(
                [npm, "root", "-g"], capture_output=True, text=True, timeout=30, check=False
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            root = ""
        if root:
            found.append(Path(root) / "speedscope")
    return found


def find_app() -> Path | None:
    """The offline app's ``index.html`` from the npm ``speedscope`` package, if installed."""
    for folder in _package_dirs():
        index = folder / "dist" / "release" / "index.html"
        if index.is_file():
            return index
    return None


def app_url(index_html: Path, profile: Path, *, view: str | None = None) -> str:
    """A URL that opens ``profile`` in the offline app, the way ``speedscope FILE`` does: a
    JavaScript file hands the bytes to the app, named by ``#localProfilePath=``."""
    payload = base64.b64encode(profile.read_bytes()).decode("ascii")
    folder = Path(tempfile.mkdtemp(prefix="perfreplay-open-"))  # kept: the browser reads it
    js = folder / f"{profile.name}.js"
    js.write_text(
        f"speedscope.loadFileFromBase64({json.dumps(profile.name)}, {json.dumps(payload)})",
        encoding="utf-8",
    )
    url = (
        f"{index_html.resolve().as_uri()}#localProfilePath="
        f"{urllib.parse.quote(str(js.resolve()), safe='/')}"
    )
    return url + (f"&view={view}" if view else "")


def _session_for(profile: Path) -> Path | None:
    from ..profile.passes import SESSION_SUFFIX, sibling

    session = sibling(profile, SESSION_SUFFIX)
    return session if session.is_file() else None


def _render_html(session: Path) -> Path:
    from pyinstrument.renderers import HTMLRenderer
    from pyinstrument.session import Session

    out = session.with_suffix(".html")
    out.write_text(HTMLRenderer().render(Session.load(str(session))), encoding="utf-8")
    return out


def _show(url: str, print_url: bool) -> None:
    if print_url or not webbrowser.open(url):
        print(url)
    else:
        print(f"opened {url.split('#', 1)[0]} in the browser")


def run_open(args: argparse.Namespace) -> int:
    profile = Path(args.file)
    if not profile.is_file():
        raise PerfReplayError(f"{args.file}: no such file")
    session = _session_for(profile)
    if args.html:
        if session is None:
            raise PerfReplayError(
                f"{args.file}: no pyinstrument session next to it (only profiles made with "
                "pyinstrument have one); open the speedscope file without --html"
            )
        _show(_render_html(session).resolve().as_uri(), args.print_url)
        return 0
    index = find_app()
    if index is not None:
        _show(app_url(index, profile, view=args.view), args.print_url)
        return 0
    print(
        "the speedscope app is not installed locally (`npm install -g speedscope` installs it). "
        f"Meanwhile, open https://www.speedscope.app and drop {profile} onto the page "
        "(the file stays in your browser)."
    )
    if session is not None:
        print(
            f"pyinstrument's HTML view of this profile: `perfreplay open --html {profile}` "
            f"(or `pyinstrument --load {session} -r html`)"
        )
    return 1 if args.print_url else 0
