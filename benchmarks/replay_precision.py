"""How honest is each harness's precision claim, and what does it cost?

Three pure-Python workloads (~1, ~10, ~100 ms), measured side by side by:

* ``pb-default``: pytest-benchmark with its defaults;
* ``pb-1%``: pytest-benchmark with ``--benchmark-precision=0.01``;
* ``pyperf``: pyperf's defaults (20 worker processes x 3 values; ``--quick`` uses
  pyperf's own ``--fast``, 6 processes);
* ``perfreplay``: ``pytest --perf-replay`` with a 1% target, in-process;
* ``perfreplay-p4``: the same with ``--perf-replay-processes 4``.

For every session we record the wall time of the whole command and the interval the tool
claims. Claimed intervals: perfreplay's own (95%); pytest-benchmark's is the
``mean +/- z*s/sqrt(n)`` that its precision rule uses (z = 1.96); pyperf prints
``mean +/- std dev`` and no interval, so we give it the Student-t 95% interval of its mean
over all values, which is the most it could claim.

**Cross-session truth**: S separate sessions per tool and workload; the CV of their
estimates, and the share of (i, j != i) pairs where session i's claimed interval contains
session j's estimate. **A/A**: the perfreplay sessions are runs of identical code; every pair
is compared with the comparison perfreplay reports (Mann-Whitney + bootstrap ratio with a
1% minimum effect, widened for the default 2% between-session drift, in-process; Welch on
per-process estimates with processes), and we report the share called significant, with
and without the drift allowance.

Usage: ``python benchmarks/replay_precision.py [--quick] [--sessions S] [--aa-runs N]``.
Prints a markdown table. Sessions are interleaved across tools so that drifting machine
load hits every tool alike.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pytest_perfreplay.replay.stats import compare, compare_groups

PY = sys.executable

WORK = """
from pytest_perfreplay import capture


def _spin(n):
    total = 0
    for i in range(n):
        total = (total * 31 + i) % 1_000_003
    return total


@capture
def w1ms(n):
    return _spin(n)


@capture
def w10ms(n):
    return _spin(n)


@capture
def w100ms(n):
    return _spin(n)
"""

TRAFFIC = """
import work
work.w1ms({n1})
work.w10ms({n10})
work.w100ms({n100})
"""

PB_TESTS = """
import work

def test_w1ms(benchmark):
    benchmark(work.w1ms, {n1})

def test_w10ms(benchmark):
    benchmark(work.w10ms, {n10})

def test_w100ms(benchmark):
    benchmark(work.w100ms, {n100})
"""

PYPERF_SCRIPT = """
import pyperf
import work

N = {{"w1ms": {n1}, "w10ms": {n10}, "w100ms": {n100}}}
def worker_args(cmd, args):
    cmd.extend(("--workload", args.workload))  # pyperf workers need our option too

