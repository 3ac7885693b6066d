"""Rounds spread over fresh worker processes: pyperf's idea, made adaptive.

One process cannot see between-process noise: hash seed, memory layout, ASLR, which
core and cache the process lands on. So with ``--perf-replay-processes N`` the rounds
run in fresh interpreters, one after another (never in parallel: they would disturb each
other), and the interval is :func:`~pytest_perfreplay.stats.group_interval` over the
per-process estimates: Student-t with ``k - 1`` degrees of freedom, so the spread between
processes is in the claim.

Adaptive: after the first ``N`` processes, more are started one at a time (up to ``4N``)
while the precision target is missed and the time budget allows another process. The
target must hold on two consecutive checks (``k`` and ``k + 1`` processes) so a lucky
agreement of a few processes does not end the run.

Protocol: the parent writes one JSON job to the worker's stdin; the worker streams lines on
a dedicated pipe (so the target's own prints cannot corrupt it): ``s <seconds>`` per round,
then ``done {json}`` or ``error {json}``. Each worker takes rounds for its slice of the
budget (:func:`worker_rounds`), with the same fresh arguments, GC policy and warmup
detection as the in-process loop.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from ..errors import PerfReplayError
from .rounds import (
    STOP_MAX_PROCESSES,
    STOP_MAX_ROUNDS,
    STOP_TARGET,
    STOP_TIME,
    Progress,
    RoundPolicy,
    RoundsResult,
)
from .warmup import WARMUP_WINDOW, detect_warmup

#: Checks (after k, k + 1, ... processes) on which the target must hold in a row.
CONSECUTIVE = 2
#: The first N processes share this fraction of the budget; the rest is for adaptation.
FIRST_SHARE = 0.5


class WorkerError(PerfReplayError):
    """A worker process failed; the message carries its own error and stderr tail."""


@dataclass(frozen=True)
class WorkerJob:
    """What a worker needs to replay a snapshot on its own."""

    snapshot_path: str
    store: str
    allow_unsigned: bool
    #: ``module:qualname`` to call; None means the snapshot's own target.
    target: str | None = None
    policy: dict[str, Any] = field(default_factory=dict)
    #: Paired mode: the folder the target's top-level package must be imported from.
    expect_root: str | None = None


@dataclass(frozen=True)
class WorkerRun:
    """One worker's rounds, split into warmup and measured ones."""

    samples: tuple[float, ...]
    warmup: tuple[float, ...]
    stop_reason: str
    settled: bool
    wall: float


Spawn = Callable[[WorkerJob, Callable[[float], None]], WorkerRun]


