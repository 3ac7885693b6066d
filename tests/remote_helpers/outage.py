"""A host that lives through an S3 outage: ``python -m tests.remote_helpers.outage URL``.

Line protocol on stdout/stdin, one JSON object per phase:
  warm   50 calls; uploads still in flight; the test then kills the server and says "go"
  down   400 settling calls, then 5,000 with the server gone: results, raised, RSS growth
  back   after the test restarted the server and said "go": 100 calls, then a flush
"""

from __future__ import annotations

import importlib
import json
import sys

import psutil

from pytest_perfreplay.snapshot.remote import RemoteStore
from tests.remote_helpers import workload

# The package exports the decorator under the same name, so fetch the module itself.
capture_mod = importlib.import_module("pytest_perfreplay.capture.decorator")


def calls(host: int, start: int, n: int, size: int) -> dict[str, int]:
    wrong = raised = 0
    for call in range(start, start + n):
        args = workload.arguments(host, call, size)
        try:
            if workload.bulk(*args) != workload.expected(*args):
                wrong += 1
        except Exception:
            raised += 1
    return {"wrong": wrong, "raised": raised}


def say(phase: str, store: RemoteStore, **extra: object) -> None:
    print(json.dumps({"phase": phase, "store": store.stats(), **capture_mod.stats(), **extra}))
    sys.stdout.flush()


def main() -> int:
    url = sys.argv[1]
    capture_mod.configure(enabled=True, store=url)
    store = capture_mod._STATE.get_store()
    assert isinstance(store, RemoteStore), store
    store.max_backoff = 1.0  # come back quickly once the server does
    proc = psutil.Process()
    size = 8_000  # ~40 KB of pickled arguments per call: 5,000 kept would be ~200 MB

    calls(1, 0, 50, size)
    say("warm", store)
    sys.stdin.readline()

    # Settle first: the queue fills and the error paths run once (lazy imports, buffers).
    calls(1, 50, 400, size)
    rss0 = proc.memory_info().rss
    result = calls(1, 1_000, 5_000, size)
    rss1 = proc.memory_info().rss
    say("down", store, rss_growth=rss1 - rss0, **result)
    sys.stdin.readline()

    result = calls(1, 10_000, 100, size)
    flushed = store.flush(120)
    say("back", store, flushed=flushed, **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
