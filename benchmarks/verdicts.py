"""Can you trust the verdict? False alarms and detection of real slowdowns, side by side.

The question every arm answers: "is the working tree slower than before?". Three pure-Python
workloads (~1, ~10, ~100 ms: integer arithmetic, string/dict processing, recursive calls),
each on a quiet machine and beside a CPU hog that switches on and off (2 s busy, 1.3 s
idle, one core). A real git repository is built; a slowdown of 2% or 5% is made by adding
that much work in its working tree (an uncommitted edit of the workloads' ``SLOW``).

Arms (sessions of all arms run in lockstep, so machine drift hits them alike):

* ``cross``: ``pytest --perf-replay`` with its defaults, compared by the plugin with the
  previous session in its ledger (no baseline): the verdict recorded as ``vs_previous``.
* ``cross-nomove``: the same ledger samples compared again without the reference
  workload's machine-move allowance (same drift): how much that allowance is worth.
* ``paired``: ``pytest --perf-replay --perf-replay-baseline=HEAD``, one session per
  comparison, verdict read from ``extra_info["paired"]``. Skipped, with a line saying so,
  when the installed plugin has no ``--perf-replay-baseline``.
* ``pb``: pytest-benchmark, each run compared with the previous saved run by
  ``--benchmark-compare --benchmark-compare-fail=median:5%`` (its gate fails slower only).
* ``pyperf``: a pyperf script per session, ``pyperf compare_to`` with the previous one.

Sequence per (workload, condition) cell: A/A sessions of the committed tree (each compared
with the one before), then for each slowdown alternating sessions "slow, committed": the
slow session compared with the committed one before it is one power trial. A paired session
is one trial on its own (the committed tree gives A/A trials, the slow tree power trials).

Reported per cell and arm: A/A false significance, detection of the 2% and 5% slowdowns,
wrong-direction verdicts, each as a count "k/n" with a 95% Wilson interval, and the median
wall time per comparison. Tables are printed after every cell (a long run's partial output
is usable).

Usage: ``python benchmarks/verdicts.py [--quick] [--aa N] [--power N] [--workloads ...]
[--conditions quiet,loaded] [--arms ...]``; ``--trials LOG [LOG ...]`` runs nothing: from
the ``paired trial`` lines of earlier runs' output it prints the paired arm's table (runs
of one version counted together) and a summary (interval widths, how comparisons ended,
the A/A ratios' lean, how far the process pairs disagree). ``--quick``: 2 A/A and 1 power trial per
slowdown per cell, shorter budgets (a smoke check of minutes). The full mode runs 100 A/A
comparisons per cell: hours.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_perfreplay.replay.paired import DEFAULT_PROCESS_PAIRS, MIN_WAVES
from pytest_perfreplay.replay.pairstats import decide
from pytest_perfreplay.replay.stats import compare

PY = sys.executable

WORK = """
from pytest_perfreplay import capture

SLOW = 0.0  # the working tree's edit: extra work, as a fraction


def _more(n):
    return n + round(n * SLOW)


@capture
def w1ms(n):
    total = 0
    for i in range(_more(n)):
        total = (total * 31 + i) % 1_000_003
    return total


@capture
def w10ms(n):
    counts = {}
    for i in range(_more(n)):
        line = " ".join(str(i * j % 97) for j in range(8))
        for token in line.split():
            counts[token] = counts.get(token, 0) + 1
    return len(counts)


def _fib(k):
    return k if k < 2 else _fib(k - 1) + _fib(k - 2)


@capture
def w100ms(n):
    return sum(_fib(15) for _ in range(_more(n)))
"""

TRAFFIC = """
import work

work.w1ms({w1ms})
work.w10ms({w10ms})
work.w100ms({w100ms})
"""

PB_TESTS = """
import work


def test_w1ms(benchmark):
    benchmark(work.w1ms, {w1ms})


def test_w10ms(benchmark):
    benchmark(work.w10ms, {w10ms})


def test_w100ms(benchmark):
    benchmark(work.w100ms, {w100ms})
"""

PYPERF_SCRIPT = """
import pyperf

import work

N = {{"w1ms": {w1ms}, "w10ms": {w10ms}, "w100ms": {w100ms}}}


def worker_args(cmd, args):
    cmd.extend(("--workload", args.workload))