def run_processes(
    job: WorkerJob,
    policy: RoundPolicy,
    processes: int,
    *,
    spawn: Spawn | None = None,
    clock: Callable[[], float] = time.perf_counter,
    on_progress: Callable[[Progress], None] | None = None,
    max_processes: int | None = None,
) -> RoundsResult:
    """Run rounds in ``processes`` (or more, adaptively) fresh workers, one at a time."""
    from .stats import estimate, group_interval  # numpy: the parent's side only

    if processes < 2:
        raise ValueError(f"processes must be >= 2 for worker mode, got {processes!r}")
    spawn = spawn or spawn_worker
    k_max = max_processes or 4 * processes
    slice_time = policy.max_time * FIRST_SHARE / processes
    worker_policy = asdict(policy)
    worker_policy.update(
        max_time=slice_time,
        max_rounds=max(policy.min_rounds, policy.max_rounds // processes),
    )
    wjob = WorkerJob(job.snapshot_path, job.store, job.allow_unsigned, job.target, worker_policy)

    start = clock()
    runs: list[WorkerRun] = []
    precision = math.inf
    in_row = 0
    checks = 0
    stop_reason = STOP_TIME
    last_report = start
    done_rounds = 0

    def live(seconds: float) -> None:
        nonlocal last_report, done_rounds
        done_rounds += 1
        now = clock()
        if on_progress is not None and now - last_report >= 1.0:
            last_report = now
            on_progress(Progress(done_rounds, precision, now - start, True))

    while True:
        runs.append(spawn(wjob, live))
        k = len(runs)
        if k >= processes:
            iv = group_interval([r.samples for r in runs], policy.estimator, policy.confidence)
            checks += 1
            precision = iv.precision
            in_row = in_row + 1 if precision <= policy.target else 0
            if in_row >= CONSECUTIVE:
                stop_reason = STOP_TARGET
                break
            if k >= k_max:
                stop_reason = STOP_MAX_PROCESSES
                break
            elapsed = clock() - start
            if elapsed + elapsed / k > policy.max_time:
                stop_reason = STOP_TIME
                break
    end = clock()
    final = group_interval([r.samples for r in runs], policy.estimator, policy.confidence)
    if on_progress is not None:
        on_progress(Progress(done_rounds, final.precision, end - start, True))
    return RoundsResult(
        samples=tuple(s for r in runs for s in r.samples),
        warmup=tuple(s for r in runs for s in r.warmup),
        interval=final,
        target_met=stop_reason == STOP_TARGET,
        stop_reason=stop_reason,
        elapsed=end - start,
        policy=policy,
        warmup_settled=all(r.settled for r in runs),
        checks=checks,
        processes=len(runs),
        groups=tuple(len(r.samples) for r in runs),
        group_estimates=tuple(estimate(r.samples, policy.estimator) for r in runs),
    )


# -- parent side: one worker --------------------------------------------------------------


def _worker_env(rng: random.Random | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # A fresh hash seed per process is part of the between-process noise we want to see.
    env.pop("PYTHONHASHSEED", None)
    env["PERFREPLAY_CAPTURE"] = "0"
    # The parent may import the target through sys.path entries (rootdir, pythonpath ini).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.update(layout_env(rng or random.Random()))
    return env


# -- memory layout, drawn per process -------------------------------------------------------

#: Environment bytes that move a worker's stack: a page's worth, so every alignment occurs.
STACK_PAD_SPAN = 4096
#: The heap pad's place in pymalloc's pools, in parts of a pool (see :mod:`.heappad`).
HEAP_PAD_PARTS = 16
#: Bytes held on malloc's heap, which move every larger object made after them.
MALLOC_PAD_SPAN = 65536


def layout_env(rng: random.Random) -> dict[str, str]:
    """Variables that put a worker at a random place in memory.

    Two sides that import the same code from different folders (a baseline checkout and
    today's tree, with different paths and environments) start from different layouts,
    the same for every process of a side; layout moves a call's time, so identical code
    can read as a change. Drawn per process, a layout is part of the between-process
    noise the statistic already sees, and no longer a bias. The stack moves with the
    environment's size (the kernel puts it above the stack), the heaps with pads the
    worker holds for its life (:func:`hold_layout`).
    """
    heap = rng.randrange(HEAP_PAD_PARTS)
    malloc = rng.randrange(MALLOC_PAD_SPAN // 16) * 16
    return {
        "PERFREPLAY_LAYOUT": f"{heap}/{HEAP_PAD_PARTS} {malloc}",
        "PERFREPLAY_STACK_PAD": "." * rng.randrange(STACK_PAD_SPAN),
    }


_HELD: list[object] = []


def hold_layout(environ: Mapping[str, str]) -> dict[str, int]:
    """Make and keep the heap pads ``PERFREPLAY_LAYOUT`` asks for (before the target's
    module is imported, so its objects land after them); returns what was applied."""
    spec = environ.get("PERFREPLAY_LAYOUT")
    if not spec:
        return {}
    match = re.fullmatch(r"(\d+)/(\d+) (\d+)", spec)
    if match is None:
        raise ValueError(f"PERFREPLAY_LAYOUT must read 'PART/WHOLE BYTES', not {spec!r}")
    part, whole, malloc = (int(g) for g in match.groups())
    if not 0 <= part < whole or malloc >= MALLOC_PAD_SPAN:
        raise ValueError(f"PERFREPLAY_LAYOUT out of range: {spec!r}")
    from .heappad import heap_pad

    _HELD.extend(heap_pad(part, whole))
    _HELD.append(bytearray(malloc))
    return {
        "heap_part": part,
        "heap_whole": whole,
        "malloc_pad": malloc,
        "stack_pad": len(environ.get("PERFREPLAY_STACK_PAD", "")),
    }


def spawn_worker(job: WorkerJob, on_sample: Callable[[float], None]) -> WorkerRun:
    """Start one worker, stream its samples, and return its rounds."""
    started = time.perf_counter()
    read_fd, write_fd = os.pipe()
    budget = float(job.policy.get("max_time", 10.0))
    with tempfile.TemporaryFile() as errfile:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pytest_perfreplay.replay.workers", str(write_fd)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=errfile,
                pass_fds=(write_fd,),
                env=_worker_env(),
            )
        finally:
            os.close(write_fd)
        assert proc.stdin is not None
        # Generous: interpreter start-up plus the slice; a hung worker is killed, not awaited.
        watchdog = threading.Timer(60.0 + 3 * budget, proc.kill)
        watchdog.start()
        samples: list[float] = []
        final: dict[str, Any] | None = None
        error: str | None = None
        try:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(json.dumps(asdict(job)).encode())
                proc.stdin.close()
            with os.fdopen(read_fd, "r") as stream:
                for line in stream:
                    kind, _, rest = line.rstrip("\n").partition(" ")
                    if kind == "s":
                        value = float(rest)
                        samples.append(value)
                        on_sample(value)
                    elif kind == "done":
                        final = json.loads(rest)
                    elif kind == "error":
                        error = str(json.loads(rest).get("message"))
            code = proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if final is None or code != 0:
            errfile.seek(0)
            tail = errfile.read().decode(errors="replace").strip().splitlines()[-8:]
            reason = error or f"worker exited with code {code} before finishing"
            raise WorkerError(
                f"worker process failed: {reason}" + ("\n" + "\n".join(tail) if tail else "")
            )
    n_warmup = int(final["n_warmup"])
    n_samples = int(final["n_samples"])
    return WorkerRun(
        samples=tuple(samples[n_warmup : n_warmup + n_samples]),
        warmup=tuple(samples[:n_warmup]),
        stop_reason=str(final["stop_reason"]),
        settled=bool(final["settled"]),
        wall=time.perf_counter() - started,
    )


# -- worker side --------------------------------------------------------------------------


def worker_rounds(
    measure: Callable[[], float],
    policy: RoundPolicy,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[float], int, str, bool]:
    """One worker's share: rounds until its time slice (or round cap) is spent.

    No precision checks here: the parent judges precision across processes, and this keeps
    scipy out of the worker (its import alone would cost ~0.8 s per process). Warmup is
    detected as in the main loop. Returns (all rounds, warmup count, stop reason, settled).
    """

    start = clock()
    series: list[float] = []
    n_warmup: int | None = None
    stop = STOP_TIME
    while True:
        series.append(measure())
        if n_warmup is None and policy.max_warmup > 0:
            n_warmup = detect_warmup(series, window=WARMUP_WINDOW)
        elif n_warmup is None:
            n_warmup = 0
        measured = len(series) - (n_warmup or 0)
        if n_warmup is not None and measured >= policy.max_rounds:
            stop = STOP_MAX_ROUNDS
            break
        elapsed = clock() - start
        if elapsed + elapsed / len(series) > policy.max_time:
            break
    settled = n_warmup is not None
    final = detect_warmup(series, window=WARMUP_WINDOW, final=True) or 0
    n = max(n_warmup or 0, final)
    if n > policy.max_warmup:
        n, settled = policy.max_warmup, False
    return series, min(n, len(series) - 1), stop, settled


def _worker(job: WorkerJob, out: IO[str]) -> None:
    from pathlib import Path

    from ..capture.decorator import configure
    from ..snapshot.store import Store
    from .call import Replayer, read_snapshot, resolve_target

    configure(enabled=False)
    snapshot = read_snapshot(
        Path(job.snapshot_path),
        keyring=Store(Path(job.store)).keyring(),
        allow_unsigned=job.allow_unsigned,
        allow_python_mismatch=True,  # the parent verified it and decided already
    )
    func = resolve_target(job.target or snapshot.header.target)
    policy = RoundPolicy(**job.policy)
    replayer = Replayer(snapshot, func, gc_policy=policy.gc)
    last_flush = time.perf_counter()

    def measure() -> float:
        nonlocal last_flush
        seconds = replayer.measure()
        out.write(f"s {seconds!r}\n")  # outside the timed region
        now = time.perf_counter()
        if now - last_flush > 0.2:
            out.flush()
            last_flush = now
        return seconds

    try:
        with replayer.timing():
            series, n_warmup, stop, settled = worker_rounds(measure, policy)
    finally:
        replayer.close()
    done = {
        "n_warmup": n_warmup,
        "n_samples": len(series) - n_warmup,
        "stop_reason": stop,
        "settled": settled,
    }
    out.write(f"done {json.dumps(done)}\n")
    out.flush()


# -- worker side, persistent: one side of a paired comparison ------------------------------


class Refusal(Exception):
    """A worker that cannot take part; ``kind`` tells the parent which error to give."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def unpickle_refusal(exc: BaseException) -> Refusal:
    """Name the class (or module) the arguments needed and this code did not have."""
    text = f"{type(exc).__name__}: {exc}"
    found = re.search(r"Can't get attribute '([^']+)' on <module '([^']+)'", str(exc))
    if found:
        what = f"class {found.group(2)}.{found.group(1)} is missing"
    elif isinstance(exc, ModuleNotFoundError) and exc.name:
        what = f"module {exc.name} is missing"
    else:
        what = "they fail to load"
    return Refusal("unpickle", f"{what} ({text})")


def serve(
    job: WorkerJob, commands: IO[str], out: IO[str], *, layout: dict[str, int] | None = None
) -> None:
    """Load the snapshot once, then answer the parent's commands, one line each.

    ``warm`` (calls until warmup settles), ``run M`` (M fresh-argument calls, their median),
    ``profile {settings}`` (a profiling pass of this side's code). Each answer is one line.
    """
    import statistics
    from pathlib import Path

    from ..capture.decorator import configure
    from ..errors import SnapshotError
    from ..snapshot.store import Store
    from .call import Replayer, read_snapshot, resolve_target

    configure(enabled=False)
    snapshot = read_snapshot(
        Path(job.snapshot_path),
        keyring=Store(Path(job.store)).keyring(),
        allow_unsigned=job.allow_unsigned,
        allow_python_mismatch=True,
    )
    target = job.target or snapshot.header.target
    try:
        func = resolve_target(target)
    except SnapshotError as exc:
        # The module imported but has no such name: the target is new since this code.
        imported = target.partition(":")[0] in sys.modules
        raise Refusal("target" if imported else "import", str(exc)) from None
    module_file = getattr(sys.modules.get(target.partition(":")[0]), "__file__", None)
    if job.expect_root is not None:
        root = Path(job.expect_root).resolve()
        if module_file is None or root not in Path(module_file).resolve().parents:
            raise Refusal("shadowed", f"{target} was imported from {module_file}, not {root}")
    policy = RoundPolicy(**job.policy)
    replayer = Replayer(snapshot, func, gc_policy=policy.gc)
    try:
        replayer.fresh_args()
    except Exception as exc:
        raise unpickle_refusal(exc) from None

    def reply(kind: str, data: dict[str, Any]) -> None:
        out.write(f"{kind} {json.dumps(data)}\n")
        out.flush()

    reply("ready", {"module_file": module_file, "pid": os.getpid(), "layout": layout or {}})
    try:
        for line in commands:
            command, _, rest = line.strip().partition(" ")
            if command == "warm":
                max_calls, max_seconds = json.loads(rest)
                series: list[float] = []
                settled: int | None = None
                start = time.perf_counter()
                cpu_start = time.process_time()
                with replayer.timing():
                    while len(series) < max_calls and time.perf_counter() - start < max_seconds:
                        series.append(replayer.measure())
                        if settled is None:
                            settled = detect_warmup(series, window=WARMUP_WINDOW)
                        elif len(series) >= settled + WARMUP_WINDOW:
                            break
                wall = (time.perf_counter() - start) / max(len(series), 1)
                # CPU per call: the parent warms a wave's workers at once, so wall times
                # then include waiting for a core.
                cpu = (time.process_time() - cpu_start) / max(len(series), 1)
                tail = series[settled or 0 :] or series
                reply(
                    "warm",
                    {
                        "calls": len(series),
                        "settled": settled is not None,
                        "settled_at": settled or 0,
                        "median": statistics.median(tail),
                        "wall": wall,
                        "cpu": cpu,
                    },
                )
            elif command == "run":
                with replayer.timing():
                    samples = [replayer.measure() for _ in range(int(rest))]
                reply("run", {"median": statistics.median(samples)})
            elif command == "profile":
                from ..profile.passes import PassSettings, run_profile_pass

                settings = json.loads(rest)
                settings["profiles_dir"] = Path(settings["profiles_dir"])
                median = float(settings.pop("median"))
                done = run_profile_pass(
                    replayer,
                    func,
                    snapshot,
                    iteration=0,
                    median=median,
                    settings=PassSettings(**settings),
                )
                reply(
                    "profile",
                    {
                        "path": str(done.path) if done.path else None,
                        "calls": done.calls,
                        "notes": done.notes,
                    },
                )
            elif command == "quit":
                break
    finally:
        replayer.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    out = os.fdopen(int(args[0]), "w", buffering=1 << 16)
    try:
        layout = hold_layout(os.environ)
        if args[1:] == ["serve"]:  # a persistent worker of a paired comparison
            job = WorkerJob(**json.loads(sys.stdin.readline()))
            serve(job, sys.stdin, out, layout=layout)
        else:
            job = WorkerJob(**json.loads(sys.stdin.read()))
            _worker(job, out)
    except BaseException as exc:  # report everything to the parent, then fail
        with contextlib.suppress(Exception):
            kind = getattr(exc, "kind", "failed")
            message = f"{type(exc).__name__}: {exc}" if kind == "failed" else str(exc)
            out.write(f"error {json.dumps({'message': message, 'kind': kind})}\n")
            out.flush()
        return 1
    finally:
        with contextlib.suppress(Exception):
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
