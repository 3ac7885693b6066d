"""One of several processes filling a store with a small budget: ``python -m ... STORE N``."""

from __future__ import annotations

import os
import sys

from pytest_perfreplay import capture
from pytest_perfreplay.capture.decorator import configure, stats

from . import targets


def main() -> None:
    configure(enabled=True, store=sys.argv[1], key=b"budget-test-key-0123456789abcdef")
    f = capture(max_snapshots=10_000, max_bytes=None)(targets.echo)
    for i in range(int(sys.argv[2])):
        f(os.urandom(100_000), i)  # incompressible, ~100 KB each
    print(stats()["captured"], stats()["skipped"].get("over_budget", 0))


if __name__ == "__main__":
    main()
