"""Deterministic counts: a snapshot's call counted under valgrind, in fresh processes.

The clock on a shared runner moves by several percent between runs; the number of
instructions a call executes does not, once the process is made reproducible:

* ``PYTHONHASHSEED=0`` (a random seed alone spreads counts by ~0.5%);
* ASLR off with ``setarch -R`` where it exists;
* pymalloc kept (``PYTHONMALLOC=malloc`` adds ~20% and makes counts bimodal);
* warm-up calls first: the 3.11 specializing interpreter quickens a code object after
  about eight executions, and each quickening changes the count.

valgrind counts a whole process, start-up included (tens of millions of instructions
against ~12M for a 1 ms call). So each process is run twice in the same set-up: once
with ``N`` counted calls and once with none; the difference divided by ``N`` is the
per-call count. Both runs unpickle the same ``N`` fresh argument sets and apply the same
GC policy, so neither the unpickling nor the start-up is in the figure.

Processes differ on purpose in the size of their environment (a padding variable), which
shifts the stack and nothing else; the spread over processes therefore shows how much
the count depends on memory layout, which a different machine or CI job would change.

``count_calls`` is the whole parent side; it knows nothing of pytest, so a paired runner
can call it for a baseline tree (an extra import root) and for today's code alike.
"""

from __future__ import annotations

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

#: Slowdown of a call under the tool against native, measured on the development machine
#: (cachegrind without cache simulation ~19x, with it ~80x; callgrind ~200x), rounded up.
SLOWDOWN: Mapping[str, float] = {"instructions": 25.0, "cycles": 90.0, "callgrind": 220.0}

#: Counted calls are chosen so that they add up to at least this much native time: the
#: run-to-run noise of a whole process is a few hundred instructions, which is then below
#: 1e-5 of the counted work.
COUNTED_NATIVE_SECONDS = 0.02
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


@dataclass(frozen=True)
class Plan:
    warmup: int
    calls: int
    processes: int
    native_call: float  # seconds, one plain call (median of the timed ones)
    native_args: float  # seconds to unpickle one fresh argument set

    def work_seconds(self, mode: str) -> float:
        """Native seconds inside one counting run, times the tool's slowdown."""
        per = (self.warmup + self.calls) * (self.native_call + self.native_args)
        return SLOWDOWN[mode] * per

    def estimate(self, mode: str, *, startup: float, jobs: int) -> float:
        """Wall seconds of the whole count: two runs per process, ``jobs`` at a time."""
        runs = 2 * self.processes
        with_calls = startup + self.work_seconds(mode)
        without = startup + SLOWDOWN[mode] * (self.warmup + self.calls) * self.native_args
        without += SLOWDOWN[mode] * self.warmup * self.native_call
        return (with_calls + without) * self.processes / max(1, min(jobs, runs))


def plan(
    native_call: float,
    native_args: float,
    *,
    processes: int,
    warmup: int | None = None,
    calls: int | None = None,
) -> Plan:
    """Choose warm-up and counted calls from the native time of one call."""
    per = max(native_call, 1e-7)
    if warmup is None:
        warmup = max(2, min(MAX_WARMUP, math.ceil(WARMUP_NATIVE_SECONDS / per)))
    if calls is None:
        calls = max(3, min(MAX_CALLS, math.ceil(COUNTED_NATIVE_SECONDS / per)))
    return Plan(warmup, calls, processes, native_call, native_args)


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


def _tool_args(mode: str, out_file: str) -> list[str]:
    args = ["--tool=cachegrind", f"--cachegrind-out-file={out_file}"]
    if mode == "cycles":
        args.append("--cache-sim=yes")
        args.extend(f"--{name}={geometry}" for name, geometry in CACHE_GEOMETRY.items())
    else:
        args.append("--cache-sim=no")
    return args


def counting_env(
    pad: int, import_roots: Sequence[str], base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a counting process: reproducible, and sized by ``pad``."""
    env = dict(os.environ if base is None else base)
    env["PYTHONHASHSEED"] = "0"
    env.pop("PYTHONMALLOC", None)  # keep pymalloc: the system malloc is slower and bimodal
    env.pop("PYTHONDEVMODE", None)
    env["PERFREPLAY_CAPTURE"] = "0"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a run must not change what the next one reads
    paths = [*import_roots, *(p for p in sys.path if p)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env[_ENV_PAD] = "x" * (pad * _PAD_STEP)
    return env


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
    name = f"{pad}-{'calls' if job.counted else 'reference'}"
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
                env=counting_env(pad, job.import_roots),
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
    """The ``events:`` / ``summary:`` totals of a cachegrind output file."""
    events: list[str] = []
    summary: list[int] = []
    with open(path) as fh:
        for line in fh:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("summary:"):
                summary = [int(x) for x in line.split()[1:]]
    if not events or len(events) != len(summary):
        raise CountError(f"cannot read valgrind's totals from {path}")
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
) -> CountResult:
    """Count the per-call instructions (or estimated cycles) of ``target`` on a snapshot.

    ``import_roots`` go first on the counting processes' ``sys.path``: a paired runner
    passes a baseline tree there and nothing for today's code. ``check_estimate`` is
    called with the estimated total wall seconds once the first run has shown what a
    process costs here; it may raise to refuse the rest.
    """
    if mode not in MODES:
        raise CountError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if processes < 1 or calls < 1 or warmup < 0:
        raise CountError("processes and calls must be >= 1, warmup >= 0")
    vg = valgrind or preflight()
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
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="perfreplay-count-") as tmp:
        workdir = Path(tmp)
        per_events = _processes(vg, mode, base, [0], workdir, timeout, jobs)
        if check_estimate is not None:
            one = time.perf_counter() - started
            check_estimate(one * (1 + math.ceil(2 * (processes - 1) / max(2, jobs))))
        if processes > 1:
            pads = list(range(1, processes))
            per_events += _processes(vg, mode, base, pads, workdir, timeout, jobs)
    elapsed = time.perf_counter() - started
    first = per_events[0]
    values = [cycles(e) if mode == "cycles" else e["Ir"] for e in per_events]
    mean, low, high, spread, method = summarize(values, confidence)
    events = {k: sum(e[k] for e in per_events) / len(per_events) for k in first}
    tool = " ".join([*prefix(vg), "valgrind", *_tool_args(mode, "…")])
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
        method=f"{method}; each process counted with {calls} calls minus 0 calls "
        f"after {warmup} warm-up calls, PYTHONHASHSEED=0"
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
    )
