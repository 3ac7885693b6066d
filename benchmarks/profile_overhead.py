"""Profiling-pass benchmark: separation from timing, py-spy attach latency, toolkit cost.

    .venv/bin/python benchmarks/profile_overhead.py [--size-mb 50] [--attach-runs 10]

1. The timing of one replayed item with and without ``--perf-replay-profile``: four real pytest
   sessions (off, on, off, on). If the profiler ran during timing, the "on" medians would be
   10-25% (py-spy) or more (pyinstrument) slower; the two "off" runs show the ordinary
   session-to-session drift, which on a busy machine can exceed one session's interval.
2. py-spy attach latency: spawn to the ready line, attached to this process.
3. ``perfreplay profile summary|merge|diff`` on two generated py-spy-like profiles of about
   ``--size-mb`` each. Each operation runs in a fresh interpreter; wall time and peak RSS
   (``getrusage(RUSAGE_SELF).ru_maxrss``, the whole process including the interpreter) are
   reported against the targets: <= 5 s and peak RSS <= 3x the input size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

SERVICE = """
from pytest_perfreplay import capture


def _mix(value):
    return (value * 2654435761) % 4294967296


@capture
def crunch(values):
    total = 0
    for v in values:
        total = (total + _mix(v)) % 1_000_003
    return total
