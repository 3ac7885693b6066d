"""Deterministic counts: a snapshot's call counted under valgrind, in fresh processes.

The clock on a shared runner moves by several percent between runs; the number of
instructions a call executes does not, once the process is made reproducible:

* ``PYTHONHASHSEED=0`` (a random seed alone spreads counts by ~0.5%);
* ASLR off with ``setarch -R`` where it exists;
* pymalloc kept (``PYTHONMALLOC=malloc`` adds ~20% and makes counts bimodal);
* warm-up calls first: the 3.11 specializing interpreter quickens a code object after
  about eight executions, and each quickening changes the count.

valgrind counts a whole process, start-up included (hundreds of millions of instructions
against ~20M for a 1 ms call). Two methods keep start-up out of the figure:

* ``bracket`` (x86-64 Linux): one callgrind process per layout, started with
  instrumentation off, so start-up, imports and warm-up run uninstrumented (about 10x
  native instead of 20-80x). Client requests (:mod:`.clientreq`) then switch it on and
  collect only between a toggle before and after each counted call; a second dump of the
  same loop around a no-op gives the toggles' own cost, which is subtracted. The counted
  calls are exact, so a few suffice.
* ``difference`` (elsewhere): each process is run twice in the same set-up under
  cachegrind, once with ``N`` counted calls and once with none; the difference divided by
  ``N`` is the per-call count. Both runs unpickle the same ``N`` fresh argument sets and
  apply the same GC policy, so neither the unpickling nor the start-up is in the figure.

Processes differ on purpose in the size of their environment (a padding variable), which
shifts the stack and nothing else; the spread over processes therefore shows how much
the count depends on memory layout, which a different machine or CI job would change.

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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import PerfReplayError

Mode = Literal["instructions", "cycles"]
MODES: tuple[str, ...] = ("instructions", "cycles")

#: Oldest valgrind tested; 3.19 is what Debian 12 ships.
MIN_VERSION = (3, 16)

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
#: valgrind on the development machine: instrumented (difference) and not (bracket).
STARTUP: Mapping[str, float] = {"difference": 3.5, "bracket": 1.5}

#: Counted calls are chosen so that they add up to at least this much native time. When
#: whole processes are differenced, their run-to-run noise (a few hundred instructions)
#: must be below 1e-5 of the counted work; bracketed calls carry no start-up noise, so a
#: few calls average out what little the heap's state moves a call's count.
COUNTED_NATIVE_SECONDS = 0.02
BRACKET_COUNTED_NATIVE_SECONDS = 0.002
#: Bracketed calls longer than this are counted once (each costs ~90x its native time).
BRACKET_ONE_CALL_SECONDS = 0.05
#: Warm-up calls: enough for the outer code object to be quickened (about 8 executions on
#: 3.11) when calls are short; at least two when they are long (their own loops quicken
#: within the first call).
WARMUP_NATIVE_SECONDS = 0.05
MAX_WARMUP = 10
MAX_CALLS = 10_000

_ENV_PAD = "PERFREPLAY_LAYOUT_PAD"
_PAD_STEP = 512  # bytes of environment added per process index


class CountError(PerfReplayError):
    """Counting could not run, or a counting process failed; the message says what to do."""


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


@dataclass(frozen=True)
class Plan:
    warmup: int
    calls: int
    processes: int
    native_call: float  # seconds, one plain call (median of the timed ones)
    native_args: float  # seconds to unpickle one fresh argument set
    method: Method = "difference"

    def _slow(self, mode: str) -> float:
        if self.method == "bracket":
            return SLOWDOWN["callgrind-cycles" if mode == "cycles" else "callgrind"]
        return SLOWDOWN[mode]

    def work_seconds(self, mode: str) -> float:
        """Wall seconds of the calls and unpickling inside one process's counting run(s)."""
        per = self.native_call + self.native_args
        if self.method == "bracket":
            # warm-up and unpickling uninstrumented, counted calls (and one cache-warming
            # call for cycles) instrumented
            instrumented = self.calls + (1 if mode == "cycles" else 0)
            return (
                SLOWDOWN["uninstrumented"] * (self.warmup * per + self.calls * self.native_args)
                + self._slow(mode) * instrumented * self.native_call
            )
        return self._slow(mode) * (self.warmup + self.calls) * per

    def estimate(self, mode: str, *, startup: float | None = None, jobs: int) -> float:
        """Wall seconds of the whole count, ``jobs`` processes at a time."""
        start = STARTUP[self.method] if startup is None else startup
        if self.method == "bracket":
            one = start + self.work_seconds(mode)
            return one * self.processes / max(1, min(jobs, self.processes))
        runs = 2 * self.processes
        with_calls = start + self.work_seconds(mode)
        without = start + self._slow(mode) * (self.warmup + self.calls) * self.native_args
        without += self._slow(mode) * self.warmup * self.native_call
        return (with_calls + without) * self.processes / max(1, min(jobs, runs))


