"""Deterministic counts: a snapshot's call counted under valgrind, in fresh processes.

The clock on a shared runner moves by several percent between runs; the number of
instructions a call executes does not, once the process is made reproducible:

* ``PYTHONHASHSEED=0`` (a random seed alone spreads counts by ~0.5%);
* ASLR off with ``setarch -R`` where it exists;
* pymalloc kept (``PYTHONMALLOC=malloc`` adds ~20% and makes counts bimodal);
* warm-up calls first, at least :data:`MIN_WARMUP` whatever the call's length: the 3.11
  specializing interpreter quickens a code object on its 8th entry, and code entered
  once per call stays unquickened until then.

valgrind counts a whole process, start-up included (hundreds of millions of instructions
against ~20M for a 1 ms call). One valgrind process per side starts the interpreter,
loads the snapshot and makes the warm-up calls once, then forks the counted processes
(:mod:`.counting`), which differ in heap state on purpose: the spread over them shows how
much the count depends on it. Two methods keep start-up out of the figure:

* ``bracket`` (x86-64 Linux): callgrind with instrumentation off, so start-up and
  warm-up run at about 10x native. Client requests
  (:mod:`.clientreq`) switch it on in each child and collect only between a toggle before
  and after each counted call; a second dump of the same loop around a no-op gives the
  toggles' own cost, which is subtracted.
* ``difference`` (no client requests, or calls long enough that callgrind's dearer
  counted calls outweigh its cheaper start-up and warm-up: :func:`plan` compares the two
  estimates): cachegrind, about 17x native instrumented against callgrind's 80-90x.
  Each child index forks a reference, a counted and a second reference process; counted
  minus the references' mean, divided by the calls, is the per-call count (what the
  parent ran before the forks cancels out). With valgrind >= 3.22 and client requests
  (``toggles``), cachegrind starts with instrumentation off and each child switches it on
  for its own loop only: start-up and warm-up then run at the uninstrumented ~10x too,
  which for a 100 ms call is most of the cost. Instructions only: the simulated caches
  of ``cycles`` would start cold in every child.

``count_calls`` is the whole parent side; it knows nothing of pytest, so a paired runner
can call it for a baseline tree (an extra import root) and for today's code alike.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import PerfReplayError
from .quicken import supported as quicken_supported

Mode = Literal["instructions", "cycles"]
MODES: tuple[str, ...] = ("instructions", "cycles")

#: Oldest valgrind tested; 3.19 is what Debian 12 ships.
MIN_VERSION = (3, 16)
#: cachegrind's ``--instr-at-start`` and its start/stop client requests arrived in 3.22.
TOGGLES_VERSION = (3, 22)

#: CodSpeed's cache geometry (32 KiB 8-way L1s, 8 MiB 16-way LL, 64-byte lines).
CACHE_GEOMETRY: Mapping[str, str] = {
    "I1": "32768,8,64",
    "D1": "32768,8,64",
    "LL": "8388608,16,64",
}
#: The public estimate: an L1 hit costs 1 cycle, an LL hit 5, a trip to RAM 30.
CYCLE_WEIGHTS = (1, 5, 30)
CYCLES_FORMULA = (
    "cycles = L1 hits + 5 x LL hits + 30 x RAM accesses, where "
    "accesses = Ir + Dr + Dw, L1 misses = I1mr + D1mr + D1mw, RAM = ILmr + DLmr + DLmw "
    "(cachegrind's simulated caches)"
)

Method = Literal["bracket", "difference"]

#: Slowdown of a pure-Python call under each tool against native, measured on the
#: development machine (x86-64, valgrind 3.19, a 1 ms loop): no instrumentation 9x;
#: cachegrind 17x, with cache simulation 47x; callgrind 82x, with cache simulation 196x.
#: Rounded up; used only to estimate and refuse runs that would take too long.
SLOWDOWN: Mapping[str, float] = {
    "instructions": 20.0,  # cachegrind, the difference method
    "cycles": 50.0,
    "callgrind": 90.0,  # callgrind, the bracket method and the profile
    "callgrind-cycles": 210.0,
    "uninstrumented": 10.0,
}
#: Wall seconds of the counting process's start-up (interpreter, imports, snapshot) under
#: valgrind on the development machine: instrumented (cachegrind from the start) and not.
STARTUP: Mapping[str, float] = {"instrumented": 3.0, "uninstrumented": 1.5}
#: CPU seconds each forked process of a toggled difference count adds: switching
#: instrumentation on drops the translations made before, so each re-translates its loop's
#: code instrumented, and writes a file of its own. Measured on the development machine
#: (valgrind 3.24, 1 ms calls): 2.86 s a count against 1.94 s without this term.
TOGGLED_PROCESS_SECONDS = 0.2
#: The native pre-run that fills the bytecode cache: interpreter start-up, imports and
#: one call.
PREWARM_SECONDS = 0.3

#: Counted calls add up to at least this much native time: the counts of forked processes
#: carry no start-up noise, so a few calls average out what little the heap's state
#: moves a call's count.
COUNTED_NATIVE_SECONDS = 0.002
#: Calls longer than this are counted once per process (each process sits at its own
#: place in the allocator's pools, so more calls per process add little).
ONE_CALL_SECONDS = 0.005
#: Warm-up calls, whatever a call's length: 3.11 quickens a code object on its 8th entry
#: (sooner when it loops), so code entered once per call runs unquickened in calls 1-7.
#: Measured on a pprint/textwrap/difflib call of 18.6 ms: counted after 6 warm-up calls,
#: 3.5% more instructions than after 7, 8, 9, 10, 20 or 60, which agree within 0.1%.
#: One more than the 7 that needed, for headroom.
MIN_WARMUP = 8
#: Where the counting process can quicken what the first call entered (CPython 3.11,
#: :mod:`.quicken`), 3 for every call: one enters the code, one quickens and specializes
#: it, one settles what the second left. benchmarks/instructions.py, the same library
#: call: after 3 so warmed, -0.03% against after 20 plain calls (8 plain: -0.09%).
QUICKENED_WARMUP = 3
#: Short calls get up to this many, filling WARMUP_NATIVE_SECONDS (more entries for
#: their code before it is counted).
WARMUP_NATIVE_SECONDS = 0.05
MAX_WARMUP = 10
MAX_CALLS = 10_000


class CountError(PerfReplayError):
    """Counting could not run, or a counting process failed; the message says what to do."""


class CountCancelled(CountError):
    """The count was stopped from outside (the other side of a pair failed, or Ctrl-C)."""


# -- preflight ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Valgrind:
    path: str
    version: tuple[int, ...]
    setarch: str | None  # None where ASLR cannot be turned off this way

    @property
    def version_text(self) -> str:
        return ".".join(str(p) for p in self.version)


def _install_hint() -> str:
    if sys.platform == "darwin":
        return "install it with `brew install valgrind` (Intel Macs only)"
    return (
        "install it with `sudo apt-get install valgrind` (Debian/Ubuntu), "
        "`sudo dnf install valgrind` (Fedora) or `brew install valgrind`"
    )


def unsupported_platform(system: str | None = None, machine: str | None = None) -> str | None:
    """Why valgrind cannot run here, or None. Pure, so it is tested for every platform."""
    system = system or platform.system()
    machine = (machine or platform.machine()).lower()
    if system == "Darwin" and machine in ("arm64", "aarch64"):
        return (
            "valgrind does not run on macOS on Apple silicon; count instructions on Linux "
            "(a CI runner, a Linux VM, or `docker run --platform linux/arm64 ...`)"
        )
    if system == "Windows":
        return "valgrind does not run on Windows; count instructions on Linux (WSL2 works)"
    return None


def parse_version(text: str) -> tuple[int, ...] | None:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not match:
        return None
    return tuple(int(g) for g in match.groups() if g is not None)


def preflight(
    *, which: Callable[[str], str | None] = shutil.which, run: Callable[[str], str] | None = None
) -> Valgrind:
    """Find a usable valgrind, or raise CountError with the exact fix."""
    why = unsupported_platform()
    if why:
        raise CountError(f"--perf-replay-measure needs valgrind: {why}")
    path = os.environ.get("PERFREPLAY_VALGRIND") or which("valgrind")
    if not path:
        raise CountError(
            "--perf-replay-measure needs valgrind, which is not on PATH: " + _install_hint()
        )
    text = (run or _version_output)(path)
    version = parse_version(text)
    if version is None:
        raise CountError(f"--perf-replay-measure: cannot tell the version of {path} ({text!r})")
    if version[:2] < MIN_VERSION:
        raise CountError(
            f"--perf-replay-measure needs valgrind >= {MIN_VERSION[0]}.{MIN_VERSION[1]}, "
            f"found {'.'.join(map(str, version))} at {path}: upgrade it ({_install_hint()})"
        )
    return Valgrind(path, version, which("setarch") if sys.platform.startswith("linux") else None)


def _version_output(path: str) -> str:
    try:
        return subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise CountError(f"--perf-replay-measure: cannot run {path} --version: {exc}") from None


# -- the plan: how many calls, and what it will cost --------------------------------------


def bracket_available() -> bool:
    """Whether the bracket method works here (client requests exist for x86-64 Linux)."""
    from .clientreq import available

    return available()


def toggles_available(vg: Valgrind, mode: str = "instructions") -> bool:
    """Whether a ``difference`` count can keep cachegrind's instrumentation to the children's
    loops: valgrind >= 3.22, client requests, and instructions (not simulated caches)."""
    return mode == "instructions" and vg.version[:2] >= TOGGLES_VERSION and bracket_available()


@dataclass(frozen=True)
class Plan:
    warmup: int
    calls: int
    processes: int
    native_call: float  # seconds, one plain call (median of the timed ones)
    native_args: float  # seconds to unpickle one fresh argument set
    method: Method = "difference"
    toggles: bool = False  # difference: cachegrind instruments only the children's loops
    quicken: bool = False  # what the first warm-up call entered quickens on its next entry

    def _slow(self, mode: str) -> float:
        if self.method == "bracket":
            return SLOWDOWN["callgrind-cycles" if mode == "cycles" else "callgrind"]
        return SLOWDOWN[mode]

    def estimate(self, mode: str, *, startup: float | None = None, jobs: int) -> float:
        """Wall seconds of one side's count: the native pre-run, one valgrind start-up
        and warm-up, then the forked processes, ``jobs`` at a time."""
        quiet = self.method == "bracket" or self.toggles  # parent runs uninstrumented
        if startup is None:
            startup = STARTUP["uninstrumented" if quiet else "instrumented"]
        per = self.native_call + self.native_args
        prewarm = PREWARM_SECONDS + min(self.warmup, 1) * per
        off = SLOWDOWN["uninstrumented"]
        if self.method == "bracket":
            parent = startup + off * self.warmup * per
            # the calls and the no-op loop each unpickle their sets; a cache-warming call
            # for cycles
            instrumented = self.calls + (1 if mode == "cycles" else 0)
            child = off * 2 * self.calls * self.native_args
            child += self._slow(mode) * instrumented * self.native_call
            work = child * self.processes
        else:
            parent = startup + (off if self.toggles else self._slow(mode)) * self.warmup * per
            # per index: the counted process, and references that only unpickle (two;
            # one when toggled)
            refs = 1 if self.toggles else 2
            work = self._slow(mode) * self.calls * (per + refs * self.native_args)
            if self.toggles:
                work += (1 + refs) * TOGGLED_PROCESS_SECONDS
            work *= self.processes
        return prewarm + parent + work / max(1, min(jobs, self.processes))


def plan(
    native_call: float,
    native_args: float,
    *,
    processes: int,
    warmup: int | None = None,
    calls: int | None = None,
    method: Method | None = None,
    toggles: bool = False,
    quicken: bool = False,
) -> Plan:
    """Choose the method, warm-up and counted calls from the native time of one call.
    ``toggles``: whether a difference count may instrument only its children's loops
    (:func:`toggles_available`); ``quicken``: whether the counting process can quicken
    what its first warm-up call entered (:func:`.quicken.supported`)."""
    per = max(native_call, 1e-7)
    if warmup is None and quicken:
        warmup = QUICKENED_WARMUP  # what the filling below was for, quickening, is done
    if warmup is None:
        warmup = max(MIN_WARMUP, min(MAX_WARMUP, math.ceil(WARMUP_NATIVE_SECONDS / per)))
    if calls is None:
        few = 1 if per >= ONE_CALL_SECONDS else 2
        calls = max(few, min(MAX_CALLS, math.ceil(COUNTED_NATIVE_SECONDS / per)))
    if method is None:
        # Whichever the estimate says costs less: callgrind runs start-up and warm-up
        # uninstrumented but its counted calls at ~80x, cachegrind everything at ~17x.
        method = "difference"
        if bracket_available():
            jobs = os.cpu_count() or 1
            costs = {
                m: Plan(
                    warmup, calls, processes, native_call, native_args, m, toggles, quicken
                ).estimate("instructions", jobs=jobs)
                for m in ("bracket", "difference")
            }
            method = "bracket" if costs["bracket"] <= costs["difference"] else "difference"
    toggles = toggles and method == "difference"
    return Plan(warmup, calls, processes, native_call, native_args, method, toggles, quicken)


def too_long(estimate: float, budget: float, what: str, mode: str = "instructions") -> str | None:
    if estimate <= budget:
        return None
    return (
        f"counting this snapshot would take about {estimate:.0f} s ({what}), over the "
        f"{budget:g} s budget: raise --perf-replay-max-time (e.g. {math.ceil(estimate * 1.5)})"
        + (
            ", or count instructions rather than cycles (no cache simulation: several times "
            "cheaper)"
            if mode == "cycles"
            else ""
        )
    )


# -- the result ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CountResult:
    """Per-call counts of one snapshot's call, one figure per process."""

    unit: str  # "instructions" | "cycles"
    per_process: tuple[float, ...]
    estimate: float  # mean over processes
    low: float
    high: float
    confidence: float
    spread: float  # (max - min) / estimate over processes
    calls: int
    warmup: int
    method: str
    tool: str  # the valgrind command line, without the Python part
    valgrind: str
    elapsed: float  # wall seconds of all counting runs
    events: dict[str, float] = field(default_factory=dict)  # per call, mean over processes
    formula: str | None = None
    cache: dict[str, str] | None = None
    target: str = ""
    import_roots: tuple[str, ...] = ()
    counting: str = "difference"  # "bracket": client requests around each counted call
    toggled: bool = False  # difference: cachegrind instrumented only the children's loops
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds per part
    quickened: bool = False  # the first warm-up call's code quickened at once (3.11)

    @property
    def processes(self) -> int:
        return len(self.per_process)

    @property
    def precision(self) -> float:
        if not self.estimate:
            return math.inf
        return max(self.high - self.estimate, self.estimate - self.low) / self.estimate

    def as_json(self) -> dict[str, object]:
        from dataclasses import asdict

        data = asdict(self)
        data["processes"] = self.processes
        data["precision"] = self.precision
        return data


