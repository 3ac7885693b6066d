"""Writes large snapshots in a loop until killed: ``python -m ... STORE``."""

from __future__ import annotations

import os
import sys

from pytest_perfreplay import capture
from pytest_perfreplay.capture.decorator import configure

from . import targets


def main() -> None:
    configure(enabled=True, store=sys.argv[1])
    f = capture(max_snapshots=10_000)(targets.echo)
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        f(os.urandom(16) + bytes(2_000_000), i)  # ~2 MB: writes take long enough to hit


if __name__ == "__main__":
    main()