def plan(
    native_call: float,
    native_args: float,
    *,
    processes: int,
    warmup: int | None = None,
    calls: int | None = None,
    method: Method | None = None,
) -> Plan:
    """Choose the method, warm-up and counted calls from the native time of one call."""
    per = max(native_call, 1e-7)
    if method is None:
        method = "bracket" if bracket_available() else "difference"
    if warmup is None:
        warmup = max(2, min(MAX_WARMUP, math.ceil(WARMUP_NATIVE_SECONDS / per)))
    if calls is None:
        if method == "bracket":
            few = 1 if per >= BRACKET_ONE_CALL_SECONDS else 2
            calls = max(few, min(MAX_CALLS, math.ceil(BRACKET_COUNTED_NATIVE_SECONDS / per)))
        else:
            calls = max(3, min(MAX_CALLS, math.ceil(COUNTED_NATIVE_SECONDS / per)))
    return Plan(warmup, calls, processes, native_call, native_args, method)


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


def _tool_args(mode: str, out_file: str, method: str = "difference") -> list[str]:
    if method == "bracket":
        args = [
            "--tool=callgrind",
            "--instr-atstart=no",
            "--collect-atstart=no",
            f"--callgrind-out-file={out_file}",
        ]
    else:
        args = ["--tool=cachegrind", f"--cachegrind-out-file={out_file}"]
    if mode == "cycles":
        args.append("--cache-sim=yes")
        args.extend(f"--{name}={geometry}" for name, geometry in CACHE_GEOMETRY.items())
    elif method != "bracket":
        args.append("--cache-sim=no")  # callgrind's default already
    return args


