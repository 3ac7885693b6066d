"""How much noise a paired comparison sees, with and without pinning a pair to one CPU.

The paired verdict (``--perf-replay-baseline``) alternates single calls between the two
processes of a pair and takes log ratios of adjacent calls. This script times that pattern
alone, outside pytest, on a pure-Python call (recursive calls, ~100 ms by default), two
ways per round, in alternating order:

* ``free``: the scheduler puts each process where it likes (the plugin before pinning);
* ``pinned``: both processes of a pair on one CPU, pairs spread over the CPUs by the
  plugin's own :func:`pytest_perfreplay.replay.paired.pair_cpus`.

Each way runs PAIRS process pairs per round; each pair warms up, then takes CALLS adjacent
(baseline, candidate) call pairs in a random order. Reported per round and way: the robust
SD (1.4826 x MAD) of the log ratios about their pair's median ("within"), and of the pairs'
medians ("across"), in percent, both on wall time. The summary gives each way's median
over rounds and the ratio pinned / free. Run quiet, and with ``--hog`` beside a CPU hog that
switches on and off (2 s busy, 1.3 s idle, one core), as ``verdicts.py`` does.

Usage: ``python benchmarks/pair_noise.py [--quick] [--hog] [--rounds N] [--pairs N]
[--calls N] [--ms MS]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time

from verdicts import HOG  # the same hog as the verdicts (this script's folder is on sys.path)

from pytest_perfreplay.replay.paired import pair_cpus

WORKER = r"""
import json, sys, time


def _fib(k):
    return k if k < 2 else _fib(k - 1) + _fib(k - 2)


n = int(sys.argv[1])
for _ in sys.stdin:
    t0 = time.perf_counter_ns()
    sum(_fib(15) for _ in range(n))
    sys.stdout.write(json.dumps((time.perf_counter_ns() - t0) / 1e9) + "\n")
    sys.stdout.flush()
"""

WARM_CALLS = 5


def robust_sd(values: list[float]) -> float:
    m = statistics.median(values)
    return 1.4826 * statistics.median(abs(v - m) for v in values)


def call(proc: subprocess.Popen[str]) -> float:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return float(json.loads(proc.stdout.readline()))


def size_for(ms: float) -> int:
    """Loop count that makes the worker's call take about ``ms`` milliseconds."""
    probe = subprocess.run(
        [sys.executable, "-c", WORKER, "200"], input="go\n" * 7, capture_output=True, text=True
    )
    per = statistics.median(float(x) for x in probe.stdout.split()[2:]) / 200
    return max(1, round(ms / 1000 / per))


def one_way(pinned: bool, n: int, pairs: int, calls: int, rng: random.Random) -> dict[str, float]:
    within: list[float] = []
    centres: list[float] = []
    cpus = pair_cpus(pairs, rng) if pinned else [None] * pairs
    for cpu in cpus:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, str(n)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        try:
            if cpu is not None:
                for p in procs:
                    os.sched_setaffinity(p.pid, {cpu})
            for _ in range(WARM_CALLS):
                call(procs[0])
                call(procs[1])
            logs = []
            for _ in range(calls):
                order = [0, 1] if rng.random() < 0.5 else [1, 0]
                got = {i: call(procs[i]) for i in order}
                logs.append(math.log(got[1] / got[0]))
        finally:
            for p in procs:
                p.kill()
                p.wait()
        centre = statistics.median(logs)
        centres.append(centre)
        within += [x - centre for x in logs]
    return {"within": 100 * robust_sd(within), "across": 100 * robust_sd(centres)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke check: one short round")
    parser.add_argument("--hog", action="store_true", help="beside a CPU hog that switches")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--pairs", type=int, default=None, help="process pairs per way per round")
    parser.add_argument("--calls", type=int, default=8, help="call pairs per process pair")
    parser.add_argument("--ms", type=float, default=None, help="the call's length")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 4)
    pairs = args.pairs or (3 if args.quick else 16)
    ms = args.ms or (10.0 if args.quick else 100.0)
    calls = 3 if args.quick else args.calls
    n = size_for(ms)
    rng = random.Random()
    print(
        f"# pair noise: {rounds} rounds x {pairs} process pairs x {calls} call pairs per way, "
        f"~{ms:g} ms call (loop {n}), {'beside a CPU hog' if args.hog else 'quiet'}; "
        f"python {sys.version.split()[0]}, CPUs usable {sorted(os.sched_getaffinity(0))}, "
        f"load average at start {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    hog = subprocess.Popen([sys.executable, "-c", HOG, str(os.getpid())]) if args.hog else None
    results: dict[str, list[dict[str, float]]] = {"free": [], "pinned": []}
    started = time.perf_counter()
    try:
        for r in range(rounds):
            ways = ["free", "pinned"] if r % 2 == 0 else ["pinned", "free"]
            for way in ways:
                got = one_way(way == "pinned", n, pairs, calls, rng)
                results[way].append(got)
                print(
                    f"round {r + 1} {way:6}: within {got['within']:.2f}%  "
                    f"across {got['across']:.2f}%",
                    flush=True,
                )
    finally:
        if hog is not None:
            hog.terminate()
            hog.wait(timeout=10)
    print(f"# {time.perf_counter() - started:.0f} s")
    for key in ("within", "across"):
        free = statistics.median(x[key] for x in results["free"])
        pinned = statistics.median(x[key] for x in results["pinned"])
        print(
            f"{key}: median robust SD free {free:.2f}%, pinned {pinned:.2f}%, "
            f"pinned/free {pinned / free:.2f}"
        )


if __name__ == "__main__":
    main()