runner = pyperf.Runner(add_cmdline_args=worker_args)
runner.argparser.add_argument("--workload")
args = runner.parse_args()
runner.bench_func(args.workload, getattr(work, args.workload), N[args.workload])
"""

WORKLOADS = ("w1ms", "w10ms", "w100ms")
TOOLS = ("pb-default", "pb-1%", "pyperf", "perfreplay", "perfreplay-p4")


@dataclass
class Session:
    tool: str
    workload: str
    wall: float
    estimate: float
    low: float
    high: float
    samples: list[float]
    groups: list[float]
    note: str = ""


def calibrate() -> dict[str, int]:
    def spin(n: int) -> int:
        total = 0
        for i in range(n):
            total = (total * 31 + i) % 1_000_003
        return total

    n = 20_000
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        spin(n)
        times.append(time.perf_counter() - t0)
    per = statistics.median(times) / n
    return {"w1ms": int(1e-3 / per), "w10ms": int(1e-2 / per), "w100ms": int(1e-1 / per)}


def setup(work: Path, n: dict[str, int]) -> dict[str, str]:
    fmt = {"n1": n["w1ms"], "n10": n["w10ms"], "n100": n["w100ms"]}
    (work / "work.py").write_text(WORK)
    (work / "traffic.py").write_text(TRAFFIC.format(**fmt))
    (work / "test_pb.py").write_text(PB_TESTS.format(**fmt))
    (work / "bench_pyperf.py").write_text(PYPERF_SCRIPT.format(**fmt))
    (work / "pytest.ini").write_text("[pytest]\npythonpath = .\n")
    env = dict(os.environ, PYTHONPATH=str(work), PYTHONDONTWRITEBYTECODE="1")
    for name in ("PERFREPLAY_CAPTURE", "PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS"):
        env.pop(name, None)
    env["PERFREPLAY_STORE"] = str(work / ".perfreplay")
    subprocess.run([PY, "traffic.py"], cwd=work, env=dict(env, PERFREPLAY_CAPTURE="1"), check=True)
    return env


def _t95(values: list[float]) -> float:
    from scipy import stats

    n = len(values)
    return float(stats.t.ppf(0.975, n - 1)) * statistics.stdev(values) / math.sqrt(n)


def run_session(tool: str, workload: str, work: Path, env: dict[str, str], quick: bool) -> Session:
    out = work / f"out-{tool}-{workload}.json"
    out.unlink(missing_ok=True)
    if tool.startswith("pb"):
        cmd = [PY, "-m", "pytest", "test_pb.py", "-k", workload, "-q", f"--benchmark-json={out}"]
        cmd += ["-p", "no:cacheprovider"]
        if tool == "pb-1%":
            cmd.append("--benchmark-precision=0.01")
    elif tool == "pyperf":
        cmd = [PY, "bench_pyperf.py", "--workload", workload, "--quiet", "-o", str(out)]
        if quick:
            cmd.append("--fast")
    else:
        cmd = [PY, "-m", "pytest", "--perf-replay", "--perf-replay-precision=1%", "-q"]
        cmd += ["-k", workload, f"--benchmark-json={out}", "-p", "no:cacheprovider"]
        if tool == "perfreplay-p4":
            cmd.append("--perf-replay-processes=4")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"{tool} {workload} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    data = json.loads(out.read_text())
    if tool == "pyperf":
        values = [v for run in data["benchmarks"][0]["runs"] for v in run.get("values", [])]
        loops = data["benchmarks"][0]["runs"][-1]["metadata"].get("loops", 1)
        del loops  # pyperf already stores per-loop values
        mean = statistics.fmean(values)
        hw = _t95(values)
        per_run = [
            statistics.fmean(run["values"])
            for run in data["benchmarks"][0]["runs"]
            if run.get("values")
        ]
        return Session(tool, workload, wall, mean, mean - hw, mean + hw, values, per_run)
    (bench,) = data["benchmarks"]
    st = bench["stats"]
    if tool.startswith("pb"):
        hw = 1.96 * st["stddev"] / math.sqrt(st["rounds"])
        return Session(
            tool, workload, wall, st["mean"], st["mean"] - hw, st["mean"] + hw, st["data"], []
        )
    info = bench["extra_info"]
    low, high = info["interval"]
    ledger = work / ".perfreplay" / "history"
    groups: list[float] = []
    for path in ledger.glob("*/*.jsonl"):
        last = json.loads(path.read_text().splitlines()[-1])
        if last["target"].endswith(workload) and last.get("group_estimates"):
            groups = last["group_estimates"]
    note = "" if info["target_met"] else "missed"
    return Session(tool, workload, wall, info["estimate"], low, high, st["data"], groups, note)


def summarize(sessions: list[Session]) -> dict[str, float]:
    ests = [s.estimate for s in sessions]
    cover = [a.low <= b.estimate <= a.high for a, b in itertools.permutations(sessions, 2)]
    claimed = statistics.median((s.high - s.low) / 2 / s.estimate for s in sessions)
    return {
        "wall": statistics.median(s.wall for s in sessions),
        "estimate": statistics.median(ests),
        "claimed": claimed,
        "cv": statistics.stdev(ests) / statistics.fmean(ests) if len(ests) > 1 else math.nan,
        "cover": sum(cover) / len(cover) if cover else math.nan,
        "missed": sum(1 for s in sessions if s.note == "missed"),
        "n": len(sessions),
    }


DRIFT = 0.02  # --perf-replay-drift's default: what a first comparison allows


def aa_share(sessions: list[Session]) -> tuple[int, int, int]:
    """(significant without a drift allowance, significant as reported, pairs)."""
    naive = sig = total = 0
    for a, b in itertools.combinations(sessions, 2):
        if len(a.groups) >= 2 and len(b.groups) >= 2:
            c = n = compare_groups(a.groups, b.groups)
        else:
            n = compare(a.samples, b.samples)
            c = compare(a.samples, b.samples, drift=DRIFT)
        total += 1
        naive += n.significant
        sig += c.significant
    return naive, sig, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="3 sessions, 6 A/A runs, pyperf --fast"
    )
    parser.add_argument("--sessions", type=int, default=None)
    parser.add_argument("--aa-runs", type=int, default=None)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    sessions_n = args.sessions or (3 if args.quick else 5)
    aa_n = max(sessions_n, args.aa_runs or (6 if args.quick else 20))
    workloads = args.workloads.split(",")
    tools = args.tools.split(",")

    work = Path(tempfile.mkdtemp(prefix="perfreplay-bench-"))
    started = time.perf_counter()
    try:
        n = calibrate()
        env = setup(work, n)
        print(
            f"# replay_precision ({'quick' if args.quick else 'full'}): {sessions_n} sessions, "
            f"{aa_n} A/A runs, loop sizes {n}, python {sys.version.split()[0]}, "
            f"{os.cpu_count()} CPUs",
            flush=True,
        )
        results: dict[tuple[str, str], list[Session]] = {}
        for i in range(aa_n):
            for workload in workloads:
                for tool in tools:
                    if i >= sessions_n and not tool.startswith("perfreplay"):
                        continue  # extra sessions only for perfreplay's A/A
                    s = run_session(tool, workload, work, env, args.quick)
                    results.setdefault((tool, workload), []).append(s)
                    print(
                        f"  session {i + 1} {tool:<14} {workload:<6} {s.estimate * 1e3:9.4f} ms "
                        f"[{s.low * 1e3:.4f}, {s.high * 1e3:.4f}] wall {s.wall:5.1f} s {s.note}",
                        flush=True,
                    )
        print()
        print(
            "| workload | tool | wall/session (s) | estimate (ms) | claimed ± (median) | "
            "CV across sessions | claim covers other sessions | targets missed | "
            "A/A significant, no drift allowance | A/A significant, as reported |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for workload in workloads:
            for tool in tools:
                ss = results.get((tool, workload), [])
                if not ss:
                    continue
                m = summarize(ss)
                aa = naive_aa = "-"
                if tool.startswith("perfreplay"):
                    naive, sig, total = aa_share(ss)
                    if total:
                        aa = f"{sig}/{total} ({sig / total:.0%})"
                        naive_aa = f"{naive}/{total} ({naive / total:.0%})"
                missed = f"{m['missed']}/{m['n']}" if tool.startswith("perfreplay") else "n/a"
                print(
                    f"| {workload} | {tool} | {m['wall']:.1f} | {m['estimate'] * 1e3:.3f} | "
                    f"±{m['claimed']:.2%} | {m['cv']:.2%} | {m['cover']:.0%} | {missed} | "
                    f"{naive_aa} | {aa} |"
                )
        print(
            f"\ntotal benchmark time {time.perf_counter() - started:.0f} s; sessions per tool "
            f"for CV/coverage: {sessions_n} (perfreplay rows use all {aa_n} runs)"
        )
    finally:
        if args.keep:
            print(f"scratch folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