"""


def timing_separation(work: Path) -> list[str]:
    (work / "svc.py").write_text(SERVICE)
    (work / "pytest.ini").write_text("[pytest]\npythonpath = .\n")
    env = dict(os.environ, PERFREPLAY_CAPTURE="1", PERFREPLAY_STORE=".perfreplay")
    subprocess.run(
        [sys.executable, "-c", "import svc; svc.crunch(list(range(20_000)))"],
        cwd=work,
        env=env,
        check=True,
    )
    rows = []
    # off, on, off, on: each session starts from a fresh history (iteration 1), and the two
    # "off" runs show how much two sessions differ anyway.
    for n, profiled in enumerate((False, True, False, True)):
        shutil.rmtree(work / ".perfreplay" / "history", ignore_errors=True)
        shutil.rmtree(work / ".perfreplay" / "profiles", ignore_errors=True)
        out = work / f"bench-{n}.json"
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "--perf-replay", "--perf-replay-max-time=4"]
            + (["--perf-replay-profile"] if profiled else [])
            + ["--benchmark-json", str(out), "-p", "no:cacheprovider"],
            cwd=work,
            env=dict(os.environ, PERFREPLAY_STORE=".perfreplay"),
            check=True,
            capture_output=True,
        )
        (bench,) = json.loads(out.read_text())["benchmarks"]
        info = bench["extra_info"]
        low, high = info["interval"]
        label = "with --perf-replay-profile" if profiled else "without profile"
        rows.append((label, info["estimate"], low, high, bench["stats"]["rounds"]))
    lines = [f"{'run':<28} {'median':>10} {'95% interval':>24} {'rounds':>7}"]
    for label, est, low, high, rounds in rows:
        lines.append(
            f"{label:<28} {est * 1e3:>8.3f}ms  [{low * 1e3:8.3f} – {high * 1e3:8.3f}] ms"
            f" {rounds:>7}"
        )

    def overlap(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
        return a[2] <= b[3] and b[2] <= a[3]

    pairs = [(0, 1), (2, 3), (1, 2)]
    agree = all(overlap(rows[i], rows[j]) for i, j in pairs)
    on = statistics.median([rows[1][1], rows[3][1]])
    off = statistics.median([rows[0][1], rows[2][1]])
    control = abs(rows[2][1] / rows[0][1] - 1)
    lines.append(
        f"intervals of consecutive with/without runs overlap: {'yes' if agree else 'NO'}; "
        f"with/without median ratio {on / off:.4f}; "
        f"two runs without the profile differ by {control:.2%}"
    )
    return lines


def attach_latency(runs: int) -> list[str]:
    from pytest_perfreplay.profile.passes import pyspy

    check = pyspy.preflight(pyspy.PySpyOptions())
    if check.refusal:
        return [f"py-spy attach latency: skipped ({check.refusal})"]
    latencies = []
    for _ in range(runs):

        def spin() -> None:
            until = time.perf_counter() + 0.05  # from the ready line on
            while time.perf_counter() < until:
                pass

        latencies.append(pyspy.record(spin, pyspy.PySpyOptions()).attach_seconds)
    ms = sorted(x * 1e3 for x in latencies)
    return [
        f"py-spy attach latency (spawn to ready), {runs} runs: median "
        f"{statistics.median(ms):.1f} ms, min {ms[0]:.1f} ms, max {ms[-1]:.1f} ms"
    ]


def pyspy_like(path: Path, size_mb: float, seed: int, faster: bool) -> int:
    """A py-spy-shaped file (frames per line, null cols, null activeProfileIndex, one profile
    per thread, weights 1/rate) of about ``size_mb``; returns the replayed-call count."""
    rng = random.Random(seed)
    modules = [f"/srv/app/pkg{m}/mod{m}.py" for m in range(40)]
    frames: list[dict[str, Any]] = []
    functions = []
    for f in range(400):
        file = modules[f % len(modules)]
        lines = [rng.randint(1, 900) for _ in range(4)]  # py-spy: one frame per line
        ids = []
        for line in lines:
            ids.append(len(frames))
            frames.append({"name": f"func_{f}", "file": file, "line": line, "col": None})
        functions.append(ids)
    # call paths: fixed prefixes (pytest + harness), then a random walk under the target
    prefix = list(range(len(frames), len(frames) + 12))
    for i in range(12):
        frames.append({"name": f"pytest_frame_{i}", "file": "/x/_pytest/runner.py", "line": i})
    paths = []
    for _ in range(3000):
        depth = rng.randint(6, 24)
        paths.append(prefix + [rng.choice(functions[rng.randrange(400)]) for _ in range(depth)])
    hot = set(range(0, 400, 10))
    rate = 100
    threads = []
    budget = size_mb * 1e6
    per_sample = sum(len(json.dumps(p)) for p in paths[:200]) / 200 + 8
    n = int(budget / per_sample)
    for t in range(4):
        samples, weights = [], []
        for _ in range(n // 4):
            p = rng.choice(paths)
            if (
                faster
                and frames[p[-1]]["name"] in {f"func_{h}" for h in hot}
                and rng.random() < 0.9
            ):
                p = p[:-1]  # the hot leaves mostly vanished
            samples.append(p)
            weights.append(1 / rate)
        threads.append(
            {
                "type": "sampled",
                "name": f"Thread {t}",
                "unit": "seconds",
                "startValue": 0,
                "endValue": len(samples) / rate,
                "samples": samples,
                "weights": weights,
            }
        )
    doc = {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "profiles": threads,
        "shared": {"frames": frames},
        "activeProfileIndex": None,
        "exporter": "py-spy@0.4.3",
        "name": "py-spy profile",
    }
    path.write_text(json.dumps(doc))
    return 1000 if not faster else 2000


_MEASURE = textwrap.dedent(
    """
    import json, resource, sys, time
    from pytest_perfreplay.cli import main
    t0 = time.perf_counter()
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:  # --version / --help
        code = exc.code
    wall = time.perf_counter() - t0
    # VmHWM: this process's own peak. ru_maxrss would include the parent's RSS at fork,
    # which Linux carries across exec.
    try:
        status = open("/proc/self/status").read()
        rss = int(status.split("VmHWM:", 1)[1].split()[0]) * 1024
    except (OSError, IndexError):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print("@@" + json.dumps({"code": code, "wall": wall, "rss": rss}))
    """
)


def toolkit(work: Path, size_mb: float) -> list[str]:
    old, new = work / "old.speedscope.json", work / "new.speedscope.json"
    old_calls = pyspy_like(old, size_mb, 1, faster=False)
    new_calls = pyspy_like(new, size_mb, 2, faster=True)
    sizes = {p: p.stat().st_size for p in (old, new)}
    baseline = _run_measured(["--version"])
    ops = {
        "summary": (["profile", "summary", str(old)], sizes[old]),
        "merge": (
            ["profile", "merge", str(old), str(new), "-o", str(work / "m.json")],
            sizes[old] + sizes[new],
        ),
        "diff": (
            ["profile", "diff", str(old), str(new), "-o", str(work / "d.json")]
            + ["--old-calls", str(old_calls), "--new-calls", str(new_calls)],
            sizes[old] + sizes[new],
        ),
    }
    lines = [
        f"inputs: old {sizes[old] / 1e6:.1f} MB, new {sizes[new] / 1e6:.1f} MB; "
        f"interpreter baseline RSS {baseline['rss'] / 1e6:.0f} MB",
        f"{'op':<8} {'input MB':>9} {'wall s':>7} {'peak RSS MB':>12} {'RSS/input':>10}  targets",
    ]
    for name, (argv, size) in ops.items():
        m = _run_measured(argv)
        ratio = m["rss"] / size
        ok = m["wall"] <= 5 and ratio <= 3
        lines.append(
            f"{name:<8} {size / 1e6:>9.1f} {m['wall']:>7.2f} {m['rss'] / 1e6:>12.0f} "
            f"{ratio:>10.2f}  {'met' if ok else 'MISSED'}"
        )
    return lines


def _run_measured(argv: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True, check=False
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("@@")), None)
    if line is None:
        raise SystemExit(f"{argv}: {done.stdout[-500:]} {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(line[2:])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=50.0)
    parser.add_argument("--attach-runs", type=int, default=10)
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="perfreplay-bench-") as tmp:
        work = Path(tmp)
        sections: list[tuple[str, list[str]]] = []
        if not args.skip_timing:
            (work / "timing").mkdir()
            sections.append(
                ("timing with vs without the profiling pass", timing_separation(work / "timing"))
            )
        sections.append(("py-spy attach", attach_latency(args.attach_runs)))
        sections.append(("toolkit on py-spy-like profiles", toolkit(work, args.size_mb)))
    for title, lines in sections:
        print(f"## {title}")
        for line in lines:
            print(line)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
