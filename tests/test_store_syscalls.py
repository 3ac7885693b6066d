"""The kept-call path of a local store makes only the filesystem calls it needs: one
``.usage`` session under ``flock`` (the cross-process budget) and one temp-file create,
link and unlink (the slot claim). Counted in a real process, on a real store; counting
calls is deterministic where timing on a shared machine is not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import collections, fcntl, json, os, sys
    from pytest_perfreplay.capture.decorator import capture, configure, stats

    configure(enabled=True, store=sys.argv[1], key=b"syscall-count-key-0123456789")

    def consume(x):
        return len(x)

    f = capture(max_snapshots=1000, redact=False)(consume)
    for i in range(5):  # warm: folders made, views read, the round-trip check started
        f([i, "warm"])
    counts = collections.Counter()

    def counting(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)

        setattr(module, name, wrapper)

    for name in ("stat", "lstat", "fstat", "open", "link", "unlink", "replace", "pwrite"):
        counting(os, name)
    counting(fcntl, "flock")
    f([99, "kept"])
    print(json.dumps({"counts": counts, "captured": stats()["captured"]}))
    """
)


def test_a_kept_call_makes_one_counter_session_and_one_stat(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PERFREPLAY_STORE_BUDGET": "1G"}
    for var in ("PERFREPLAY_KEY", "PERFREPLAY_VERIFY_KEYS", "PERFREPLAY_TARGETS"):
        env.pop(var, None)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "store")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout.splitlines()[-1])
    counts = result["counts"]
    assert result["captured"] == 6
    assert counts.get("flock") == 1 and counts.get("pwrite") == 1  # the budget, reserved once
    assert counts.get("open") == 2  # `.usage` and the temp file
    assert counts.get("link") == 1 and counts.get("unlink") == 1  # the exclusive slot claim
    # One stat: is the target folder still there (a store deleted under a running service
    # is recreated)? The store root is made only when opening `.usage` finds it missing,
    # and the view entry reuses the temp file's fstat.
    assert counts.get("stat", 0) + counts.get("lstat", 0) <= 1, counts
