"""The profiling pass: after timing, a fixed number of replayed calls under a profiler.

Timing is never taken under a profiler (py-spy adds 10-25% to a call-heavy loop): replay/items.py
runs this pass after the rounds, over a call count that doubles until the profile holds enough
samples. The focused, normalized profile goes to
``<profiles_dir>/<target>/<iteration>-<snapshot>.speedscope.json``; with a previous iteration's
profile, a per-call diff goes next to it as ``<iteration>-<snapshot>.diff.speedscope.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..snapshot.store import make_private_dirs, write_atomic
from . import pyinstrument as pyinstrument_backend
from . import pyspy, speedscope

__all__ = [
    "PROFILE_SUFFIX",
    "DIFF_SUFFIX",
    "PassOutcome",
    "PassSettings",
    "ProfileRequest",
    "ProfileResult",
    "profile",
    "run_profile_pass",
    "sibling",
]

MAX_PROFILE_TIME = 60.0  # seconds of calls, whatever the sample target
MAX_GROWTH = 16  # per retry: never jump from a short run straight to minutes
PRELOAD_BYTES = 64 << 20  # pickled arguments unpickled ahead of the profiled calls, at most
IDLE_COVERAGE = 0.05  # below this share of wall time sampled, the calls are mostly waiting
PROFILE_SUFFIX = ".speedscope.json"
DIFF_SUFFIX = ".diff.speedscope.json"
SESSION_SUFFIX = ".pyisession"  # pyinstrument's own session, for its HTML view
RAW_SUFFIX = ".pyspy-raw.json"  # py-spy's untouched output, kept on request
ENV_PYSPY = "PERFREPLAY_PYSPY"  # py-spy executable to use (e.g. a patched or setcap'd copy)
ENV_KEEP_RAW = "PERFREPLAY_PROFILE_RAW"  # "1": keep py-spy's raw output next to the profile


def sibling(profile_path: Path, suffix: str) -> Path:
    """``0002-abc.speedscope.json`` -> ``0002-abc<suffix>``."""
    name = profile_path.name
    stem = name[: -len(PROFILE_SUFFIX)] if name.endswith(PROFILE_SUFFIX) else profile_path.stem
    return profile_path.with_name(stem + suffix)


@dataclass(frozen=True)
class ProfileRequest:
    profiler: str  # "auto" | "py-spy" | "pyinstrument"
    rate: int
    min_samples: int
    name: str
    exporter: str
    focus: Callable[[speedscope.Frame], bool]
    is_async: bool
    pyspy: pyspy.PySpyOptions = field(default_factory=pyspy.PySpyOptions)
    keep_raw: bool = False
    max_time: float = MAX_PROFILE_TIME


@dataclass(frozen=True)
class ProfileResult:
    path: Path
    profiler: str
    calls: int
    samples: int
    document: dict[str, Any]
    fallback_reason: str | None = None
    attach_seconds: float | None = None  # py-spy only: spawn to ready line
    attempts: int = 1
    notes: tuple[str, ...] = ()  # the fallback reason, too few samples...


def _sample_count(doc: dict[str, Any], rate: int) -> int:
    """Samples-equivalent of a profile: total sampled seconds times the rate.

    pyinstrument merges identical stacks into one weighted sample, so counting entries
    would undercount; weights in seconds work for both profilers.
    """
    total = 0.0
    for prof in doc.get("profiles", ()):
        scale = {
            "seconds": 1.0,
            "milliseconds": 1e-3,
            "microseconds": 1e-6,
            "nanoseconds": 1e-9,
        }.get(prof.get("unit", "seconds"), 1.0)
        total += math.fsum(prof.get("weights", ())) * scale
    return round(total * rate)


def initial_calls(median_seconds: float, request: ProfileRequest) -> int:
    """Enough calls for the sample target at the given rate, from the timing median."""
    wanted_time = request.min_samples / request.rate
    return max(1, math.ceil(wanted_time / max(median_seconds, 1e-9)))


def _growth(samples: int, wanted: int) -> int:
    """How many times more calls the next attempt needs (with a 25% margin), 2..MAX_GROWTH."""
    if samples <= 0:
        return MAX_GROWTH // 2
    return min(MAX_GROWTH, max(2, math.ceil(1.25 * wanted / samples)))


def profile(
    call_once: Callable[[], None],
    median_seconds: float,
    out_path: Path,
    request: ProfileRequest,
    *,
    prepare: Callable[[int], Callable[[], None]] | None = None,
) -> ProfileResult:
    """Profile ``call_once`` repeated a fixed count of times, growing the count until the
    focused profile holds ``min_samples`` samples (or the time cap is reached); write it.

    ``prepare(n)``, when given, returns a function making the ``n`` calls; it runs before the
    profiler starts, so it can unpickle the arguments outside the profiled window."""
    calls = initial_calls(median_seconds, request)
    fallback: str | None = None
    backend = "py-spy" if request.profiler in ("auto", "py-spy") else "pyinstrument"
    session_path = sibling(out_path, SESSION_SUFFIX)
    raw_path = sibling(out_path, RAW_SUFFIX)
    for stale in (session_path, raw_path):  # never leave a sibling from another run
        stale.unlink(missing_ok=True)
    attach: float | None = None
    attempts = 0
    while True:
        attempts += 1

        if prepare is not None:
            run = prepare(calls)
        else:

            def run(n: int = calls) -> None:
                for _ in range(n):
                    call_once()

        started = time.perf_counter()
        if backend == "py-spy":
            options = request.pyspy
            if request.keep_raw:
                options = _replace_raw(options, raw_path)
            try:
                recording = pyspy.record(run, options)
            except pyspy.PySpyError as exc:
                if request.profiler == "py-spy":
                    raise
                fallback = f"py-spy unavailable, used pyinstrument instead: {exc}"
                backend = "pyinstrument"
                continue
            raw = recording.document
            attach = recording.attach_seconds
        else:
            raw = pyinstrument_backend.record(
                run, rate=request.rate, is_async=request.is_async, session_path=session_path
            )
        elapsed = time.perf_counter() - started
        loaded = speedscope.load(raw)
        try:
            doc = speedscope.normalize(
                loaded,
                name=f"{request.name} ({calls} calls, {backend})",
                exporter=request.exporter,
                focus=request.focus,
            )
            samples = _sample_count(doc, request.rate)
        except speedscope.SpeedscopeError:
            if _sample_count(loaded, request.rate) > 0:
                raise RuntimeError(
                    f"{backend} took samples, but none under the replayed function "
                    f"({request.name}); was the target resolved to a different function?"
                ) from None
            doc, samples = None, 0
        # A call that mostly waits (sleep, I/O) gives py-spy, which skips idle threads, few
        # samples however long it runs: growing the count would only burn time.
        waiting = backend == "py-spy" and samples < IDLE_COVERAGE * elapsed * request.rate
        if doc is not None and (
            samples >= request.min_samples or elapsed * 2 > request.max_time or waiting
        ):
            break
        if doc is None and (elapsed * 2 > request.max_time or waiting):
            raise RuntimeError(
                f"{backend} took no samples in {elapsed:.1f} s of calls"
                + (": the calls wait rather than compute (try py-spy's --idle)" if waiting else "")
            )
        calls *= _growth(samples, request.min_samples)
    make_private_dirs(out_path.parent)  # profiles name the code and its arguments' shapes
    write_atomic(out_path, json.dumps(doc, separators=(",", ":")).encode(), mode=0o600)
    notes = [fallback] if fallback else []
    if samples < request.min_samples:
        notes.append(
            f"only {samples} of {request.min_samples} samples"
            + (
                ": the calls mostly wait (sleep, I/O), which py-spy skips without --idle"
                if waiting
                else f" within the {request.max_time:.0f} s cap"
            )
        )
    return ProfileResult(
        path=out_path,
        profiler=backend,
        calls=calls,
        samples=samples,
        document=doc,
        fallback_reason=fallback,
        attach_seconds=attach,
        attempts=attempts,
        notes=tuple(notes),
    )


def _replace_raw(options: pyspy.PySpyOptions, raw_path: Path) -> pyspy.PySpyOptions:
    return replace(options, raw_copy=raw_path)


# ------------------------------------------------------------------------------------------
# the pass as replay/items.py calls it


@dataclass(frozen=True)
class PassSettings:
    """Everything the pass needs from the config; replay/items.py passes the values through."""

    profiler: str  # "auto" | "py-spy" | "pyinstrument"
    rate: int
    min_samples: int
    profiles_dir: Path
    native: bool = False  # py-spy --native: C extension frames too
    gil: bool = False  # py-spy --gil: only samples holding the GIL
    idle: bool = False  # py-spy --idle: include waiting threads
    nonblocking: bool = False  # py-spy --nonblocking: never pause the process
    pyspy_executable: str | None = None  # None: $PERFREPLAY_PYSPY, else the installed py-spy
    keep_raw: bool | None = None  # None: $PERFREPLAY_PROFILE_RAW == "1"
    diff_threshold: float = 0.02  # a function moves when its per-call change exceeds this share
    top: int = 5

    def pyspy_options(self) -> pyspy.PySpyOptions:
        return pyspy.PySpyOptions(
            rate=self.rate,
            native=self.native,
            gil=self.gil,
            idle=self.idle,
            nonblocking=self.nonblocking,
            executable=self.pyspy_executable or os.environ.get(ENV_PYSPY) or None,
        )

    @property
    def keep_raw_output(self) -> bool:
        if self.keep_raw is not None:
            return self.keep_raw
        return os.environ.get(ENV_KEEP_RAW, "").strip().lower() in ("1", "true", "yes")


@dataclass
class PassOutcome:
    """What the profiling pass reports back to the item and the terminal summary."""

    path: Path | None
    calls: int | None
    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profiler: str | None = None
    samples: int | None = None
    diff_path: Path | None = None


def _rel(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    return str(path)


def _backend_in_name(doc: dict[str, Any]) -> str | None:
    name = doc.get("name")
    if isinstance(name, str) and name.endswith(")") and ", " in name:
        return name.rsplit(", ", 1)[1][:-1]
    return None


def profile_lines(result: ProfileResult, rate: int, top: int) -> list[str]:
    """Headline, then the top functions by self share (with their total share)."""
    summary = speedscope.summarize(result.document, top=top)
    per_call = speedscope.format_weight(summary.total / result.calls, summary.unit)
    head = (
        f"{result.profiler}: {result.calls} calls, {result.samples} samples at {rate} Hz, "
        f"{per_call} per call; user code {summary.user_share:.0%}, "
        f"libraries {summary.library_share:.0%}; top self share {summary.flatness:.1%}"
        + (" (flat: no single function dominates)" if summary.is_flat else "")
    )
    return [head, *summary.table()]


def diff_previous(
    previous: Any,
    result: ProfileResult,
    *,
    iteration: int,
    exporter: str,
    threshold: float,
    top: int,
    median: float | None = None,
) -> tuple[list[str], Path | None, list[str]]:
    """(lines, diff file, notes) against the previous iteration's profile, if it has one."""
    old_path = Path(previous.profile) if getattr(previous, "profile", None) else None
    if old_path is None:
        return [], None, []
    old_iteration = getattr(previous, "iteration", "?")
    if not old_path.is_file():
        return [], None, [f"no diff: the iteration {old_iteration} profile {old_path} is gone"]
    try:
        old_doc = json.loads(old_path.read_text(encoding="utf-8"))
        old_calls = getattr(previous, "profile_calls", None) or speedscope.calls_in_name(old_doc)
        if not old_calls:
            return [], None, [f"no diff: {old_path} does not say how many calls it profiled"]
        d = speedscope.diff(
            old_doc,
            result.document,
            old_calls=int(old_calls),
            new_calls=result.calls,
            old_per_call=getattr(previous, "estimate", None) if median else None,
            new_per_call=median if getattr(previous, "estimate", None) else None,
            threshold=threshold,
            name=f"{result.document.get('name', 'profile')}: iteration {old_iteration} -> "
            f"{iteration} per call",
            exporter=exporter,
        )
    except (OSError, ValueError) as exc:  # SpeedscopeError is a ValueError
        return [], None, [f"no diff against {old_path}: {exc}"]
    out = sibling(result.path, DIFF_SUFFIX)
    write_atomic(out, json.dumps(d.document, separators=(",", ":")).encode(), mode=0o600)
    lines = [f"vs iteration {old_iteration}, per call: {d.headline()}"]
    lines += d.mover_lines(top)
    old_backend = _backend_in_name(old_doc)
    if old_backend and old_backend != result.profiler:
        lines.append(f"  (profiled by {old_backend} then, by {result.profiler} now)")
    lines.append(f"diff: {_rel(out)} (before / after / grew / shrank)")
    return lines, out, []