runner = pyperf.Runner(add_cmdline_args=worker_args)
runner.argparser.add_argument("--workload")
args = runner.parse_args()
runner.bench_func(args.workload, getattr(work, args.workload), N[args.workload])
"""

# Run as ``python -c HOG <pid of the benchmark>``: it stops once that process is gone, so a
# benchmark killed by a signal (no clean-up runs) does not leave it running.
HOG = """
import os, sys, time
while os.getppid() == int(sys.argv[1]):
    end = time.perf_counter() + 2.0
    while time.perf_counter() < end:
        pass
    time.sleep(1.3)
"""

WORKLOADS = ("w1ms", "w10ms", "w100ms")
CONDITIONS = ("quiet", "loaded")
ARMS = ("cross", "cross-nomove", "paired", "pb", "pyperf")
SLOWDOWNS = (0.02, 0.05)


# -- statistics of the benchmark itself -------------------------------------------------


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    den = 1 + z * z / n
    center = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, center - half), min(1.0, center + half)


def rate(k: int, n: int) -> str:
    if n == 0:
        return "-"
    lo, hi = wilson(k, n)
    return f"{k}/{n} ({k / n:.0%}, [{lo:.0%}-{hi:.0%}])"


@dataclass
class Tally:
    aa: list[bool] = field(default_factory=list)  # significant, on identical code
    power: dict[float, list[bool]] = field(default_factory=dict)  # detected the slowdown
    wrong: int = 0  # significant in the wrong direction (power trials)
    walls: list[float] = field(default_factory=list)
    detectable: list[float] = field(default_factory=list)
    note: str = ""

    def add_power(self, slow: float, detected: bool, wrong: bool) -> None:
        self.power.setdefault(slow, []).append(detected)
        self.wrong += wrong


# -- the project ------------------------------------------------------------------------


def calibrate() -> dict[str, int]:
    """Loop sizes for ~1, ~10 and ~100 ms on this machine, timed with the real bodies."""
    namespace: dict[str, Any] = {}
    exec(WORK.replace("from pytest_perfreplay import capture", "capture = lambda f: f"), namespace)
    sizes = {}
    for name, goal in (("w1ms", 1e-3), ("w10ms", 1e-2), ("w100ms", 1e-1)):
        n = 50
        while True:
            t0 = time.perf_counter()
            namespace[name](n)
            took = time.perf_counter() - t0
            if took > goal / 4:
                break
            n *= 2
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            namespace[name](n)
            times.append(time.perf_counter() - t0)
        sizes[name] = max(1, round(n * goal / statistics.median(times)))
    return sizes


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def build_project(root: Path, sizes: dict[str, int], plugin: str | None) -> dict[str, str]:
    (root / "work.py").write_text(WORK)
    (root / "traffic.py").write_text(TRAFFIC.format(**sizes))
    (root / "test_pb.py").write_text(PB_TESTS.format(**sizes))
    (root / "bench_pyperf.py").write_text(PYPERF_SCRIPT.format(**sizes))
    (root / "pytest.ini").write_text("[pytest]\npythonpath = .\n")
    (root / ".gitignore").write_text(".perfreplay*/\n.benchmarks*/\nout/\n__pycache__/\n")
    git(root, "init", "-q")
    git(root, "config", "user.email", "bench@example.com")
    git(root, "config", "user.name", "bench")
    git(root, "add", ".")
    git(root, "commit", "-qm", "workloads")
    path = [str(root)] + ([plugin] if plugin else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), PYTHONDONTWRITEBYTECODE="1")
    for name in ("PERFREPLAY_CAPTURE", "PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS", "PERFREPLAY_STORE"):
        env.pop(name, None)
    for condition in CONDITIONS:  # one store (and ledger) per condition
        store = str(root / f".perfreplay-{condition}")
        subprocess.run(
            [PY, "traffic.py"],
            cwd=root,
            env=dict(env, PERFREPLAY_CAPTURE="1", PERFREPLAY_STORE=store),
            check=True,
        )
    (root / "out").mkdir()
    return env


def set_slow(root: Path, slow: float) -> None:
    """The working tree's edit: ``SLOW = slow`` (0 restores the committed file)."""
    text = WORK if slow == 0 else WORK.replace("SLOW = 0.0", f"SLOW = {slow!r}")
    (root / "work.py").write_text(text)


