"""``@capture``: keep the arguments of real calls as signed snapshots.

This module runs inside production services. It imports only the standard library,
cloudpickle and our own snapshot/store modules; never pytest or a profiler. Nothing in
it may change what the decorated function returns or raises.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from .snapshot import (
    Keyring,
    PayloadTooLarge,
    code_hash,
    dumps,
    encode,
    host_name,
    new_snapshot_id,
    runtime_versions,
)
from .store import Store

log = logging.getLogger("pytest_perfreplay.capture")

CAPTURE_ENV = "PERFREPLAY_CAPTURE"
F = TypeVar("F", bound=Callable[..., Any])

_FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES})
_MAX_FAILURES = 20
_LOG_EVERY = 100  # after the first few, log one failure in this many


def _env_enabled() -> bool:
    return os.environ.get(CAPTURE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class _State:
    """Process-wide capture state. ``active`` is the one flag the hot path reads."""

    active: bool = field(default_factory=_env_enabled)
    store: Store | None = None
    keyring: Keyring | None = None
    disabled_reason: str | None = None
    failures: int = 0
    captured: int = 0
    skipped: int = 0
    pid: int = field(default_factory=os.getpid)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get_store(self) -> Store:
        if self.store is None:
            self.store = Store.from_env()
        return self.store

    def get_keyring(self) -> Keyring | None:
        if self.keyring is None:
            self.keyring = self.get_store().keyring(create=True)
        return self.keyring


_STATE = _State()
_local = threading.local()


def _after_fork_in_child() -> None:
    # Locks held by other threads at fork time would never be released in the child.
    _STATE.lock = threading.Lock()
    _STATE.pid = os.getpid()
    _local.__dict__.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def configure(
    *,
    enabled: bool | None = None,
    store: str | os.PathLike[str] | None = None,
    key: str | bytes | None = None,
    verify_keys: tuple[str | bytes, ...] = (),
) -> None:
    """Set capture up at start-up. Decorate (import) after enabling, or nothing is captured."""
    if enabled is not None:
        _STATE.active = enabled
        if enabled:
            _STATE.disabled_reason = None
            _STATE.failures = 0
    if store is not None:
        _STATE.store = Store(root=_as_path(store))
        _STATE.keyring = None
    if key is not None or verify_keys:
        secret = key.encode() if isinstance(key, str) else key
        extra = [k.encode() if isinstance(k, str) else k for k in verify_keys]
        _STATE.keyring = Keyring.from_secrets(secret, extra)


def _as_path(p: str | os.PathLike[str]) -> Any:
    from pathlib import Path

    return Path(p)


def stats() -> dict[str, Any]:
    """Counters for this process: captured, skipped, failures, and why capture stopped."""
    return {
        "active": _STATE.active,
        "captured": _STATE.captured,
        "skipped": _STATE.skipped,
        "failures": _STATE.failures,
        "disabled_reason": _STATE.disabled_reason,
    }


def _contain(exc: BaseException, where: str) -> None:
    """Count a failure inside capture, log it at a bounded rate, and turn off when needed."""
    _STATE.failures += 1
    n = _STATE.failures
    if isinstance(exc, OSError) and exc.errno in _FATAL_ERRNOS:
        _disable(f"{where}: {exc.strerror or exc} ({errno.errorcode.get(exc.errno or 0, '?')})")
    elif n >= _MAX_FAILURES:
        _disable(f"{n} failures, the last in {where}: {exc!r}")
    elif n <= 3 or n % _LOG_EVERY == 0:
        log.warning("perfreplay capture failed in %s (%d so far): %r", where, n, exc)


def _disable(reason: str) -> None:
    if _STATE.active:
        _STATE.active = False
        _STATE.disabled_reason = reason
        log.warning("perfreplay capture turned off for this process: %s", reason)


@dataclass
class _Site:
    """Per-decorated-function settings and facts computed once."""

    func: Callable[..., Any]
    target: str
    is_async: bool
    sample_rate: float
    slower_than: float
    max_snapshots: int
    max_bytes: int | None
    keep_result: bool
    resources: frozenset[str]
    compress: bool
    tags: tuple[str, ...]
    signature: inspect.Signature | None = None
    static_fields: dict[str, Any] | None = None
    written: int = 0

    def static(self) -> dict[str, Any]:
        if self.static_fields is None:
            self.static_fields = {
                "target": self.target,
                "async": self.is_async,
                "host": host_name(),
                "versions": runtime_versions(),
                "code_hash": code_hash(self.func),
                "tags": list(self.tags),
                "keep_result": self.keep_result,
            }
        return self.static_fields

    def resource_ids(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[int, str]:
        if not self.resources:
            return {}
        if self.signature is None:
            self.signature = inspect.signature(self.func)
        bound = self.signature.bind_partial(*args, **kwargs)
        return {id(v): k for k, v in bound.arguments.items() if k in self.resources}


class _Pending:
    __slots__ = ("site", "payload", "placeholders", "started_ns")

    def __init__(self, site: _Site, payload: bytes, placeholders: dict[str, str]) -> None:
        self.site = site
        self.payload = payload
        self.placeholders = placeholders
        self.started_ns = time.time_ns()


def _begin(site: _Site, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Pending | None:
    """Serialize the arguments *before* the call, so mutation cannot change what is kept."""
    if site.written >= site.max_snapshots:
        return None
    _local.busy = True  # pickling can run user code that calls other decorated functions
    try:
        pickled = dumps(
            (args, kwargs), max_bytes=site.max_bytes, resources=site.resource_ids(args, kwargs)
        )
        return _Pending(site, pickled.data, pickled.placeholders)
    except PayloadTooLarge:
        _STATE.skipped += 1
        return None
    except Exception as exc:  # an unpicklable argument must never break the call
        _contain(exc, f"serializing arguments of {site.target}")
        return None
    finally:
        _local.busy = False


def _finish(pending: _Pending, duration: float, outcome: tuple[bool, Any]) -> None:
    site = pending.site
    if duration < site.slower_than:
        _STATE.skipped += 1
        return
    _local.busy = True
    try:
        sections = {"args": pending.payload}
        fields = dict(site.static())
        if site.keep_result:
            ok, value = outcome
            kept: Any = ("return", value) if ok else ("raise", _describe_exception(value))
            sections["result"] = dumps(kept, max_bytes=site.max_bytes).data
        snapshot_id = new_snapshot_id()
        fields.update(
            id=snapshot_id,
            captured_at=pending.started_ns / 1e9,
            pid=os.getpid(),
            duration=duration,
            placeholders=[
                {"name": n, "type": t, "path": "args"} for n, t in pending.placeholders.items()
            ],
        )
        data = encode(fields, sections, keyring=_STATE.get_keyring(), compress=site.compress)
        _STATE.get_store().write_snapshot(site.target, snapshot_id, data)
        site.written += 1
        _STATE.captured += 1
    except PayloadTooLarge:
        _STATE.skipped += 1
    except Exception as exc:
        _contain(exc, f"writing a snapshot of {site.target}")
    finally:
        _local.busy = False


def _describe_exception(exc: BaseException) -> tuple[str, str]:
    t = type(exc)
    return (f"{t.__module__}.{t.__qualname__}", str(exc))


def _sampled(site: _Site) -> bool:
    if getattr(_local, "busy", False):
        return False
    return site.sample_rate >= 1.0 or random.random() < site.sample_rate


def _make_wrapper(site: _Site) -> Callable[..., Any]:
    func = site.func
    state = _STATE
    perf = time.perf_counter

    if site.is_async:

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            if not state.active or not _sampled(site):
                return await func(*args, **kwargs)
            pending = _begin(site, args, kwargs)
            if pending is None:
                return await func(*args, **kwargs)
            t0 = perf()
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                _finish(pending, perf() - t0, (False, exc))
                raise
            _finish(pending, perf() - t0, (True, result))
            return result

        wrapper: Callable[..., Any] = async_wrapper
    else:

        @functools.wraps(func)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            if not state.active or not _sampled(site):
                return func(*args, **kwargs)
            pending = _begin(site, args, kwargs)
            if pending is None:
                return func(*args, **kwargs)
            t0 = perf()
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                _finish(pending, perf() - t0, (False, exc))
                raise
            _finish(pending, perf() - t0, (True, result))
            return result

        wrapper = sync_wrapper
    wrapper.__perfreplay_site__ = site  # type: ignore[attr-defined]
    return wrapper


def _check_supported(func: Any) -> None:
    what = None
    if inspect.isclass(func):
        what = "a class"
    elif inspect.isgeneratorfunction(func):
        what = "a generator function"
    elif inspect.isasyncgenfunction(func):
        what = "an async generator function"
    elif not callable(func):
        what = f"a {type(func).__name__} object"
    if what is not None:
        raise TypeError(
            f"@capture cannot decorate {what} ({func!r}); it supports plain functions, "
            "methods, staticmethods, classmethods and async def functions"
        )


def target_name(func: Callable[..., Any]) -> str:
    return f"{func.__module__}:{func.__qualname__}"


@overload
def capture(func: F, /) -> F: ...
@overload
def capture(
    *,
    sample_rate: float = ...,
    slower_than: float = ...,
    max_snapshots: int = ...,
    max_bytes: int | None = ...,
    keep_result: bool = ...,
    resources: tuple[str, ...] | frozenset[str] | set[str] = ...,
    compress: bool = ...,
    tags: tuple[str, ...] = ...,
    force: bool = ...,
) -> Callable[[F], F]: ...


def capture(
    func: Any = None,
    /,
    *,
    sample_rate: float = 1.0,
    slower_than: float = 0.0,
    max_snapshots: int = 20,
    max_bytes: int | None = 10_000_000,
    keep_result: bool = False,
    resources: tuple[str, ...] | frozenset[str] | set[str] = (),
    compress: bool = False,
    tags: tuple[str, ...] = (),
    force: bool = False,
) -> Any:
    """Keep real calls' arguments as signed snapshots; off unless ``PERFREPLAY_CAPTURE=1``.

    Works bare (``@capture``) or with options. When capture is off at decoration time the
    function comes back untouched, so it costs nothing; ``force=True`` wraps it anyway so
    that a later ``configure(enabled=True)`` takes effect.
    """
    if not 0.0 <= sample_rate <= 1.0:
        raise ValueError(f"sample_rate must be between 0 and 1, got {sample_rate!r}")
    if slower_than < 0:
        raise ValueError(f"slower_than must be >= 0 seconds, got {slower_than!r}")
    if max_snapshots < 1:
        raise ValueError(f"max_snapshots must be >= 1, got {max_snapshots!r}")

    def decorate(f: Any) -> Any:
        if isinstance(f, (staticmethod, classmethod)):
            return type(f)(decorate(f.__func__))
        _check_supported(f)
        if not (_STATE.active or force):
            return f
        site = _Site(
            func=f,
            target=target_name(f),
            is_async=inspect.iscoroutinefunction(f),
            sample_rate=sample_rate,
            slower_than=slower_than,
            max_snapshots=max_snapshots,
            max_bytes=max_bytes,
            keep_result=keep_result,
            resources=frozenset(resources),
            compress=compress,
            tags=tuple(tags),
        )
        return _make_wrapper(site)

    if func is not None:
        return decorate(func)
    return decorate


def unwrap_capture(func: Any) -> Any:
    """The function under our own capture wrapper (other decorators are kept)."""
    site = getattr(func, "__perfreplay_site__", None)
    return site.func if site is not None else func
