"""One capturing process: ``python -m tests.capture_helpers.worker STORE N QUOTA``."""

from __future__ import annotations

import os
import sys

from pytest_perfreplay import capture
from pytest_perfreplay.capture.decorator import configure, stats

from . import targets


def main() -> None:
    store, n, quota = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    configure(enabled=True, store=store)
    f = capture(max_snapshots=quota)(targets.varied)
    for i in range(n):
        # Distinct payloads per process and call, so deduplication does not hide the quota.
        assert f(i, f"{os.getpid()}-{i}".encode() * 50) == 50 * len(f"{os.getpid()}-{i}") + i
    s = stats()
    assert s["failures"] == 0, s
    print(s["captured"], s["replaced"])


if __name__ == "__main__":
    main()
