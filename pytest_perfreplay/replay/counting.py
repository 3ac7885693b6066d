"""The counting process: what runs under valgrind (``python -m ...counting JOB.json``).

It loads and verifies the snapshot and makes the warm-up calls, once. Then it forks the
counted processes (``children`` of them): interpreter start-up, imports, unpickling the
snapshot and warm-up are paid once per side, not once per process, and every child starts
from the same warmed-up state. Child ``i`` of ``k`` then holds ``i/k`` of a pool's worth
of blocks of every size class (:mod:`.heappad`): a call that allocates counts more or
fewer instructions at some places in the pools, and the spread over the children shows
how much. valgrind follows forks itself: each child writes its own output file (``%p`` in
the file name) when it exits.

* ``method == "bracket"`` (callgrind, instrumentation off from the start): start-up and
  warm-up run at valgrind's uninstrumented speed. Each child switches instrumentation on,
  collects only between a client-request toggle before and after each counted call
  (:mod:`.clientreq`), and dumps twice: the calls, then the same loop around a no-op (what
  the toggles and the call wrapper cost), which the parent subtracts.
* ``method == "difference"`` (cachegrind): a child's totals include everything its parent
  ran before the fork (with ``toggles``, valgrind >= 3.22, nothing: instrumentation is off
  until each child switches it on around its loop, and the parent ran at ~10x native).
  So each child index forks three processes back to back:
  reference, counted, reference. All three unpickle the same ``calls`` fresh argument sets
  and apply the same GC policy; only the counted one makes the calls. The per-call count
  is counted minus the mean of the two references, divided by ``calls``: what the parent
  ran between two forks (a constant, once its fork loop is warmed up) cancels too. With
  ``toggles`` nothing the parent ran is counted, so one reference per index is enough:
  reference, counted.

Children wait on a pipe until the last fork is done, so no child's exit lands between two
forks. With ``marker`` set (the callgrind profile) one child is forked, as the count's
first: it brackets its calls exactly as a counted child does (or, without client
requests, between two libc calls that ``--zero-before``/``--dump-before`` watch for).
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .heappad import heap_pad

#: libc functions that mark the counted region for callgrind; both are plain system calls
#: that neither the interpreter nor a typical target makes.
ZERO_MARKER = "getpgrp"
DUMP_MARKER = "getppid"

Loader = Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]


def _caller(func: Callable[..., Any]) -> Callable[[tuple[Any, ...], dict[str, Any]], None]:
    from ..snapshot.format import inspect_unwrap

    if inspect.iscoroutinefunction(inspect_unwrap(func)) or inspect.iscoroutinefunction(func):
        import asyncio  # only here: its ~50 modules cost about a second of valgrind start-up

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
    _mark(job, b"L")

    def load() -> tuple[tuple[Any, ...], dict[str, Any]]:
        return snapshot.load_call({})

    for k in range(job["warmup"]):
        _one(call, policy, *load(), counted=True)
        if k == 0 and job.get("quicken"):
            _quicken()
    _mark(job, b"W")
    n = job["calls"]
    bracket = job.get("method") == "bracket"
    toggles = bool(job.get("toggles"))
    if job.get("prewarm"):
        if bracket or toggles:
            from . import clientreq  # noqa: F401 - its bytecode too, for the children
        return
    if policy == "collect":
        gc.freeze()  # as in timed rounds: collections scan what the calls made, not this
    _fork_counts(
        call,
        policy,
        load,
        n,
        children=int(job["children"]),
        bracket=bracket,
        toggles=toggles,
        profile=bool(job.get("marker")),
        cache_warm=bool(job.get("cache_warm")),
        manifest=Path(job["manifest"]),
    )
    _mark(job, b"C")


def _quicken() -> None:
    """After the first warm-up call: what it entered quickens on its next entry."""
    from .quicken import quicken_entered, supported

    if not supported():  # the parent checked the same interpreter: never silently cold
        raise RuntimeError(
            "quickening after the first warm-up call was asked for, but this interpreter's "
            "code objects do not have CPython 3.11's layout"
        )
    quicken_entered()


def _mark(job: dict[str, Any], phase: bytes) -> None:
    """Tell the parent outside valgrind that a phase ended (it times the phases). A
    constant byte to an inherited fd: it leaves no object behind on the heap, whose state
    the forked processes' counts depend on."""
    fd = job.get("marks_fd")
    if fd is not None:
        with contextlib.suppress(OSError):
            os.write(fd, phase)


def _one(
    call: Callable[[tuple[Any, ...], dict[str, Any]], None],
    policy: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    counted: bool,
) -> None:
    if policy == "collect":
        gc.collect()
    if counted:
        if policy == "disable":
            gc.disable()
        call(args, kwargs)
        if policy == "disable":
            gc.enable()


