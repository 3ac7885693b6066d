"""``perfreplay verify --load``: unpickle verified snapshots in a child process.

Only payloads whose signature and hashes the parent has already checked are sent, so the
child unpickles nothing foreign; a child keeps a crash (or a hang) in unpickling away from
the command. The child reports, per payload, whether it loads and which class failed.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CHILD_TIMEOUT = 300.0


def check_in_child(payloads: list[bytes], cwd: Path | None = None) -> list[dict[str, Any]]:
    """One verdict per payload (``{"ok": ...}``, as capture's round-trip check gives)."""
    if not payloads:
        return []
    here = cwd or Path.cwd()
    roots = [str(here / "src"), str(here), *(p for p in sys.path if p)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(roots), PERFREPLAY_CAPTURE="0")
    lines = "".join(base64.b64encode(p).decode() + "\n" for p in payloads)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "from pytest_perfreplay.cli.loadcheck import child; child()"],
            input=lines,
            capture_output=True,
            text=True,
            env=env,
            cwd=here,
            timeout=CHILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return [{"ok": False, "error": f"unpickling took over {CHILD_TIMEOUT:g} s"}] * len(payloads)
    verdicts: list[dict[str, Any]] = []
    for line in proc.stdout.splitlines():
        try:
            verdicts.append(json.loads(line))
        except ValueError:
            continue
    crashed = {"ok": False, "error": f"the loading process died (exit {proc.returncode})"}
    return verdicts + [crashed] * (len(payloads) - len(verdicts))


def child() -> None:
    from ..capture.roundtrip import unpickle_check

    for line in sys.stdin:
        verdict = unpickle_check(base64.b64decode(line.strip()))
        sys.stdout.write(json.dumps(verdict) + "\n")
        sys.stdout.flush()
