"""Deterministic mode: how stable are instruction counts, what do they detect, what do they cost?

The same three pure-Python workloads as ``replay_precision.py`` (~1, ~10, ~100 ms when
calibrated), captured once as snapshots, then counted with
:func:`pytest_perfreplay.replay.valgrind.count_calls` exactly as
``--perf-replay-measure=instructions`` counts them: one valgrind process per count warms
up and forks 3 counted processes; calls under 5 ms are bracketed by callgrind client
requests (x86-64 Linux), longer ones differenced under cachegrind.
Code changes are made the way a paired run sees them: a second source tree whose
``work.py`` does a little more work, passed as the import root, against the same snapshot.

Measured per workload:

* **spread between sessions**: S separate counts of the unchanged code (each one a full
  count: fresh valgrind processes); the spread (max - min) / mean, and the CV;
* **smallest change detected**: T counts of code doing 0.5%, 1% and 2% more work, each
  judged against one of the unchanged counts by :func:`deterministic_verdict` with a
  ``--min-effect`` band (default 0.25%); detected = significant and "slower";
* **A/A**: verdicts between counts of identical code (pairs of unchanged sessions, then
  pairs of same-level tries), none should be significant; and **A/A across folders**:
  the same files copied to other folders (as a paired run's baseline checkout is), each
  count judged against an unchanged one: the folder's path changes the counting
  process's heap state, which moved identical code by 1.8% before the heap pads spanned
  a pool;
* **cost**: wall seconds of one count (one side) against the native call time, and the
  issue's goal of 30x the native call plus 3 s; and where they went (the counting
  process marks its phases: the native pre-run, valgrind's start-up to the loaded
  snapshot, the warm-up calls, the counted processes, the exit);
* **cost of a pair**: wall seconds of a paired count of identical code (the baseline in
  another folder), both sides at once as ``--perf-replay-baseline`` counts them, halved:
  the cost per side when a pair is counted;
* **under load**: the ~1 ms workload counted beside a CPU hog (2 s busy, 1.3 s idle, on
  one core), against a count without it (measured first);
* **warm-up**: a library call (pprint, textwrap, difflib; many functions entered once per
  call) counted after W plain warm-up calls, and after W with the first call's code
  quickened at once (CPython 3.11, what the planner does there), against after 20 plain
  ones: the planner's W must agree.

The valgrind is the one the plugin would use (``PERFREPLAY_VALGRIND``, else ``PATH``): on
valgrind >= 3.22, differenced counts keep cachegrind's instrumentation to the counted
processes' loops (``toggled``), as the plugin does.

Usage: ``python benchmarks/instructions.py [--quick] [--sessions S] [--tries T]
[--also-valgrind PATH]``; the last prints, per workload, a single count's cost (and the
count) with another valgrind too, in the same run.
Results are printed as each part finishes, so a long run can be read while it goes.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pytest_perfreplay.replay.deterministic import count_both_sides, deterministic_verdict
from pytest_perfreplay.replay.quicken import supported as quicken_supported
from pytest_perfreplay.replay.valgrind import (
    CountResult,
    Method,
    Plan,
    Valgrind,
    _version_output,
    count_calls,
    parse_version,
    plan,
    preflight,
    toggles_available,
)

WORK = """
import difflib
import pprint
import textwrap

from pytest_perfreplay import capture

EXTRA = {extra!r}  # share of extra work: the "code change"


def _spin(n):
    total = 0
    for i in range(n):
        total = (total * 31 + i) % 1_000_003
    return total


@capture
def w1ms(n):
    return _spin(n + int(n * EXTRA))


@capture
def w10ms(n):
    return _spin(n + int(n * EXTRA))


@capture
def w100ms(n):
    return _spin(n + int(n * EXTRA))


@capture
def wreal(data, a, b):  # library code: many functions entered once per call
    text = pprint.pformat(data, width=60)
    wrapped = textwrap.fill(text[:20000], width=50)
    return len(wrapped), difflib.SequenceMatcher(None, a, b).ratio()
"""

TRAFFIC = """
import work
work.w1ms({n1})
work.w10ms({n10})
work.w100ms({n100})
work.wreal(*work_real_args())
"""

REAL_ARGS = """
def work_real_args():
    data = dict(("k%d" % i, [list(range(i % 17)), "x" * (i % 13), (i, str(i))]) for i in range(400))
    a = ["line %d" % (i % 37) for i in range(300)]
    b = ["line %d" % (i % 41) for i in range(300)]
    return data, a, b
"""

HOG = """
import time
while True:
    end = time.perf_counter() + 2.0
    while time.perf_counter() < end:
        pass
    time.sleep(1.3)