def summarize(
    per_process: Sequence[float], confidence: float
) -> tuple[float, float, float, float, str]:
    """Mean, Student-t interval and relative spread of per-process counts."""
    k = len(per_process)
    mean = sum(per_process) / k
    spread = (max(per_process) - min(per_process)) / mean if mean else 0.0
    if k < 2:
        return mean, -math.inf, math.inf, spread, "one process: no interval"
    sd = math.sqrt(sum((x - mean) ** 2 for x in per_process) / (k - 1))
    from .stats import _sps

    t = float(_sps().t.ppf(0.5 + confidence / 2, k - 1))
    half = t * sd / math.sqrt(k)
    method = f"Student-t over {k} processes (mean of per-process counts)"
    return mean, mean - half, mean + half, spread, method


# -- running ------------------------------------------------------------------------------


def _tool_args(
    mode: str, out_file: str, method: str = "difference", toggles: bool = False
) -> list[str]:
    if method == "bracket":
        args = [
            "--tool=callgrind",
            "--instr-atstart=no",
            "--collect-atstart=no",
            f"--callgrind-out-file={out_file}",
        ]
    else:
        args = ["--tool=cachegrind", f"--cachegrind-out-file={out_file}"]
        if toggles:
            args.append("--instr-at-start=no")
    if mode == "cycles":
        args.append("--cache-sim=yes")
        args.extend(f"--{name}={geometry}" for name, geometry in CACHE_GEOMETRY.items())
    elif method != "bracket":
        args.append("--cache-sim=no")  # callgrind's default already
    return args


