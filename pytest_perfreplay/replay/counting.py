"""The counting process: what runs under valgrind (``python -m ...counting JOB.json``).

It loads and verifies the snapshot, makes the warm-up calls, then unpickles ``calls`` fresh
argument sets and calls the target on each. The reference run does everything the same
except the counted calls themselves, so the parent's difference is the calls alone.

With ``marker`` set (the callgrind profile) and the difference method, the counted calls
are bracketed by two libc calls that valgrind's ``--zero-before``/``--dump-before`` options
watch for; the arguments are unpickled before the bracket so the profile holds only the
calls. With the bracket method the profile brackets each call exactly as the count does.

With ``method == "bracket"`` the process runs under callgrind with instrumentation off:
start-up, imports, unpickling and warm-up run at valgrind's uninstrumented speed, then
client requests (:mod:`.clientreq`) switch instrumentation on and collect only between a
toggle before and after each counted call. Two dumps follow: the calls, then the same
loop around a no-op callable (what the toggles and the call wrapper cost), which the
parent subtracts. One process gives the per-call count; no reference run is needed.
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
#: Set by the parent, longer by 512 bytes per process index (see valgrind.counting_env).
_ENV_PAD = "PERFREPLAY_LAYOUT_PAD"


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
    _heap = _heap_pad(len(os.environ.get(_ENV_PAD, "")) // 512)  # alive until the end

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
    if job.get("prewarm"):
        return
    bracket = job.get("method") == "bracket"
    marker = bool(job.get("marker"))
    if bracket:
        if policy == "collect":
            gc.freeze()  # as in timed rounds: collections scan what the calls made, not this

        def load() -> tuple[tuple[Any, ...], dict[str, Any]]:
            return snapshot.load_call({})

        if marker:
            _profiled(call, policy, load, n)
        else:
            _bracketed(call, policy, load, n, cache_warm=bool(job.get("cache_warm")))
        return
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


def _heap_pad(index: int) -> list[bytes]:
    """Process ``index`` holds a few more small objects of every pymalloc size class, so
    that processes differ in heap state as well as in stack position: a call that
    allocates can take a few percent more or fewer instructions with the heap's state
    (pools refilled or not), and the spread over processes should show it."""
    return [bytes(size) for size in range(1, 497, 16) for _ in range(index * 13)]


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


Loader = Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]


def _region(
    vg: Any,
    call: Callable[[tuple[Any, ...], dict[str, Any]], None],
    policy: str,
    load: Loader,
    n: int,
) -> None:
    """``n`` calls, each on an argument set unpickled just before it, collecting only
    between a toggle before and after the call. Unpickling each set next to its call
    keeps the heap in the same state for every call, whatever ``n`` is: a call that
    allocates costs more or fewer instructions with the state of the allocator's pools,
    and ``n`` sets unpickled ahead of time changed the count by up to 2% with ``n``."""
    toggle = vg.toggle_collect
    for _ in range(n):
        args, kwargs = load()
        if policy == "collect":
            gc.collect()
        elif policy == "disable":
            gc.disable()
        toggle()
        call(args, kwargs)
        toggle()
        if policy == "disable":
            gc.enable()
        del args, kwargs


def _client_requests(what: str) -> Any:
    from .clientreq import ClientRequests

    vg = ClientRequests()
    if not vg.running_on_valgrind():
        raise RuntimeError(f"{what} must run under valgrind --tool=callgrind")
    return vg


def _bracketed(
    call: Callable[[tuple[Any, ...], dict[str, Any]], None],
    policy: str,
    load: Loader,
    n: int,
    *,
    cache_warm: bool,
) -> None:
    """Dump 1: the counted calls; dump 2: the same loop around a no-op (the overhead)."""
    vg = _client_requests("bracketed counting")
    vg.start_instrumentation()
    if cache_warm:  # the simulated caches start cold: one call, instrumented, not collected
        call(*load())
    vg.zero_stats()
    _region(vg, call, policy, load, n)
    vg.dump_stats()
    _region(vg, _caller(_noop), policy, load, n)
    vg.dump_stats()
    vg.stop_instrumentation()


def _profiled(
    call: Callable[[tuple[Any, ...], dict[str, Any]], None],
    policy: str,
    load: Loader,
    n: int,
) -> None:
    """The profile's calls under callgrind, bracketed exactly as the count brackets them
    (instrumentation is on from the start here: callgrind needs the whole call stack to
    find the graph's roots). Dump 1 is the profile; dump 2, the no-op loop, gives the
    overhead to subtract from its per-call figure."""
    vg = _client_requests("the instruction profile")
    vg.zero_stats()
    _region(vg, call, policy, load, n)
    vg.dump_stats()
    _region(vg, _caller(_noop), policy, load, n)
    vg.dump_stats()


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