def run_profile_pass(
    replayer: Any,
    func: Callable[..., Any],
    snapshot: Any,
    *,
    iteration: int,
    median: float,
    settings: PassSettings,
    previous: Any | None = None,
) -> PassOutcome:
    """Profile one snapshot after its timing: write the file, summarize it, diff it against
    ``previous`` (the last ledger entry: ``.profile``, ``.profile_calls``); never raise."""
    from .._version import __version__
    from ..snapshot.format import inspect_unwrap
    from ..snapshot.store import target_slug

    target = snapshot.header.target
    code = getattr(inspect_unwrap(func), "__code__", None)
    qualname = str(getattr(code, "co_qualname", None) or getattr(func, "__qualname__", ""))
    out = (
        settings.profiles_dir
        / target_slug(target)
        / f"{iteration:04d}-{snapshot.id}{PROFILE_SUFFIX}"
    )

    def call_once() -> None:
        args, kwargs = replayer.fresh_args()  # unpickling falls outside the focused frames
        with contextlib.suppress(Exception):  # the result check reported failing calls
            replayer.call(args, kwargs)

    def prepare(n: int) -> Callable[[], None]:
        """Unpickle every call's fresh arguments before the profiler attaches (the samples
        then sit under the target, not in pickle), unless they would take too much memory."""
        first = replayer.fresh_args()
        try:
            size = len(pickle.dumps(first, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception:
            size = PRELOAD_BYTES + 1
        if size * n > PRELOAD_BYTES:

            def lazily() -> None:
                for _ in range(n):
                    call_once()

            return lazily
        batch = [first, *(replayer.fresh_args() for _ in range(n - 1))]

        def preloaded() -> None:
            call = replayer.call
            # Iterated, not popped: freeing the arguments would be sampled too; they go
            # when the batch does, after the profiler has stopped.
            for args, kwargs in batch:
                try:  # noqa: SIM105 - suppress() would add its own frames around each call
                    call(args, kwargs)
                except Exception:
                    pass  # the result check reported failing calls

        return preloaded

    exporter = f"pytest-perfreplay@{__version__}"
    request = ProfileRequest(
        profiler=settings.profiler,
        rate=settings.rate,
        min_samples=settings.min_samples,
        name=f"{target} [{snapshot.id}]",
        exporter=exporter,
        focus=speedscope.focus_on(qualname, getattr(func, "__module__", None)),
        is_async=replayer.is_async,
        pyspy=settings.pyspy_options(),
        keep_raw=settings.keep_raw_output,
    )
    try:
        result = profile(call_once, median, out, request, prepare=prepare)
    except Exception as exc:
        return PassOutcome(path=None, calls=None, notes=[f"profiling failed: {exc}"])
    notes = list(result.notes)
    lines = profile_lines(result, settings.rate, settings.top)
    diff_path: Path | None = None
    if previous is not None:
        more, diff_path, diff_notes = diff_previous(
            previous,
            result,
            iteration=iteration,
            exporter=exporter,
            threshold=settings.diff_threshold,
            top=settings.top,
            median=median,
        )
        lines += more
        notes += diff_notes
    return PassOutcome(
        path=result.path,
        calls=result.calls,
        lines=lines,
        notes=notes,
        profiler=result.profiler,
        samples=result.samples,
        diff_path=diff_path,
    )