def counting_env(
    import_roots: Sequence[str],
    base: Mapping[str, str] | None = None,
    *,
    pycache: str | None = None,
    write_bytecode: bool = False,
) -> dict[str, str]:
    """The environment of a counting process: reproducible.

    ``pycache`` is a bytecode cache (``PYTHONPYCACHEPREFIX``) that a native pre-run fills
    (``write_bytecode``) and the counting runs only read: compiling every module from source
    under valgrind would cost seconds per process, and where ``PYTHONDONTWRITEBYTECODE`` is
    set (as on many CI machines) nothing else would ever write the bytecode.
    """
    env = dict(os.environ if base is None else base)
    env["PYTHONHASHSEED"] = "0"
    env.pop("PYTHONMALLOC", None)  # keep pymalloc: the system malloc is slower and bimodal
    env.pop("PYTHONDEVMODE", None)
    env["PERFREPLAY_CAPTURE"] = "0"
    if write_bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # a run must not change what the next one reads
    if pycache is not None:
        env["PYTHONPYCACHEPREFIX"] = pycache
    paths = [*import_roots, *(p for p in sys.path if p)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def bytecode_cache() -> str | None:
    """A per-user folder for the counting processes' bytecode, or None if none can be made."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(root, "perfreplay", "pycache")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError:
        return None
    return path


def prewarm(job: CountJob, *, pycache: str | None, workdir: Path, timeout: float) -> None:
    """Run the counting job natively once, without counted calls, to fill the bytecode cache
    with every module it imports (a call's lazy imports included: one warm-up call, not
    all of them, which for a 100 ms call would be most of a second)."""
    if pycache is None:
        return
    job_file = workdir / "job-prewarm.json"
    once = min(job.warmup, 1)
    job_file.write_text(CountJob(**{**job.__dict__, "prewarm": True, "warmup": once}).to_json())
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        # a failure here shows again, with its message, in the counted run
        subprocess.run(
            [sys.executable, "-m", "pytest_perfreplay.replay.counting", str(job_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=counting_env(job.import_roots, pycache=pycache, write_bytecode=True),
            timeout=timeout,
            check=False,
        )


def prefix(vg: Valgrind) -> list[str]:
    """``setarch -R`` (ASLR off) in front of valgrind, where it exists."""
    return [vg.setarch, "-R"] if vg.setarch else []


@dataclass(frozen=True)
class CountJob:
    """What a counting process does; written as JSON for ``replay/counting.py``."""

    snapshot_path: str
    store: str
    allow_unsigned: bool
    target: str
    import_roots: tuple[str, ...]
    warmup: int
    calls: int  # counted calls per process (fresh argument sets)
    gc: str
    children: int = 3  # counted processes forked after the warm-up
    manifest: str | None = None  # where the parent lists its children (pid, kind, exit)
    marker: bool = False  # the profile: one forked process, bracketed as the count is
    method: str = "difference"  # or "bracket": client requests around each call
    toggles: bool = False  # difference: each child switches cachegrind's instrumentation on
    cache_warm: bool = False  # bracket: one instrumented, uncollected call first (cycles)
    prewarm: bool = False  # native pre-run: load and warm up only (fills the bytecode cache)
    pycache: str | None = None  # PYTHONPYCACHEPREFIX of the counting processes
    marks_fd: int | None = None  # the counting process writes one byte per phase here
    quicken: bool = False  # after the first warm-up call, quicken what it entered

    def to_json(self) -> str:
        from dataclasses import asdict

        return json.dumps(asdict(self))


def run_under(
    vg: Valgrind,
    tool_args: Sequence[str],
    job: CountJob,
    *,
    workdir: Path,
    timeout: float,
    name: str = "count",
    cancel: threading.Event | None = None,
    marks: dict[str, float] | None = None,
) -> Path:
    """Run one counting process (and the processes it forks) under valgrind; return its
    log file (for errors). On a timeout, an exception or ``cancel`` (set from another
    thread) the whole process group is killed. ``marks`` receives the ``time.monotonic()``
    at which the process reached each phase (:data:`PHASE_MARKS`)."""
    job_file = workdir / f"job-{name}.json"
    read_marks, write_marks = os.pipe() if marks is not None else (-1, -1)
    if marks is not None:
        job = CountJob(**{**job.__dict__, "marks_fd": write_marks})
    job_file.write_text(job.to_json())
    log = workdir / f"valgrind-{name}.log"
    errfile = workdir / f"stderr-{name}.txt"
    cmd = [
        *prefix(vg),
        vg.path,
        "--quiet",
        f"--log-file={log}",
        *tool_args,
        sys.executable,
        "-m",
        "pytest_perfreplay.replay.counting",
        str(job_file),
    ]
    with open(errfile, "wb") as err:
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=counting_env(job.import_roots, pycache=job.pycache),
                start_new_session=True,  # its forked children go with it on a timeout
                pass_fds=(write_marks,) if marks is not None else (),
            )
        except BaseException:
            if marks is not None:
                os.close(read_marks)
            raise
        finally:
            if marks is not None:
                os.close(write_marks)  # EOF once the counting processes are gone
        reader = _read_marks(read_marks, marks) if marks is not None else None
        try:
            _wait_or_cancel(proc, timeout, cancel)
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise CountError(
                    f"a counting process ran over {timeout:.0f} s and was killed; raise "
                    "--perf-replay-max-time"
                ) from None
            raise
        finally:
            if reader is not None:
                reader.join(timeout=5)
    if proc.returncode != 0:
        tail = _tail(errfile) or _tail(log)
        raise CountError(
            f"the counting process failed (exit {proc.returncode}) for {job.target}"
            + (f":\n{tail}" if tail else "")
        )
    return log


#: The bytes a counting process writes on ``marks_fd``, and the phase each one ends.
PHASE_MARKS: Mapping[bytes, str] = {b"L": "loaded", b"W": "warmed", b"C": "counted"}


def _read_marks(fd: int, marks: dict[str, float]) -> threading.Thread:
    """Time each phase mark as it arrives; a thread, so that marks need no polling."""

    def read() -> None:
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            while byte := pipe.read(1):
                name = PHASE_MARKS.get(byte)
                if name is not None:
                    marks.setdefault(name, time.monotonic())

    thread = threading.Thread(target=read, name="perfreplay-count-marks", daemon=True)
    thread.start()
    return thread


def phases(
    started: float, prewarmed: float, marks: Mapping[str, float], ended: float
) -> dict[str, float]:
    """Wall seconds of each part of one count, from the phase marks (empty if any is
    missing): the native pre-run, valgrind's start-up to the loaded snapshot, the
    warm-up calls, the counted processes, and the exit (valgrind writing its files)."""
    if not all(name in marks for name in PHASE_MARKS.values()):
        return {}
    points = [started, prewarmed, marks["loaded"], marks["warmed"], marks["counted"], ended]
    names = ("prewarm", "start-up", "warm-up", "counted processes", "exit")
    return {
        n: round(max(0.0, b - a), 3) for n, a, b in zip(names, points[:-1], points[1:], strict=True)
    }


def _wait_or_cancel(
    proc: subprocess.Popen[bytes], timeout: float, cancel: threading.Event | None
) -> None:
    """``proc.wait(timeout)``, raising CountCancelled soon after ``cancel`` is set."""
    if cancel is None:
        proc.wait(timeout=timeout)
        return
    deadline = time.monotonic() + timeout
    while True:
        if cancel.is_set():
            raise CountCancelled("stopped: the other side's count failed, or the run stopped")
        left = deadline - time.monotonic()
        if left <= 0:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        try:
            proc.wait(timeout=min(0.1, left))
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def parse_cachegrind(path: Path) -> dict[str, int]:
    """The ``events:`` / ``summary:`` totals of a cachegrind output file, or of one
    callgrind dump (a part file; callgrind may leave trailing zero events out)."""
    events: list[str] = []
    summary: list[int] = []
    with open(path) as fh:
        for line in fh:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("summary:"):
                summary = [int(x) for x in line.split()[1:]]
                break
    if not events or not summary or len(summary) > len(events):
        raise CountError(f"cannot read valgrind's totals from {path}")
    summary += [0] * (len(events) - len(summary))
    return dict(zip(events, summary, strict=True))


def cycles(events: Mapping[str, float]) -> float:
    """The cycle estimate of :data:`CYCLES_FORMULA` from cachegrind's event totals."""
    accesses = events["Ir"] + events["Dr"] + events["Dw"]
    l1_miss = events["I1mr"] + events["D1mr"] + events["D1mw"]
    ram = events["ILmr"] + events["DLmr"] + events["DLmw"]
    l1, ll, mem = CYCLE_WEIGHTS
    return l1 * (accesses - l1_miss) + ll * (l1_miss - ram) + mem * ram


def _children(
    vg: Valgrind,
    mode: str,
    job: CountJob,
    workdir: Path,
    timeout: float,
    cancel: threading.Event | None = None,
    marks: dict[str, float] | None = None,
) -> list[dict[str, float]]:
    """Per-call events of each forked process of one counting run."""
    bracket = job.method == "bracket"
    out = workdir / ("callgrind.%p.out" if bracket else "cachegrind.%p.out")
    run_under(
        vg,
        _tool_args(mode, str(out), job.method, job.toggles),
        job,
        workdir=workdir,
        timeout=timeout,
        cancel=cancel,
        marks=marks,
    )
    assert job.manifest is not None
    listed = json.loads(Path(job.manifest).read_text())

    def totals(pid: int, suffix: str = "") -> dict[str, int]:
        path = workdir / f"{out.name.replace('%p', str(pid))}{suffix}"
        if not path.exists():
            raise CountError(
                f"valgrind wrote no counts for a counted process of {job.target} "
                f"(expected {path.name})"
                + (": the client requests were not seen" if bracket else "")
            )
        return parse_cachegrind(path)

    per: list[dict[str, float]] = []
    if bracket:
        for child in listed:
            calls, noop = totals(child["pid"], ".1"), totals(child["pid"], ".2")
            per.append({k: (calls[k] - noop.get(k, 0)) / job.calls for k in calls})
        return per
    # reference, counted, reference; toggled, nothing before the switch is counted, so
    # one reference is enough: reference, counted
    size = 2 if job.toggles else 3
    for i in range(0, len(listed), size):
        ref, counted, *more = (totals(c["pid"]) for c in listed[i : i + size])
        refs = [ref, *more]
        per.append(
            {
                k: (counted[k] - sum(r.get(k, 0) for r in refs) / len(refs)) / job.calls
                for k in counted
            }
        )
    return per


def count_calls(
    snapshot_path: str | Path,
    target: str,
    *,
    store: str | Path,
    allow_unsigned: bool = False,
    import_roots: Sequence[str] = (),
    mode: str = "instructions",
    processes: int = 3,
    warmup: int = 2,
    calls: int = 5,
    gc: str = "collect",
    confidence: float = 0.95,
    timeout: float = 3600.0,
    valgrind: Valgrind | None = None,
    method: Method | None = None,
    toggles: bool | None = None,
    quicken: bool = False,
    cancel: threading.Event | None = None,
) -> CountResult:
    """Count the per-call instructions (or estimated cycles) of ``target`` on a snapshot.

    ``import_roots`` go first on the counting processes' ``sys.path``: a paired runner
    passes a baseline tree there and nothing for today's code. ``method`` defaults to
    ``bracket`` where client requests work, else ``difference`` (:func:`plan` also
    weighs the call's length). ``toggles`` (a difference count that instruments only the
    children's loops) defaults to wherever :func:`toggles_available`. ``quicken``: what
    the first warm-up call entered quickens on its next entry (:mod:`.quicken`; refused
    where unsupported), so ``warmup`` can be :data:`QUICKENED_WARMUP`. Setting ``cancel``
    from another thread kills the count's processes and raises CountCancelled.
    """
    if mode not in MODES:
        raise CountError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if processes < 1 or calls < 1 or warmup < 0:
        raise CountError("processes and calls must be >= 1, warmup >= 0")
    vg = valgrind or preflight()
    if method is None:
        method = "bracket" if bracket_available() else "difference"
    if toggles is None:
        toggles = toggles_available(vg, mode)
    elif toggles and method == "difference" and not toggles_available(vg, mode):
        raise CountError(
            f"counting with cachegrind's instrumentation toggles needs valgrind >= "
            f"{TOGGLES_VERSION[0]}.{TOGGLES_VERSION[1]}, client requests and mode "
            f"instructions; found valgrind {vg.version_text}, mode {mode}"
        )
    toggles = toggles and method == "difference"
    if quicken and not quicken_supported():
        raise CountError(
            "quickening the warm-up's code at once needs CPython 3.11 (64-bit); this is "
            f"{sys.implementation.name} {sys.version.split()[0]}: count with "
            f"{MIN_WARMUP} plain warm-up calls instead"
        )
    base = CountJob(
        snapshot_path=str(snapshot_path),
        store=str(store),
        allow_unsigned=allow_unsigned,
        target=target,
        import_roots=tuple(str(r) for r in import_roots),
        warmup=warmup,
        calls=calls,
        gc=gc,
        children=processes,
        method=method,
        toggles=toggles,
        cache_warm=method == "bracket" and mode == "cycles",
        pycache=bytecode_cache(),
        quicken=quicken and warmup > 0,
    )
    started = time.monotonic()
    marks: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="perfreplay-count-") as tmp:
        workdir = Path(tmp)
        job = CountJob(**{**base.__dict__, "manifest": str(workdir / "children.json")})
        prewarm(job, pycache=job.pycache, workdir=workdir, timeout=timeout)
        prewarmed = time.monotonic()
        per_events = _children(vg, mode, job, workdir, timeout, cancel, marks)
    ended = time.monotonic()
    elapsed = ended - started
    first = per_events[0]
    values = [cycles(e) if mode == "cycles" else e["Ir"] for e in per_events]
    mean, low, high, spread, summary_method = summarize(values, confidence)
    events = {k: sum(e[k] for e in per_events) / len(per_events) for k in first}
    tool = " ".join([*prefix(vg), "valgrind", *_tool_args(mode, "…", method, toggles)])
    quick = " (the first's code quickened at once)" if base.quicken else ""
    forked = (
        f"{processes} processes forked after {warmup} warm-up calls{quick}, in heap states "
        "of their own"
    )
    if method == "bracket":
        how = (
            f"{forked}; each counted {calls} calls between client-request toggles, minus the "
            "same loop around a no-op"
            + (", after one instrumented cache-warming call" if mode == "cycles" else "")
        )
    else:
        how = f"{forked}; each counted {calls} calls under cachegrind, minus " + (
            "a reference process forked beside it that made no calls (instrumentation "
            "switched on in each process for its loop only)"
            if toggles
            else "the mean of two reference processes forked beside it that made no calls"
        )
    return CountResult(
        unit=mode,
        per_process=tuple(values),
        estimate=mean,
        low=low,
        high=high,
        confidence=confidence,
        spread=spread,
        calls=calls,
        warmup=warmup,
        method=f"{summary_method}; {how}, PYTHONHASHSEED=0"
        + (", ASLR off" if vg.setarch else ", ASLR on (no setarch)")
        + ", pymalloc",
        tool=tool,
        valgrind=vg.version_text,
        elapsed=elapsed,
        events=events,
        formula=CYCLES_FORMULA if mode == "cycles" else None,
        cache=dict(CACHE_GEOMETRY) if mode == "cycles" else None,
        target=target,
        import_roots=base.import_roots,
        counting=method,
        toggled=toggles,
        phases=phases(started, prewarmed, marks, ended),
        quickened=base.quicken,
    )
