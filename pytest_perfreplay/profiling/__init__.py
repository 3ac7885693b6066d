"""The profiling pass: after timing, a fixed number of replayed calls under a profiler."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import speedscope
from ..store import write_atomic
from . import pyinstrument as pyinstrument_backend
from . import pyspy

MAX_PROFILE_TIME = 60.0  # seconds of calls, whatever the sample target


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


@dataclass(frozen=True)
class ProfileResult:
    path: Path
    profiler: str
    calls: int
    samples: int
    document: dict[str, Any]
    fallback_reason: str | None = None


def _sample_count(doc: dict[str, Any], rate: int) -> int:
    """Samples-equivalent of a profile: total sampled seconds times the rate.

    pyinstrument merges identical stacks into one weighted sample, so counting entries
    would undercount; weights in seconds work for both profilers.
    """
    total = 0.0
    for prof in doc.get("profiles", ()):
        weights = prof.get("weights", ())
        scale = {
            "seconds": 1.0,
            "milliseconds": 1e-3,
            "microseconds": 1e-6,
            "nanoseconds": 1e-9,
        }.get(prof.get("unit", "seconds"), 1.0)
        total += sum(weights) * scale
    return round(total * rate)


def initial_calls(median_seconds: float, request: ProfileRequest) -> int:
    """Enough calls for the sample target at the given rate, from the timing median."""
    wanted_time = request.min_samples / request.rate
    return max(1, math.ceil(wanted_time / max(median_seconds, 1e-9)))


def profile(
    call_once: Callable[[], None],
    median_seconds: float,
    out_path: Path,
    request: ProfileRequest,
) -> ProfileResult:
    """Profile ``call_once`` repeated a fixed count of times, doubling the count until the
    focused profile holds ``min_samples`` samples (or the time cap is reached)."""
    calls = initial_calls(median_seconds, request)
    fallback: str | None = None
    backend = "py-spy" if request.profiler in ("auto", "py-spy") else "pyinstrument"
    while True:

        def run(n: int = calls) -> None:
            for _ in range(n):
                call_once()

        started = time.perf_counter()
        if backend == "py-spy":
            try:
                raw = pyspy.record(run, request.pyspy)
            except pyspy.AttachRefused as exc:
                if request.profiler == "py-spy":
                    raise
                fallback = f"py-spy unavailable ({exc}); used pyinstrument instead"
                backend = "pyinstrument"
                continue
        else:
            raw = pyinstrument_backend.record(run, rate=request.rate, is_async=request.is_async)
        elapsed = time.perf_counter() - started
        doc = speedscope.normalize(
            speedscope.load(raw),
            name=f"{request.name} ({calls} calls, {backend})",
            exporter=request.exporter,
            focus=request.focus,
        )
        samples = _sample_count(doc, request.rate)
        if samples == 0 and _sample_count(speedscope.load(raw), request.rate) > 0:
            raise RuntimeError(
                f"{backend} took samples, but none under the replayed function "
                f"({request.name}); was the target resolved to a different function?"
            )
        if samples >= request.min_samples or elapsed * 2 > MAX_PROFILE_TIME:
            break
        calls *= 2
    out_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(out_path, json.dumps(doc, separators=(",", ":")).encode(), mode=0o644)
    return ProfileResult(
        path=out_path,
        profiler=backend,
        calls=calls,
        samples=samples,
        document=doc,
        fallback_reason=fallback,
    )


@dataclass(frozen=True)
class PassSettings:
    profiler: str
    rate: int
    min_samples: int
    profiles_dir: Path


@dataclass
class PassOutcome:
    """What the profiling pass reports back to the item and the terminal summary."""

    path: Path | None
    calls: int | None
    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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
    """Profile one snapshot after its timing: write the file, summarize it, never raise."""
    from .. import __version__
    from ..snapshot import inspect_unwrap
    from ..store import target_slug

    target = snapshot.header.target
    code = getattr(inspect_unwrap(func), "__code__", None)
    qualname = str(getattr(code, "co_qualname", None) or getattr(func, "__qualname__", ""))
    out = (
        settings.profiles_dir
        / target_slug(target)
        / f"{iteration:04d}-{snapshot.id}.speedscope.json"
    )

    def call_once() -> None:
        args, kwargs = replayer.fresh_args()  # unpickling falls outside the focused frames
        with contextlib.suppress(Exception):  # the result check reported failing calls
            replayer.call(args, kwargs)

    request = ProfileRequest(
        profiler=settings.profiler,
        rate=settings.rate,
        min_samples=settings.min_samples,
        name=f"{target} [{snapshot.id}]",
        exporter=f"pytest-perfreplay@{__version__}",
        focus=speedscope.focus_on(qualname, getattr(func, "__module__", None)),
        is_async=replayer.is_async,
    )
    try:
        result = profile(call_once, median, out, request)
    except Exception as exc:
        return PassOutcome(path=None, calls=None, notes=[f"profiling failed: {exc}"])
    notes = [result.fallback_reason] if result.fallback_reason else []
    lines = speedscope.summarize(result.document, top=5).lines()
    return PassOutcome(path=result.path, calls=result.calls, lines=lines, notes=notes)