def has_baseline_flag(root: Path, env: dict[str, str]) -> bool:
    proc = subprocess.run(
        [PY, "-m", "pytest", "--help", "-p", "no:cacheprovider"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    return "--perf-replay-baseline" in proc.stdout


@contextmanager
def hog(on: bool) -> Iterator[None]:
    if not on:
        yield
        return
    proc = subprocess.Popen([PY, "-c", HOG, str(os.getpid())])
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- one session of each arm ------------------------------------------------------------


@dataclass
class Verdict:
    significant: bool
    direction: str  # "slower", "faster" or "same"
    wall: float
    detectable: float = math.nan


def _run(
    cmd: list[str], root: Path, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    return proc, time.perf_counter() - t0


def _fail(what: str, proc: subprocess.CompletedProcess[str]) -> SystemExit:
    return SystemExit(
        f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


def _direction(comparison: dict[str, Any]) -> str:
    # Comparison.ratio is baseline / candidate; its verdict already names the direction.
    verdict = comparison.get("verdict", "no change")
    return verdict if verdict in ("slower", "faster") else "same"


def _last_entry(store: Path, workload: str) -> dict[str, Any] | None:
    for path in (store / "history").glob("*/*.jsonl"):
        rows: list[dict[str, Any]] = [json.loads(line) for line in path.read_text().splitlines()]
        rows = [r for r in rows if "event" not in r]
        if rows and rows[-1]["target"].endswith(f":{workload}"):
            return rows[-1]
    return None


@dataclass
class Cell:
    root: Path
    env: dict[str, str]
    workload: str
    condition: str
    quick: bool
    pb_saved: bool = False
    pyperf_last: Path | None = None
    counter: int = 0
    slow: float = 0.0  # the working tree's slowdown in the current session
    paired_budget: float | None = None  # --perf-replay-max-time for the paired arm

    @property
    def store(self) -> Path:
        return self.root / f".perfreplay-{self.condition}"

    def _budget(self) -> list[str]:
        return ["--perf-replay-max-time=3"] if self.quick else []

    def cross(self) -> tuple[Verdict | None, Verdict | None]:
        """(as reported, recomputed without the machine-move allowance); None on the first."""
        cmd = [PY, "-m", "pytest", "--perf-replay", "-q", "-p", "no:cacheprovider"]
        cmd += ["-k", self.workload, *self._budget()]
        env = dict(self.env, PERFREPLAY_STORE=str(self.store))
        before = _last_entry(self.store, self.workload)
        proc, wall = _run(cmd, self.root, env)
        entry = _last_entry(self.store, self.workload)
        if proc.returncode != 0 or entry is None:
            raise _fail("perfreplay session", proc)
        vs = entry.get("vs_previous")
        if vs is None or before is None:
            return None, None
        reported = Verdict(vs["significant"], _direction(vs), wall, vs.get("detectable", math.nan))
        plain = compare(before["samples"], entry["samples"], drift=entry.get("drift") or 0.0)
        nomove = Verdict(plain.significant, _direction({"verdict": plain.verdict}), wall)
        return reported, nomove

    def paired(self) -> Verdict:
        out = self.root / "out" / "paired.json"
        out.unlink(missing_ok=True)
        cmd = [PY, "-m", "pytest", "--perf-replay", "--perf-replay-baseline=HEAD", "-q"]
        cmd += ["-p", "no:cacheprovider", "-k", self.workload, f"--benchmark-json={out}"]
        if self.paired_budget is not None:
            cmd.append(f"--perf-replay-max-time={self.paired_budget:g}")
        else:
            cmd += self._budget()
        env = dict(self.env, PERFREPLAY_STORE=str(self.store))
        proc, wall = _run(cmd, self.root, env)
        if proc.returncode != 0 or not out.exists():
            raise _fail("paired session", proc)
        (bench,) = json.loads(out.read_text())["benchmarks"]
        v = bench["extra_info"]["paired"]
        # One line per trial: the rates in the table come from these.
        keep = (
            "ratio",
            "low",
            "high",
            "significant",
            "process_pairs",
            "pairs",
            "stop_reason",
            "pair_ratios",
        )
        print(
            "paired trial",
            json.dumps(
                {
                    **{k: v.get(k) for k in keep},
                    "wall": round(wall, 1),
                    "slow": self.slow,
                    "condition": self.condition,
                    "workload": self.workload,
                    **({"budget": self.paired_budget} if self.paired_budget is not None else {}),
                }
            ),
            flush=True,
        )
        return Verdict(bool(v["significant"]), str(v["direction"]), wall)

    def pb(self) -> Verdict | None:
        storage = f"file://{self.root}/.benchmarks-{self.condition}-{self.workload}"
        cmd = [PY, "-m", "pytest", "test_pb.py", "-q", "-p", "no:cacheprovider"]
        cmd += ["-k", self.workload, f"--benchmark-storage={storage}", "--benchmark-autosave"]
        if self.pb_saved:
            cmd += ["--benchmark-compare", "--benchmark-compare-fail=median:5%"]
        proc, wall = _run(cmd, self.root, self.env)
        failed = "Performance has regressed" in proc.stdout + proc.stderr
        if proc.returncode != 0 and not failed:
            raise _fail("pytest-benchmark session", proc)
        first = not self.pb_saved
        self.pb_saved = True
        if first:
            return None
        return Verdict(failed, "slower" if failed else "same", wall)

    def pyperf(self) -> Verdict | None:
        self.counter += 1
        out = self.root / "out" / f"pyperf-{self.condition}-{self.workload}-{self.counter}.json"
        cmd = [PY, "bench_pyperf.py", "--workload", self.workload, "--quiet", "-o", str(out)]
        if self.quick:
            cmd.append("--fast")
        proc, wall = _run(cmd, self.root, self.env)
        if proc.returncode != 0:
            raise _fail("pyperf run", proc)
        previous, self.pyperf_last = self.pyperf_last, out
        if previous is None:
            return None
        proc, more = _run(
            [PY, "-m", "pyperf", "compare_to", str(previous), str(out)], self.root, self.env
        )
        if proc.returncode != 0:
            raise _fail("pyperf compare_to", proc)
        text = proc.stdout
        if "Not significant" in text or "not significant" in text:
            return Verdict(False, "same", wall + more)
        direction = "slower" if "slower" in text else "faster" if "faster" in text else "same"
        return Verdict(direction != "same", direction, wall + more)


# -- the experiment ---------------------------------------------------------------------


def step(cell: Cell, arms: list[str], tallies: dict[str, Tally], slow: float, trial: str) -> None:
    """One session of every arm with the working tree at ``slow``; ``trial`` says what the
    comparison with the previous session is: "aa", "power", or "none" (a reset session)."""
    set_slow(cell.root, slow)
    cell.slow = slow
    results: dict[str, Verdict | None] = {}
    if "cross" in arms or "cross-nomove" in arms:
        results["cross"], results["cross-nomove"] = cell.cross()
    if "pb" in arms:
        results["pb"] = cell.pb()
    if "pyperf" in arms:
        results["pyperf"] = cell.pyperf()
    if "paired" in arms and not tallies["paired"].note:
        # Paired trials stand alone: the committed tree is A/A, a slow tree a power trial.
        pv = cell.paired()
        t = tallies["paired"]
        t.walls.append(pv.wall)
        if slow == 0:
            t.aa.append(pv.significant)
        else:
            t.add_power(
                slow,
                pv.significant and pv.direction == "slower",
                pv.significant and pv.direction == "faster",
            )
    for arm, v in results.items():
        if arm not in arms or v is None or trial == "none":
            continue
        t = tallies[arm]
        t.walls.append(v.wall)
        if not math.isnan(v.detectable):
            t.detectable.append(v.detectable)
        if trial == "aa":
            t.aa.append(v.significant)
        else:
            t.add_power(
                slow,
                v.significant and v.direction == "slower",
                v.significant and v.direction == "faster",
            )


def run_cell(
    cell: Cell, arms: list[str], aa: int, power: int, paired_note: str
) -> dict[str, Tally]:
    tallies = {arm: Tally() for arm in arms}
    if "paired" in tallies and paired_note:
        tallies["paired"].note = paired_note
    plan = [(0.0, "none")]  # the first session has nothing to compare with
    plan += [(0.0, "aa")] * aa
    for slow in SLOWDOWNS:
        plan += [(slow, "power"), (0.0, "none")] * power  # "none": back to the committed tree
    for i, (slow, trial) in enumerate(plan, start=1):
        step(cell, arms, tallies, slow, trial)
        if i % 10 == 0 and i < len(plan):  # a long run's partial output stays usable
            print(f"\n### {cell.workload} {cell.condition}: {i}/{len(plan)} sessions", flush=True)
            print_table([(cell.workload, cell.condition, arm, tallies[arm]) for arm in arms])
    set_slow(cell.root, 0.0)
    return tallies


def print_table(rows: list[tuple[str, str, str, Tally]]) -> None:
    print(
        "| workload | machine | arm | A/A significant | 2% slowdown detected | "
        "5% slowdown detected | wrong direction | wall per comparison (median s) | "
        "smallest detectable (median) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for workload, condition, arm, t in rows:
        if t.note:
            print(f"| {workload} | {condition} | {arm} | {t.note} | | | | | |")
            continue
        p2, p5 = t.power.get(0.02, []), t.power.get(0.05, [])
        trials = len(p2) + len(p5)
        wall = f"{statistics.median(t.walls):.1f}" if t.walls else "-"
        det = f"{statistics.median(t.detectable):.1%}" if t.detectable else "-"
        print(
            f"| {workload} | {condition} | {arm} | {rate(sum(t.aa), len(t.aa))} | "
            f"{rate(sum(p2), len(p2))} | {rate(sum(p5), len(p5))} | {t.wrong}/{trials} | "
            f"{wall} | {det} |"
        )
    sys.stdout.flush()


def sign_test(k: int, n: int) -> float:
    """Two-sided exact binomial p of ``k`` of ``n`` ratios above 1.0 when each side is as
    likely: the lean check that no outlier can make."""
    if n == 0:
        return 1.0
    far = max(k, n - k)
    tail: float = sum(math.comb(n, j) for j in range(far, n + 1)) / 2**n
    return min(1.0, 2 * tail)


def read_trials(lines: Sequence[str]) -> list[dict[str, Any]]:
    """The ``paired trial`` lines of one run's output, each with its workload."""
    trials_seen: list[dict[str, Any]] = []
    for line in lines:
        if line.startswith("paired trial "):
            trials_seen.append(json.loads(line[len("paired trial ") :]))
        elif line.startswith("## after "):
            # A cell's closing header names its workload: older trial lines lack it.
            workload = line.split()[2]
            for trial in trials_seen:
                trial.setdefault("workload", workload)
    return trials_seen


def _workload(trial: dict[str, Any]) -> str:
    """A trial's workload, with the paired budget when the run set one (a row of its own)."""
    workload = str(trial.get("workload", ""))
    return f"{workload} @{trial['budget']:g} s" if "budget" in trial else workload


def tally_trials(trials: Sequence[dict[str, Any]]) -> list[tuple[str, str, str, Tally]]:
    """The paired arm's table rows rebuilt from trial lines, so that runs of one version can
    be counted together (each trial line is one whole comparison)."""
    tallies: dict[tuple[str, str], Tally] = {}
    for trial in trials:
        t = tallies.setdefault((_workload(trial), trial["condition"]), Tally())
        t.walls.append(trial["wall"])
        if trial["slow"] == 0:
            t.aa.append(bool(trial["significant"]))
        else:
            significant = bool(trial["significant"])
            t.add_power(
                trial["slow"],
                significant and trial["ratio"] > 1,
                significant and trial["ratio"] < 1,
            )
    return [(w, c, "paired", t) for (w, c), t in sorted(tallies.items())]


def summarize_trials(lines: Sequence[str]) -> list[str]:
    """What a run's ``paired trial`` lines say beyond the table, per workload, condition
    and slowdown: how the comparisons ended, how wide their intervals were, and whether the
    A/A ratios lean to one side (the geometric mean with its t statistic over trials, and
    a sign test)."""
    return summarize(read_trials(lines))


def summarize(trials_seen: Sequence[dict[str, Any]]) -> list[str]:
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for trial in trials_seen:
        key = (_workload(trial), trial["condition"], trial["slow"])
        groups.setdefault(key, []).append(trial)
    out = []
    for (workload, condition, slow), trials in sorted(groups.items()):
        logs = [math.log(t["ratio"]) for t in trials]
        mean = statistics.fmean(logs)
        t_stat = (
            mean / (statistics.stdev(logs) / math.sqrt(len(logs))) if len(logs) > 2 else math.nan
        )
        half = statistics.median((t["high"] - t["low"]) / 2 / t["ratio"] for t in trials)
        budget = sum("budget" in t["stop_reason"] for t in trials)
        pp = [t["process_pairs"] for t in trials]
        what = "A/A" if slow == 0 else f"{slow:.0%} slower"
        significant = sum(t["significant"] for t in trials)
        above = sum(t["ratio"] > 1 for t in trials)
        sign_p = sign_test(above, len(trials))
        out.append(
            f"{workload + ' ' if workload else ''}{condition}, {what}: {len(trials)} "
            f"comparisons, {significant} significant; "
            f"ratio geometric mean {math.exp(mean):.4f} (t {t_stat:.2f} over the comparisons); "
            f"above 1.0 in {above} of {len(trials)} (sign test p {sign_p:.2g}); "
            f"interval half-width median {half:.2%}; {len(trials) - budget} decided,"
            f" {budget} on the budget; {min(pp)}-{max(pp)} process pairs; wall median "
            f"{statistics.median(t['wall'] for t in trials):.1f} s, longest "
            f"{max(t['wall'] for t in trials):.1f} s"
        )
        means = [mean_interval(t["pair_ratios"]) for t in trials if t.get("pair_ratios")]
        if means:
            mean_half = statistics.median((hi - lo) / 2 for _, lo, hi in means)
            mean_significant = sum(decide(lo, hi, 0.01).significant for _, lo, hi in means)
            out.append(
                f"  the same process pairs by a mean (t interval, the statistic before ranks), "
                f"in {len(means)} of them: interval half-width median {mean_half:.2%}, "
                f"{mean_significant} clear of the 1% band"
            )
            spreads = [pair_spread(t["pair_ratios"]) for t in trials if t.get("pair_ratios")]
            out.append(
                f"  process pairs' spread (robust SD of a comparison's log pair ratios, "
                f"1.4826 x MAD): median {statistics.median(spreads):.2%} over {len(spreads)}"
            )
        if slow == 0:
            out.append(coverage(trials))
            out.extend(first_look([t["pair_ratios"] for t in trials if t.get("pair_ratios")]))
    return out


def coverage(trials: Sequence[dict[str, Any]]) -> str:
    """How often identical code's 95% interval left out 1.0, the true ratio: about 5% if
    the interval is as wide as the noise says. The verdict itself needs the interval clear
    of the minimum-effect band, so it calls far fewer; this checks the interval."""
    above = sum(t["low"] > 1 for t in trials)
    below = sum(t["high"] < 1 for t in trials)
    return (
        f"  interval check: the 95% interval left out 1.0 in {rate(above + below, len(trials))}"
        f" ({above} above, {below} below); a calibrated one does about 5% of the time"
    )


FIRST_LOOK = MIN_WAVES * DEFAULT_PROCESS_PAIRS  # process pairs at the stopping rule's first look


def one_way(ratios: Sequence[float]) -> bool:
    """Every ratio on the same side of 1.0."""
    return all(x > 1 for x in ratios) or all(x < 1 for x in ratios)


def first_look(pair_ratios: Sequence[Sequence[float]]) -> list[str]:
    """How often identical code's first FIRST_LOOK process pairs all fell on one side of
    1.0, beside what chance gives when each pair is as likely to fall either side: the
    pattern behind a false call at the first look. Then the same over whole comparisons."""
    whole = [r for r in pair_ratios if len(r) >= FIRST_LOOK]
    if not whole:
        return []
    looked = [r[:FIRST_LOOK] for r in whole]
    one_side = sum(map(one_way, looked))
    chance = len(looked) * 2 / 2**FIRST_LOOK
    # Over a whole comparison, chance shrinks as pairs are added: a comparison of 16 pairs
    # all one way happens 2 times in 65536, so more than chance means the whole session
    # shifted, which no number of process pairs inside it averages away.
    shifted = [r for r in whole if one_way(r)]
    shown = ", ".join(f"{len(r)} pairs {'slower' if r[0] > 1 else 'faster'}" for r in shifted)
    return [
        f"  first look: the first {FIRST_LOOK} process pairs all on one side of 1.0 in "
        f"{one_side} of {len(looked)}; chance alone (each pair as likely either side) "
        f"expects {chance:.1f}",
        f"  whole comparison: every process pair on one side of 1.0 in {len(shifted)} of "
        f"{len(whole)}{f' ({shown})' if shown else ''}; chance alone expects "
        f"{sum(2 / 2 ** len(r) for r in whole):.2f}",
    ]


def pair_spread(pair_ratios: Sequence[float]) -> float:
    """How far a comparison's process pairs disagree: 1.4826 x the median absolute
    deviation of their log ratios (the SD, for normal data; a few far-off pairs barely
    move it)."""
    logs = [math.log(r) for r in pair_ratios]
    centre = statistics.median(logs)
    return 1.4826 * statistics.median(abs(x - centre) for x in logs)


def mean_interval(pair_ratios: Sequence[float], confidence: float = 0.95) -> tuple[float, ...]:
    """Ratio, low, high from the mean of the process pairs' log ratios with its Student-t
    interval: the earlier statistic (a random effect, which with equal counts per process
    pair reduces to this), set beside the ranks on the same comparisons."""
    from scipy import stats

    logs = [math.log(r) for r in pair_ratios]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(mean), 0.0, math.inf
    half = stats.t.ppf(0.5 + confidence / 2, len(logs) - 1) * statistics.stdev(logs)
    half /= math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke check: minutes, not hours")
    parser.add_argument("--aa", type=int, default=None, help="A/A comparisons per cell")
    parser.add_argument("--power", type=int, default=None, help="trials per slowdown per cell")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--keep", action="store_true", help="keep the scratch project")
    parser.add_argument(
        "--paired-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="--perf-replay-max-time for the paired arm (its default budget when not given)",
    )
    parser.add_argument(
        "--plugin-path",
        default=None,
        help="import pytest_perfreplay from this folder in the sessions (another checkout)",
    )
    parser.add_argument(
        "--trials",
        metavar="LOG",
        nargs="+",
        help="no run: the paired arm's table and summary from the 'paired trial' lines of "
        "earlier runs' output (several logs of one version are counted together)",
    )
    args = parser.parse_args()
    if args.trials:
        trials: list[dict[str, Any]] = []
        for log in args.trials:
            found = read_trials(Path(log).read_text().splitlines())
            print(f"# {len(found)} paired trials from {log}")
            trials += found
        print_table(tally_trials(trials))
        print("\n".join(summarize(trials)))
        return
    aa = args.aa if args.aa is not None else (2 if args.quick else 100)
    power = args.power if args.power is not None else (1 if args.quick else 40)
    arms = args.arms.split(",")
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise SystemExit(f"unknown arm(s) {sorted(unknown)}; choose from {', '.join(ARMS)}")

    root = Path(tempfile.mkdtemp(prefix="perfreplay-verdicts-"))
    started = time.perf_counter()
    try:
        sizes = calibrate()
        env = build_project(root, sizes, args.plugin_path)
        paired_note = ""
        if "paired" in arms and not has_baseline_flag(root, env):
            paired_note = "skipped: this pytest-perfreplay has no --perf-replay-baseline"
            print(f"paired arm {paired_note}", flush=True)
        print(
            f"# verdicts ({'quick' if args.quick else 'full'}): {aa} A/A comparisons and "
            f"{power} trials per slowdown per cell; loop sizes {sizes}; python "
            f"{sys.version.split()[0]}, {os.cpu_count()} CPUs; load average at start "
            f"{os.getloadavg()[0]:.1f}"
            + (f"; paired budget {args.paired_budget:g} s" if args.paired_budget else ""),
            flush=True,
        )
        rows: list[tuple[str, str, str, Tally]] = []
        for condition in args.conditions.split(","):
            for workload in args.workloads.split(","):
                t0 = time.perf_counter()
                cell = Cell(
                    root, env, workload, condition, args.quick, paired_budget=args.paired_budget
                )
                with hog(condition == "loaded"):
                    tallies = run_cell(cell, arms, aa, power, paired_note)
                rows.extend((workload, condition, arm, tallies[arm]) for arm in arms)
                print(
                    f"\n## after {workload} {condition} ({time.perf_counter() - t0:.0f} s; "
                    f"load average {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
                print_table(rows)
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
    finally:
        if args.keep:
            print(f"scratch project kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