def _profile_calls(
    call: Callable[[tuple[Any, ...], dict[str, Any]], None],
    policy: str,
    load: Loader,
    n: int,
    *,
    bracket: bool,
) -> None:
    # The heap was frozen before the fork, as for the counted processes: freezing again
    # here would reset the collector's counters and move the collections' timing.
    if bracket:
        _profiled(call, policy, load, n)
        return
    prepared = [load() for _ in range(n)]
    os.getpgrp()  # ZERO_MARKER
    for args, kwargs in prepared:
        _one(call, policy, args, kwargs, counted=True)
    os.getppid()  # DUMP_MARKER


#: Forks made and discarded before the counted ones, through the same loop: by then its
#: code is quickened and specialized, so every later trip through it costs the same.
SETTLE_FORKS = 10

Role = tuple[int, str]  # (child index: its heap pad, "bracket" | "reference" | "counted")


def _fork_counts(
    call: Callable[[tuple[Any, ...], dict[str, Any]], None],
    policy: str,
    load: Loader,
    n: int,
    *,
    children: int,
    bracket: bool,
    toggles: bool,
    profile: bool,
    cache_warm: bool,
    manifest: Path,
) -> None:
    """Fork the counted processes, wait for them, and list them in ``manifest``. The
    profile is one such process (index 0), so it sees the heap the count's first one does."""

    def child(role: Role) -> None:
        index, kind = role
        gc.enable()
        pad = heap_pad(index, children)  # noqa: F841 - alive until the process ends
        if kind == "profile":
            _profile_calls(call, policy, load, n, bracket=bracket)
            return
        if kind == "bracket":
            _bracketed(call, policy, load, n, cache_warm=cache_warm)
            return
        # Made here, after the pad, as the bracket makes its own: made in the parent
        # before the forks, it moved every call's count by 0.54% (pymalloc's pools).
        requests = _client_requests("a toggled count", tool="cachegrind") if toggles else None
        if requests is not None:
            # cachegrind counts only from here to the stop: the references' loops, the
            # same requests included, take the same instructions but for the calls
            requests.cachegrind_start()
        for _ in range(n):
            _one(call, policy, *load(), counted=kind == "counted")
        if requests is not None:
            requests.cachegrind_stop()

    if profile:
        roles: list[Role] = [(0, "profile")]
    elif bracket:
        roles = [(i, "bracket") for i in range(children)]
    else:
        kinds = ("reference", "counted") if toggles else ("reference", "counted", "reference")
        roles = [(i, kind) for i in range(children) for kind in kinds]
    gc.disable()  # a collection between two forks would shift one child's count only
    _wait(_spawn([(0, "settle")] * SETTLE_FORKS, None))
    pids = _spawn(roles, child)
    statuses = _wait(pids)
    manifest.write_text(
        json.dumps(
            [
                {"index": index, "kind": kind, "pid": pid, "status": status}
                for (index, kind), pid, status in zip(roles, pids, statuses, strict=True)
            ]
        )
    )
    failed = [
        f"process {index} ({kind}): exit {status}"
        for (index, kind), status in zip(roles, statuses, strict=True)
        if status
    ]
    if failed:
        raise RuntimeError("a counted process failed: " + "; ".join(failed))


def _spawn(roles: Sequence[Role], child: Callable[[Role], None] | None) -> list[int]:
    """Fork one process per role, back to back; each waits until the last fork is done."""
    read, write = os.pipe()
    pids = [0] * len(roles)
    for k in range(len(roles)):
        pid = os.fork()
        if pid == 0:
            _child(read, write, child, roles[k])
        pids[k] = pid
    os.close(read)
    os.close(write)  # the children's reads return: every fork is done
    return pids


def _child(read: int, write: int, child: Callable[[Role], None] | None, role: Role) -> None:
    """A forked process's whole life; it never returns (no atexit, no buffered output)."""
    code = 0
    try:
        os.close(write)
        os.read(read, 1)
        os.close(read)
        if child is not None:
            child(role)
    except BaseException as exc:  # noqa: BLE001 - reported through the exit status
        print(
            f"perfreplay counting failed in process {role[0]}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


def _wait(pids: Sequence[int]) -> list[int]:
    return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


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


def _client_requests(what: str, tool: str = "callgrind") -> Any:
    from .clientreq import ClientRequests

    vg = ClientRequests()
    if not vg.running_on_valgrind():
        raise RuntimeError(f"{what} must run under valgrind --tool={tool}")
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
