"""The counting process: what runs under valgrind (``python -m ...counting JOB.json``).

It loads and verifies the snapshot, makes the warm-up calls, then unpickles ``calls`` fresh
argument sets and calls the target on each. The reference run does everything the same
except the counted calls themselves, so the parent's difference is the calls alone.

With ``marker`` set (the callgrind profile), the counted calls are bracketed by two libc
calls that valgrind's ``--zero-before``/``--dump-before`` options watch for; the
arguments are unpickled before the bracket so the profile holds only the calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: libc functions that mark the counted region for callgrind; both are plain system calls
#: that neither the interpreter nor a typical target makes.
ZERO_MARKER = "getpgrp"
DUMP_MARKER = "getppid"


def _caller(func: Callable[..., Any]) -> Callable[[tuple[Any, ...], dict[str, Any]], None]:
    from ..snapshot.format import inspect_unwrap

    if inspect.iscoroutinefunction(inspect_unwrap(func)) or inspect.iscoroutinefunction(func):
        loop = asyncio.new_event_loop()

        def call_async(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            with contextlib.suppress(Exception):
                loop.run_until_complete(func(*args, **kwargs))

        return call_async

    def call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):  # the captured call may raise: count that path
            func(*args, **kwargs)

    return call


def run(job: dict[str, Any]) -> None:
    from ..capture.decorator import configure
    from ..snapshot.store import Store
    from .call import read_snapshot, resolve_target

    configure(enabled=False)
    for root in reversed(job["import_roots"]):
        if root not in sys.path[:1]:
            sys.path.insert(0, root)
    snapshot = read_snapshot(
        Path(job["snapshot_path"]),
        keyring=Store(Path(job["store"])).keyring(),
        allow_unsigned=job["allow_unsigned"],
        allow_python_mismatch=True,  # the parent decided already
    )
    call = _caller(resolve_target(job["target"]))
    policy = job["gc"]

    def one(args: tuple[Any, ...], kwargs: dict[str, Any], counted: bool) -> None:
        if policy == "collect":
            gc.collect()
        if counted:
            if policy == "disable":
                gc.disable()
            call(args, kwargs)
            if policy == "disable":
                gc.enable()

    for _ in range(job["warmup"]):
        args, kwargs = snapshot.load_call({})
        one(args, kwargs, True)

    n = job["calls"]
    marker = bool(job.get("marker"))
    if marker:
        prepared = [snapshot.load_call({}) for _ in range(n)]
        if policy == "collect":
            gc.freeze()  # as in timed rounds: collections scan what the calls made, not this
        os.getpgrp()  # ZERO_MARKER
        for args, kwargs in prepared:
            one(args, kwargs, True)
        os.getppid()  # DUMP_MARKER
        return
    # N fresh argument sets in both runs; only the counted run makes the calls.
    if policy == "collect":
        gc.freeze()  # as in timed rounds: collections scan what the rounds made
    counted = bool(job["counted"])
    for _ in range(n):
        args, kwargs = snapshot.load_call({})
        one(args, kwargs, counted)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    job = json.loads(Path(args[0]).read_text())
    try:
        run(job)
    except Exception as exc:  # one line for the parent's error message
        print(f"perfreplay counting failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