"""

WORKLOADS = ("w1ms", "w10ms", "w100ms")
LEVELS = (0.005, 0.01, 0.02)


def say(line: str = "") -> None:
    print(line, flush=True)


def calibrate() -> dict[str, int]:
    def spin(n: int) -> int:
        total = 0
        for i in range(n):
            total = (total * 31 + i) % 1_000_003
        return total

    # CPU time, not wall time: on a shared machine a 100 ms call is preempted many times.
    n = 50_000
    times = []
    for _ in range(9):
        t0 = time.process_time()
        spin(n)
        times.append(time.process_time() - t0)
    per = min(times) / n
    return {"w1ms": int(1e-3 / per), "w10ms": int(1e-2 / per), "w100ms": int(1e-1 / per)}


def tree(root: Path, extra: float, folder: str | None = None) -> Path:
    path = root / (folder or f"tree-{extra:g}")
    path.mkdir(exist_ok=True)
    (path / "work.py").write_text(WORK.format(extra=extra))
    return path


def capture_snapshots(root: Path, n: dict[str, int]) -> dict[str, Path]:
    base = tree(root, 0.0)
    traffic = TRAFFIC.format(n1=n["w1ms"], n10=n["w10ms"], n100=n["w100ms"])
    (base / "traffic.py").write_text(REAL_ARGS + traffic)
    env = dict(os.environ, PERFREPLAY_CAPTURE="1", PERFREPLAY_STORE=str(root / "store"))
    env["PYTHONPATH"] = str(base)
    subprocess.run([sys.executable, "traffic.py"], cwd=base, env=env, check=True, timeout=300)
    found = {}
    from pytest_perfreplay.snapshot.format import read_header_file

    for path in (root / "store" / "snapshots").glob("*/*.prsnap"):
        found[read_header_file(path).target.split(":")[1]] = path
    return found


def native(n: int, repeat: int = 7) -> float:
    """CPU seconds of one plain call of the workload in this process, the fastest of a few:
    wall time on a shared machine counts the other processes' turns too (so the cost ratio
    below errs against valgrind)."""
    total = 0

    def spin(k: int) -> int:
        nonlocal total
        for i in range(k):
            total = (total * 31 + i) % 1_000_003
        return total

    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        spin(n)
        times.append(time.process_time() - t0)
    return min(times)


def native_real(repeat: int = 7) -> float:
    """CPU seconds of one plain call of ``wreal``, the fastest of a few."""
    import difflib
    import pprint
    import textwrap

    scope: dict[str, object] = {}
    exec(REAL_ARGS, scope)
    data, a, b = scope["work_real_args"]()  # type: ignore[operator]
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        text = pprint.pformat(data, width=60)
        textwrap.fill(text[:20000], width=50)
        difflib.SequenceMatcher(None, a, b).ratio()
        times.append(time.process_time() - t0)
    return min(times)


class Counter:
    def __init__(
        self,
        root: Path,
        snapshots: dict[str, Path],
        native: dict[str, float],
        vg: Valgrind | None = None,
    ) -> None:
        self.root = root
        self.snapshots = snapshots
        self.native = native
        self.vg = vg or preflight()
        self.toggles = toggles_available(self.vg)  # as the plugin plans on this valgrind
        self.quicken = quicken_supported()  # and on this interpreter
        self.counts = 0
        self.method: Method | None = None  # None: what the plugin would choose here

    def __call__(
        self,
        workload: str,
        extra: float,
        folder: str | None = None,
        *,
        warmup: int | None = None,
        quicken: bool | None = None,
        cancel: threading.Event | None = None,
    ) -> CountResult:
        p = self.plan(workload)
        self.counts += 1
        return count_calls(
            self.snapshots[workload],
            f"work:{workload}",
            store=self.root / "store",
            import_roots=[str(tree(self.root, extra, folder))],
            processes=3,
            warmup=p.warmup if warmup is None else warmup,
            calls=p.calls,
            valgrind=self.vg,
            method=self.method or p.method,
            toggles=p.toggles,
            quicken=p.quicken if quicken is None else quicken,
            cancel=cancel,
        )

    def plan(self, workload: str) -> Plan:
        return plan(
            self.native[workload],
            0.0,
            processes=3,
            method=self.method,
            toggles=self.toggles,
            quicken=self.quicken,
        )

    def pair(self, workload: str) -> float:
        """Wall seconds of a paired count of identical code, both sides at once, as
        ``--perf-replay-baseline`` counts them (the baseline in another folder)."""

        def side(import_roots: list[str], cancel: threading.Event) -> CountResult:
            folder = "baseline-pair" if import_roots else None
            return self(workload, 0.0, folder, cancel=cancel)

        t0 = time.perf_counter()
        count_both_sides(side, ["baseline"], baseline_label="baseline")
        return time.perf_counter() - t0


def pct(x: float) -> str:
    return f"{x * 100:.4f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: ~1 ms workload only")
    parser.add_argument("--sessions", type=int, default=5, help="unchanged counts per workload")
    parser.add_argument("--tries", type=int, default=10, help="counts per change level")
    parser.add_argument("--min-effect", type=float, default=0.0025, help="verdict band")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument(
        "--also-valgrind",
        metavar="PATH",
        help="another valgrind: each workload's single-count cost (and count) with it too",
    )
    args = parser.parse_args()
    workloads = ["w1ms"] if args.quick else args.workloads.split(",")
    sessions = 2 if args.quick else args.sessions
    tries = 1 if args.quick else args.tries
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="perfreplay-bench-instr-") as tmp:
        root = Path(tmp)
        n = calibrate()
        snapshots = capture_snapshots(root, n)
        natives = {w: native(n[w]) for w in WORKLOADS}
        natives["wreal"] = native_real()
        count = Counter(root, snapshots, natives)
        vg = count.vg
        other: Counter | None = None
        if args.also_valgrind:
            path = args.also_valgrind
            version = parse_version(_version_output(path)) or (0,)
            other = Counter(root, snapshots, natives, Valgrind(path, version, vg.setarch))
        say(
            f"valgrind {vg.version_text}, {'setarch -R' if vg.setarch else 'ASLR on'}, "
            f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; each count: one valgrind "
            "process, warmed up, forking 3 counted processes; method per workload: "
            + ", ".join(
                f"{w} {count.plan(w).method}{' (toggled)' if count.plan(w).toggles else ''}"
                for w in WORKLOADS
            )
            + f"; verdict band ±{args.min_effect:.2%}"
        )
        say(
            f"workloads calibrated to n={n}; native call: "
            + ", ".join(f"{w} {natives[w] * 1e3:.2f} ms" for w in WORKLOADS)
        )

        # Under load first, so that a long run that is cut short still shows it.
        loaded = "w1ms"
        say(f"\n## under load ({loaded}, CPU hog: 2 s busy / 1.3 s idle, one core)")
        quiet = count(loaded, 0.0)
        hog = subprocess.Popen([sys.executable, "-c", HOG])
        try:
            busy = count(loaded, 0.0)
        finally:
            hog.kill()
            hog.wait()
        say(
            f"without hog {quiet.estimate:,.1f}, beside the hog {busy.estimate:,.1f} "
            f"instructions per call: difference {pct(abs(busy.estimate / quiet.estimate - 1))}; "
            f"wall {quiet.elapsed:.1f} s vs {busy.elapsed:.1f} s"
        )

        # Is the planner's warm-up enough? Library code enters many functions once per
        # call, and 3.11 quickens each one only on its 8th entry.
        say(
            f"\n## warm-up (wreal: pprint, textwrap and difflib, "
            f"{natives['wreal'] * 1e3:.1f} ms native): per-call count after W warm-up calls"
        )
        steady = count("wreal", 0.0, warmup=20, quicken=False)
        p = count.plan("wreal")
        tried = [(w, False) for w in ((2, 8) if args.quick else (2, 6, 7, 8, 10))]
        if p.quicken:  # the first call's code quickened at once (CPython 3.11)
            tried += [(w, True) for w in sorted({2, p.warmup})]
        for w, quick in tried:
            r = count("wreal", 0.0, warmup=w, quicken=quick)
            planner = w == p.warmup and quick == p.quicken
            say(
                f"W={w}{', quickened after the first' if quick else ''}"
                f"{' (the planner)' if planner else ''}: {r.estimate:,.0f} "
                f"instructions per call, {r.estimate / steady.estimate - 1:+.2%} against W=20 "
                f"plain ({steady.estimate:,.0f}); process spread {pct(r.spread)}; "
                f"warm-up {r.phases.get('warm-up', math.nan):.2f} s"
            )
        for workload in workloads:
            say(f"\n## {workload}")
            base: list[CountResult] = []
            for _ in range(sessions):
                base.append(count(workload, 0.0))
            means = [r.estimate for r in base]
            m = statistics.fmean(means)
            spread = (max(means) - min(means)) / m
            cv = statistics.stdev(means) / m if len(means) > 1 else 0.0
            say(
                f"spread between {len(base)} sessions: {pct(spread)} (CV {pct(cv)}); "
                f"instructions per call {m:,.0f}; within-session spread over 3 processes "
                f"(median) {pct(statistics.median(r.spread for r in base))}"
            )
            walls = [r.elapsed for r in base]
            goal = 30 * natives[workload] + 3
            say(
                f"cost of one count (one side): median {statistics.median(walls):.1f} s "
                f"[{min(walls):.1f}-{max(walls):.1f}] for a {natives[workload] * 1e3:.2f} ms "
                f"call ({base[0].counting}{', toggled' if base[0].toggled else ''}: "
                f"{base[0].warmup} warm-up + {base[0].calls} "
                "counted calls per process); "
                f"goal 30x native + 3 s = {goal:.1f} s: "
                f"{'met' if statistics.median(walls) <= goal else 'NOT met'} "
                f"({statistics.median(walls) / goal:.1f}x the goal)"
            )
            timed = [r.phases for r in base if r.phases]
            if timed:
                parts = {k: statistics.median(t[k] for t in timed) for k in timed[0]}
                rest = sum(v for k, v in parts.items() if k != "warm-up")
                say(
                    f"  where it went (median of {len(timed)}): "
                    + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items())
                    + f"; all but the warm-up: {rest:.1f} s ({rest / goal:.1f}x the goal)"
                )
            if other is not None:
                theirs = [other(workload, 0.0) for _ in range(1 if args.quick else 3)]
                own = statistics.median(walls)
                mine = statistics.median(r.elapsed for r in theirs)
                say(
                    f"  the same count on valgrind {other.vg.version_text} "
                    f"({theirs[0].counting}{', toggled' if theirs[0].toggled else ''}): "
                    f"median {mine:.1f} s over {len(theirs)} ({mine / goal:.1f}x the goal; "
                    f"this run's valgrind takes {own / mine:.2f}x its time); "
                    f"instructions per call {theirs[0].estimate:,.0f}, "
                    f"{theirs[0].estimate / m - 1:+.4%} against this run's"
                )
            pairs = [count.pair(workload) for _ in range(1 if args.quick else 3)]
            side = statistics.median(pairs) / 2
            say(
                f"cost of a paired count (identical code, both sides at once, as "
                f"--perf-replay-baseline counts): median {statistics.median(pairs):.1f} s "
                f"[{min(pairs):.1f}-{max(pairs):.1f}] over {len(pairs)}, {side:.1f} s per side; "
                f"goal {goal:.1f} s per side: {'met' if side <= goal else 'NOT met'} "
                f"({side / goal:.1f}x the goal)"
            )
            aa: list[bool] = []
            for a, b in itertools.combinations(base, 2):
                aa.append(
                    deterministic_verdict(
                        a, b, rev="A", sha="", min_effect=args.min_effect
                    ).significant
                )
            for level in LEVELS:
                cands = [count(workload, level) for _ in range(tries)]
                verdicts = [
                    deterministic_verdict(
                        base[i % len(base)], c, rev="base", sha="", min_effect=args.min_effect
                    )
                    for i, c in enumerate(cands)
                ]
                hits = sum(v.significant and v.direction == "slower" for v in verdicts)
                ratios = [v.ratio - 1 for v in verdicts]
                say(
                    f"+{level:.1%} work: detected {hits}/{len(verdicts)}; measured change "
                    f'{min(ratios):+.3%} .. {max(ratios):+.3%}; e.g. "{verdicts[0].line()}"'
                )
                for a, b in itertools.combinations(cands, 2):
                    aa.append(
                        deterministic_verdict(
                            a, b, rev="A", sha="", min_effect=args.min_effect
                        ).significant
                    )
            say(f"A/A verdicts: {sum(aa)} significant of {len(aa)} (identical code counted twice)")
            # As a paired run sees identical code: the same files in another folder (the
            # baseline's checkout), whose longer or shorter paths leave the counting
            # process's heap in another state before the counted calls.
            copies = [count(workload, 0.0, "baseline-" + "x" * (7 * i)) for i in range(tries)]
            across = [
                deterministic_verdict(
                    base[i % len(base)], c, rev="copy", sha="", min_effect=args.min_effect
                )
                for i, c in enumerate(copies)
            ]
            moved = [abs(v.ratio - 1) for v in across]
            say(
                f"A/A across folders: {sum(v.significant for v in across)} significant of "
                f"{len(across)} (identical files in {len(copies)} other folders); median pair "
                f"ratio off by {pct(max(moved))} at most; per-process spread in those counts "
                f"up to {pct(max(c.spread for c in copies))}"
            )

        say(f"\ntotal: {count.counts} counts in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
