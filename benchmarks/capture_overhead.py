"""Per-call cost of ``@capture``, side by side with its baselines and two anchors.

Run: ``python benchmarks/capture_overhead.py [--quick]``. Prints a markdown table of
medians (over many batches) and checks the targets from the capture issue:

* capture off            <= 1.05x undecorated
* enabled, not sampled   <= 1.30x a minimal ``*args, **kwargs`` wrapper (sync and async)
* sampled                <= 1.25x ``cloudpickle.dumps`` + writing the bytes to a new file

Timing: each row is the median of many batches; a batch times a loop of calls with
``perf_counter_ns`` and divides by its length. Rows run interleaved round-robin, so slow
drifts of the machine hit every row alike.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.ci_service.models import CheckRun  # noqa: E402
from pytest_perfreplay.capture.decorator import capture  # noqa: E402

capmod = importlib.import_module("pytest_perfreplay.capture.decorator")


def add(a: int, b: int) -> int:
    return a + b


async def add_async(a: int, b: int) -> int:
    return a + b


def minimal_wrapper(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


def minimal_async_wrapper(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await func(*args, **kwargs)

    return wrapper


def runs(n: int, seed: int) -> list[CheckRun]:
    return [
        CheckRun(
            id=seed * 1_000_000 + i,
            name=f"job-{i % 7}",
            app=("github-actions", "circleci")[i % 2],
            head_sha=f"{(seed * 7919 + i) * 2654435761 % (1 << 160):040x}",
            head_branch=f"feature/{i % 400}",
            status="completed",
            conclusion=("success", "failure", None)[i % 3],
            started_at=1000.0 + i,
            duration=5.0 + i % 900,
        )
        for i in range(n)
    ]


def records(n: int, seed: int) -> list[dict[str, Any]]:
    return [
        {"id": seed * 1_000_000 + i, "name": f"user{i}", "email": f"u{i}@example.com",
         "score": i * 0.5, "tags": ["a", "b"]}
        for i in range(n)
    ]  # fmt: skip


def consume(data: Any) -> int:
    return len(data)


def time_sync(call: Callable[[], Any], loops: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(loops):
        call()
    return (time.perf_counter_ns() - t0) / loops


def time_async(loop: asyncio.AbstractEventLoop, func: Callable[..., Any], loops: int) -> float:
    async def body() -> float:
        t0 = time.perf_counter_ns()
        for _ in range(loops):
            await func(1, 2)
        return (time.perf_counter_ns() - t0) / loops

    return loop.run_until_complete(body())


def measure(rows: dict[str, Callable[[], float]], batches: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(batches):
        for name, batch in rows.items():  # round-robin: drift hits every row alike
            samples[name].append(batch())
    return {name: statistics.median(values) for name, values in samples.items()}


def fmt_ns(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches (a smoke run)")
    opts = parser.parse_args()
    batches = 7 if opts.quick else 31
    idle_loops = 2_000 if opts.quick else 20_000
    tmp = Path(tempfile.mkdtemp(prefix="perfreplay-bench-"))
    os.environ.pop("PERFREPLAY_TARGETS", None)
    try:
        table = run(tmp, batches, idle_loops)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(table)


def run(tmp: Path, batches: int, idle_loops: int) -> str:
    loop = asyncio.new_event_loop()
    capmod._reset()
    capmod.configure(enabled=False)
    off = capture(add)  # off at decoration: the function itself
    assert off is add
    capmod.configure(enabled=True, store=tmp / "store", key=b"bench-key-0123456789abcdef")
    idle = capture(sample_rate=0.0)(add)  # enabled, never sampled
    idle_async = capture(sample_rate=0.0)(add_async)
    wrapped = minimal_wrapper(add)
    wrapped_async = minimal_async_wrapper(add_async)

    anchors: dict[str, Callable[[], float]] = {}
    notes: list[str] = []
    try:
        import sentry_sdk

        sentry_sdk.init(dsn=None)
        traced = sentry_sdk.trace(add)
        anchors["anchor: `@sentry_sdk.trace` (no transaction)"] = lambda: time_sync(
            lambda: traced(1, 2), idle_loops // 4
        )
    except Exception as exc:  # an anchor that does not install is reported, not fatal
        notes.append(f"sentry_sdk anchor skipped: {exc!r}")
    try:
        from monkeytype.tracing import CallTraceLogger, trace_calls

        class Drop(CallTraceLogger):  # type: ignore[misc]
            def log(self, trace: Any) -> None:
                pass

        def monkeytype_batch() -> float:
            # Everything filtered out: the cost MonkeyType's sys.setprofile hook adds anyway.
            with trace_calls(Drop(), max_typed_dict_size=0, code_filter=lambda code: False):
                return time_sync(lambda: add(1, 2), idle_loops // 4)

        anchors["anchor: MonkeyType tracer (all frames filtered out)"] = monkeytype_batch
    except Exception as exc:
        notes.append(f"MonkeyType anchor skipped: {exc!r}")

    idle_rows: dict[str, Callable[[], float]] = {
        "undecorated": lambda: time_sync(lambda: add(1, 2), idle_loops),
        "minimal `*args, **kwargs` wrapper": lambda: time_sync(lambda: wrapped(1, 2), idle_loops),
        "`@capture`, off at decoration": lambda: time_sync(lambda: off(1, 2), idle_loops),
        "`@capture`, enabled, not sampled": lambda: time_sync(lambda: idle(1, 2), idle_loops),
        "async: undecorated": lambda: time_async(loop, add_async, idle_loops),
        "async: minimal wrapper": lambda: time_async(loop, wrapped_async, idle_loops),
        "async: `@capture`, enabled, not sampled": lambda: time_async(loop, idle_async, idle_loops),
        **anchors,
    }
    idle_med = measure(idle_rows, batches)

    # Sampled: every call pickles, signs and writes one snapshot (distinct arguments, so
    # neither dedup nor keep-slowest can skip work).
    sampled_rows: dict[str, Callable[[], float]] = {}
    sizes: dict[str, int] = {}
    for label, make, count, loops in (
        ("~10 KB CheckRun records", runs, 60, 40),
        ("~1 MB CheckRun records", runs, 6_000, 3),
        ("~10 KB plain dict records", records, 90, 40),
        ("~1 MB plain dict records", records, 9_000, 3),
    ):
        payloads = [make(count, seed) for seed in range(loops)]
        sizes[label] = len(cloudpickle.dumps(((payloads[0],), {})))
        raw_dir = tmp / f"raw-{len(sizes)}"
        raw_dir.mkdir()
        sampled = capture(max_snapshots=10**9, max_bytes=None)(consume)
        plain = capture(max_snapshots=10**9, max_bytes=None, redact=False)(consume)

        def raw_batch(payloads: list[Any] = payloads, raw_dir: Path = raw_dir) -> float:
            t0 = time.perf_counter_ns()
            for p in payloads:
                data = cloudpickle.dumps(((p,), {}))
                with open(raw_dir / f"{time.perf_counter_ns()}.pkl", "wb") as f:
                    f.write(data)
                consume(p)
            elapsed = (time.perf_counter_ns() - t0) / len(payloads)
            for old in raw_dir.iterdir():  # same clean-up as the capture rows
                old.unlink()
            return elapsed

        def cap_batch(payloads: list[Any] = payloads, fn: Any = sampled) -> float:
            t0 = time.perf_counter_ns()
            for p in payloads:
                fn(p)
            elapsed = (time.perf_counter_ns() - t0) / len(payloads)
            capmod._STATE.get_store().forget()
            shutil.rmtree(tmp / "store" / "snapshots", ignore_errors=True)
            return elapsed

        sampled_rows[f"{label}: `cloudpickle.dumps` + write"] = raw_batch
        sampled_rows[f"{label}: `@capture` sampled"] = cap_batch
        sampled_rows[f"{label}: `@capture` sampled, `redact=False`"] = functools.partial(
            cap_batch, fn=plain
        )
    sampled_med = measure(sampled_rows, max(5, batches // 3))
    loop.close()
    assert capmod.stats()["failures"] == 0, capmod.stats()

    lines = [
        f"Python {sys.version.split()[0]}, cloudpickle {cloudpickle.__version__}, "
        f"{os.cpu_count()} CPUs; medians of {batches} batches (sampled rows: "
        f"{max(5, batches // 3)})",
        "",
        "| case | per call | ratio | vs |",
        "|---|---:|---:|---|",
    ]
    base = idle_med["undecorated"]
    wrap = idle_med["minimal `*args, **kwargs` wrapper"]
    abase = idle_med["async: undecorated"]
    awrap = idle_med["async: minimal wrapper"]
    for name, value in idle_med.items():
        if name.startswith("async"):
            ref, ref_name = (
                (awrap, "async minimal wrapper")
                if "capture" in name
                else (abase, "async undecorated")
            )
        elif "not sampled" in name:
            ref, ref_name = wrap, "minimal wrapper"
        else:
            ref, ref_name = base, "undecorated"
        lines.append(f"| {name} | {fmt_ns(value)} | {value / ref:.2f}x | {ref_name} |")
    for name, value in sampled_med.items():
        label = name.split(":")[0]
        raw = sampled_med[f"{label}: `cloudpickle.dumps` + write"]
        suffix = f" ({sizes[label] / 1024:.0f} KB pickled)" if "dumps" in name else ""
        lines.append(f"| {name}{suffix} | {fmt_ns(value)} | {value / raw:.2f}x | dumps + write |")

    checks = [
        ("capture off <= 1.05x undecorated",
         idle_med["`@capture`, off at decoration"] / base, 1.05),
        ("enabled, not sampled <= 1.30x minimal wrapper (sync)",
         idle_med["`@capture`, enabled, not sampled"] / wrap, 1.30),
        ("enabled, not sampled <= 1.30x minimal wrapper (async)",
         idle_med["async: `@capture`, enabled, not sampled"] / awrap, 1.30),
    ]  # fmt: skip
    for label in sizes:
        raw = sampled_med[f"{label}: `cloudpickle.dumps` + write"]
        for variant in ("`@capture` sampled", "`@capture` sampled, `redact=False`"):
            checks.append(
                (f"{label}, {variant} <= 1.25x dumps + write",
                 sampled_med[f"{label}: {variant}"] / raw, 1.25)
            )  # fmt: skip
    lines += ["", "| target | measured | met |", "|---|---:|:---:|"]
    for text, ratio, limit in checks:
        lines.append(f"| {text} | {ratio:.2f}x | {'yes' if ratio <= limit else 'NO'} |")
    lines += [f"\n{n}" for n in notes]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