def counting_env(
    pad: int,
    import_roots: Sequence[str],
    base: Mapping[str, str] | None = None,
    *,
    pycache: str | None = None,
    write_bytecode: bool = False,
) -> dict[str, str]:
    """The environment of a counting process: reproducible, and sized by ``pad``.

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
    env[_ENV_PAD] = "x" * (pad * _PAD_STEP)
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
    with every module it imports (the warm-up calls' lazy imports included)."""
    if pycache is None:
        return
    job_file = workdir / "job-prewarm.json"
    job_file.write_text(CountJob(**{**job.__dict__, "prewarm": True}).to_json())
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        # a failure here shows again, with its message, in the counted run
        subprocess.run(
            [sys.executable, "-m", "pytest_perfreplay.replay.counting", str(job_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=counting_env(0, job.import_roots, pycache=pycache, write_bytecode=True),
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
    calls: int  # fresh argument sets unpickled, in both runs
    gc: str
    counted: bool = True  # False in the reference run: the same, without the calls
    marker: bool = False  # call the callgrind markers around the counted calls
    method: str = "difference"  # or "bracket": client requests around each call
    cache_warm: bool = False  # bracket: one instrumented, uncollected call first (cycles)
    prewarm: bool = False  # native pre-run: load and warm up only (fills the bytecode cache)
    pycache: str | None = None  # PYTHONPYCACHEPREFIX of the counting processes

    def to_json(self) -> str:
        from dataclasses import asdict

        return json.dumps(asdict(self))


def run_under(
    vg: Valgrind,
    tool_args: Sequence[str],
    job: CountJob,
    *,
    pad: int,
    workdir: Path,
    timeout: float,
) -> Path:
    """Run one counting process under valgrind; return its log file (for errors)."""
    name = f"{pad}-{'calls' if job.counted else 'reference'}-{job.method}"
    job_file = workdir / f"job-{name}.json"
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
    try:
        with open(errfile, "wb") as err:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=counting_env(pad, job.import_roots, pycache=job.pycache),
                timeout=timeout,
                check=False,
            )
    except subprocess.TimeoutExpired:
        raise CountError(
            f"a counting process ran over {timeout:.0f} s and was killed; raise "
            "--perf-replay-max-time"
        ) from None
    if proc.returncode != 0:
        tail = _tail(errfile) or _tail(log)
        raise CountError(
            f"the counting process failed (exit {proc.returncode}) for {job.target}"
            + (f":\n{tail}" if tail else "")
        )
    return log


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


def _run_total(
    vg: Valgrind,
    mode: str,
    base: CountJob,
    pad: int,
    counted: bool,
    workdir: Path,
    timeout: float,
) -> dict[str, int]:
    """Event totals of one whole counting process (the counted or the reference run)."""
    job = CountJob(**{**base.__dict__, "counted": counted})
    out = workdir / f"cachegrind-{pad}-{'calls' if counted else 'reference'}.out"
    run_under(vg, _tool_args(mode, str(out)), job, pad=pad, workdir=workdir, timeout=timeout)
    return parse_cachegrind(out)


def _run_bracket(
    vg: Valgrind,
    mode: str,
    base: CountJob,
    pad: int,
    workdir: Path,
    timeout: float,
) -> dict[str, float]:
    """Per-call events of one bracketed process: (calls dump - no-op dump) / N."""
    job = CountJob(**{**base.__dict__, "method": "bracket", "cache_warm": mode == "cycles"})
    out = workdir / f"callgrind-{pad}.out"
    run_under(
        vg, _tool_args(mode, str(out), "bracket"), job, pad=pad, workdir=workdir, timeout=timeout
    )
    calls_part, noop_part = Path(f"{out}.1"), Path(f"{out}.2")
    if not (calls_part.exists() and noop_part.exists()):
        raise CountError(
            f"callgrind wrote no bracketed counts for {base.target} (expected {calls_part.name} "
            f"and {noop_part.name}): the client requests were not seen"
        )
    with_calls = parse_cachegrind(calls_part)
    overhead = parse_cachegrind(noop_part)
    return {k: (with_calls[k] - overhead.get(k, 0)) / base.calls for k in with_calls}


def _processes(
    vg: Valgrind,
    mode: str,
    base: CountJob,
    pads: Sequence[int],
    workdir: Path,
    timeout: float,
    jobs: int,
) -> list[dict[str, float]]:
    """Per-call events of each process: (N calls) minus (0 calls), divided by N.

    The runs are independent processes and valgrind counts are not disturbed by load,
    so they run ``jobs`` at a time.
    """
    if base.method == "bracket":
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(pads)))) as pool:
            return list(
                pool.map(lambda pad: _run_bracket(vg, mode, base, pad, workdir, timeout), pads)
            )
    runs = [(pad, counted) for pad in pads for counted in (True, False)]
    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(runs)))) as pool:
        totals = list(
            pool.map(lambda r: _run_total(vg, mode, base, r[0], r[1], workdir, timeout), runs)
        )
    out = []
    for i in range(0, len(totals), 2):
        with_calls, without = totals[i], totals[i + 1]
        out.append({k: (with_calls[k] - without.get(k, 0)) / base.calls for k in with_calls})
    return out


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
    jobs: int | None = None,
    timeout: float = 3600.0,
    valgrind: Valgrind | None = None,
    check_estimate: Callable[[float], None] | None = None,
    method: Method | None = None,
    probe_first: bool = True,
) -> CountResult:
    """Count the per-call instructions (or estimated cycles) of ``target`` on a snapshot.

    ``import_roots`` go first on the counting processes' ``sys.path``: a paired runner
    passes a baseline tree there and nothing for today's code. ``check_estimate`` is
    called with the estimated total wall seconds once the first run has shown what a
    process costs here; it may raise to refuse the rest. ``probe_first=False`` starts every
    process at once (the caller's estimate is well inside its budget). ``method`` defaults
    to ``bracket`` where client requests work, else ``difference``.
    """
    if mode not in MODES:
        raise CountError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if processes < 1 or calls < 1 or warmup < 0:
        raise CountError("processes and calls must be >= 1, warmup >= 0")
    vg = valgrind or preflight()
    if method is None:
        method = "bracket" if bracket_available() else "difference"
    jobs = jobs or max(1, min(4, os.cpu_count() or 1))
    base = CountJob(
        snapshot_path=str(snapshot_path),
        store=str(store),
        allow_unsigned=allow_unsigned,
        target=target,
        import_roots=tuple(str(r) for r in import_roots),
        warmup=warmup,
        calls=calls,
        gc=gc,
        method=method,
        pycache=bytecode_cache(),
    )
    runs_per_process = 1 if method == "bracket" else 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="perfreplay-count-") as tmp:
        workdir = Path(tmp)
        prewarm(base, pycache=base.pycache, workdir=workdir, timeout=timeout)
        if not probe_first:
            per_events = _processes(vg, mode, base, list(range(processes)), workdir, timeout, jobs)
        else:
            per_events = _processes(vg, mode, base, [0], workdir, timeout, jobs)
            if check_estimate is not None:
                one = time.perf_counter() - started
                rest = runs_per_process * (processes - 1)
                check_estimate(one * (1 + math.ceil(rest / max(runs_per_process, jobs))))
            if processes > 1:
                pads = list(range(1, processes))
                per_events += _processes(vg, mode, base, pads, workdir, timeout, jobs)
    elapsed = time.perf_counter() - started
    first = per_events[0]
    values = [cycles(e) if mode == "cycles" else e["Ir"] for e in per_events]
    mean, low, high, spread, summary_method = summarize(values, confidence)
    events = {k: sum(e[k] for e in per_events) / len(per_events) for k in first}
    tool = " ".join([*prefix(vg), "valgrind", *_tool_args(mode, "…", method)])
    if method == "bracket":
        how = (
            f"each process counted {calls} calls between client-request toggles, minus the "
            f"same loop around a no-op, after {warmup} uninstrumented warm-up calls"
            + (" and one instrumented cache-warming call" if mode == "cycles" else "")
        )
    else:
        how = f"each process counted with {calls} calls minus 0 calls after {warmup} warm-up calls"
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
    )
