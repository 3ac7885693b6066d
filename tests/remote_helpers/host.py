"""One "host" of the fleet: ``python -m tests.remote_helpers.host URL HOST CALLS``.

The store URL goes through ``configure(store=URL)``, the same path as ``PERFREPLAY_STORE``.

Captures ``workload.score`` into the remote store at URL through the real capture path,
checks every result, flushes, and prints one JSON line of counters.
"""

from __future__ import annotations

import importlib
import json
import sys

from pytest_perfreplay.snapshot.remote import RemoteStore
from tests.remote_helpers import workload

# The package exports the decorator under the same name, so fetch the module itself.
capture_mod = importlib.import_module("pytest_perfreplay.capture.decorator")


def main() -> int:
    url, host, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    capture_mod.configure(enabled=True, store=url)
    store = capture_mod._STATE.get_store()
    assert isinstance(store, RemoteStore), store
    wrong = 0
    for call in range(calls):
        args = workload.arguments(host, call)
        if workload.score(*args) != workload.expected(*args):
            wrong += 1
    flushed = store.flush(60)
    print(
        json.dumps(
            {"wrong": wrong, "flushed": flushed, "store": store.stats(), **capture_mod.stats()}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
