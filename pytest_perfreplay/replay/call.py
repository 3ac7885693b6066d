"""Load a verified snapshot and drive today's code with it: sync or async, fresh arguments."""

from __future__ import annotations

import contextlib
import gc
import importlib
import inspect
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..capture.decorator import unwrap_capture
from ..errors import SnapshotError
from ..snapshot.format import Keyring, Snapshot, code_hash, inspect_unwrap, python_minor, verify

if TYPE_CHECKING:
    import asyncio  # imported when a target is async: ~50 modules, seconds under valgrind

GcPolicy = str  # "collect" | "disable" | "enable"; validated by rounds.RoundPolicy


def read_snapshot(
    path: Path,
    *,
    keyring: Keyring | None,
    allow_unsigned: bool = False,
    allow_python_mismatch: bool = False,
) -> Snapshot:
    """Read and verify a snapshot file; raises SnapshotError with a readable reason."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SnapshotError(f"cannot read: {exc.strerror or exc}", path=str(path)) from None
    return verify(
        data,
        keyring=keyring,
        allow_unsigned=allow_unsigned,
        allow_python_mismatch=allow_python_mismatch,
        path=str(path),
    )


def resolve_target(target: str) -> Callable[..., Any]:
    """``pkg.mod:Class.meth`` -> the plain function in *today's* code.

    Static and class methods resolve to their underlying function, since the captured
    arguments already hold ``cls`` (or nothing) in first position.
    """
    module_name, sep, qualname = target.partition(":")
    if not sep or not module_name or not qualname:
        raise SnapshotError(f"target {target!r} is not of the form 'module:qualname'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise SnapshotError(
            f"cannot import module {module_name!r} for target {target}: {exc}. Run pytest "
            "where that module is importable (check PYTHONPATH / the installed package)."
        ) from None
    for part in qualname.split("."):
        if part == "<locals>":
            raise SnapshotError(
                f"target {target} is a nested function, which cannot be resolved by name; "
                "move it to module level to replay it"
            )
        try:
            nxt = inspect.getattr_static(obj, part)
        except AttributeError:
            raise SnapshotError(
                f"{target}: {part!r} no longer exists in {getattr(obj, '__name__', obj)!r} "
                "(renamed or removed since capture?)"
            ) from None
        if isinstance(nxt, (staticmethod, classmethod)):
            nxt = nxt.__func__
        obj = nxt
    if not callable(obj):
        raise SnapshotError(f"target {target} resolved to a non-callable {type(obj).__name__}")
    return unwrap_capture(obj)  # type: ignore[no-any-return]


def code_changed(snapshot: Snapshot, func: Callable[..., Any]) -> bool | None:
    captured = snapshot.header.get("code_hash")
    if not captured:
        return None
    return bool(code_hash(func) != captured)


def python_mismatch(snapshot: Snapshot) -> str | None:
    import platform

    captured = (snapshot.header.get("versions") or {}).get("python")
    if isinstance(captured, str) and python_minor(captured) != python_minor(
        platform.python_version()
    ):
        return (
            f"captured on Python {captured}, replaying on {platform.python_version()}: pickles "
            "are only reliable within one minor version"
        )
    return None


@dataclass
class CallOutcome:
    ok: bool
    value: Any  # the return value, or the exception raised


@dataclass
class Replayer:
    """Runs one snapshot's call against a target: fresh arguments for every call.

    GC policies (applied in :meth:`measure`, recorded with the result):

    * ``collect``: ``gc.collect()`` before each round, GC enabled during the call. Inside
      :meth:`timing` the heap that existed before the loop is frozen (``gc.freeze``), so the
      per-round collection scans only what the rounds created: microseconds instead of
      tens of milliseconds in a pytest process, which would otherwise eat the budget.
    * ``disable``: ``gc.disable()`` during the call (no collection inside the timing).
    * ``enable``: nothing is done; the interpreter's own GC runs as it would.
    """

    snapshot: Snapshot
    func: Callable[..., Any]
    bindings: Mapping[str, Any] = field(default_factory=dict)
    gc_policy: GcPolicy = "collect"
    _loop: asyncio.AbstractEventLoop | None = None
    _is_async: bool | None = None

    @property
    def is_async(self) -> bool:
        if self._is_async is None:
            self._is_async = inspect.iscoroutinefunction(
                inspect_unwrap(self.func)
            ) or inspect.iscoroutinefunction(self.func)
        return self._is_async

    def fresh_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        renew = getattr(self.bindings, "renew", None)
        if renew is not None:  # fresh live resources for every call (replay/resources.py)
            renew()
        return self.snapshot.load_call(self.bindings)

    def _loop_get(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            import asyncio

            self._loop = asyncio.new_event_loop()
        return self._loop

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One untimed call (used for the result check and the profiling pass)."""
        if self.is_async:
            return self._loop_get().run_until_complete(self.func(*args, **kwargs))
        return self.func(*args, **kwargs)

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        """Around the round loop: freeze the existing heap so per-round collection is cheap."""
        freeze = self.gc_policy == "collect" and gc.get_freeze_count() == 0
        if freeze:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            if freeze:
                gc.unfreeze()

    def measure(self) -> float:
        """One round: unpickle fresh arguments (untimed), then time only the call."""
        args, kwargs = self.fresh_args()
        if self.gc_policy == "collect":
            gc.collect()
        disable = self.gc_policy == "disable" and gc.isenabled()
        if disable:
            gc.disable()
        try:
            if self.is_async:
                return self._loop_get().run_until_complete(self._timed_async(args, kwargs))
            func = self.func
            t0 = time.perf_counter_ns()
            try:  # noqa: SIM105 - zero-cost try; a context manager would add to the timing
                func(*args, **kwargs)
            except Exception:
                pass  # the captured call raised too (checked first): time the raising path
            return (time.perf_counter_ns() - t0) / 1e9
        finally:
            if disable:
                gc.enable()

    async def _timed_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float:
        # Timed inside the loop so that only the awaited call counts, not loop start-up.
        coro = self.func(*args, **kwargs)
        t0 = time.perf_counter_ns()
        with contextlib.suppress(Exception):
            await coro
        return (time.perf_counter_ns() - t0) / 1e9

    def first_call(self) -> tuple[CallOutcome, bool]:
        """Call once; return the outcome and whether the call mutated its arguments."""
        from ..snapshot.format import dumps

        args, kwargs = self.fresh_args()
        before = _digest(dumps((args, kwargs)).data)
        try:
            outcome = CallOutcome(True, self.call(args, kwargs))
        except Exception as exc:
            outcome = CallOutcome(False, exc)
        try:
            mutated = _digest(dumps((args, kwargs)).data) != before
        except Exception:
            mutated = True  # the call left the arguments unpicklable: certainly changed
        return outcome, mutated

    def close(self) -> None:
        close = getattr(self.bindings, "close", None)
        if close is not None:
            close()
        if self._loop is not None:
            self._loop.close()
            self._loop = None


def _digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
