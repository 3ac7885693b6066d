"""``@capture``: keep the arguments of real calls as signed snapshots.

This module runs inside production services. It imports only the standard library,
cloudpickle and our own snapshot/store/redact modules; never pytest or a profiler.
Nothing in it may change what the decorated function returns or raises:

* off unless enabled (``PERFREPLAY_CAPTURE=1`` or ``configure(enabled=True)``); when off
  at decoration time the function comes back untouched;
* enabled but not sampled: one flag test and one ``random()`` comparison, nothing else;
* sampled: the arguments are scrubbed and pickled *before* the call (bounded by
  ``max_bytes``), the call is timed, and the snapshot is written only if the call was
  slow enough and slower than the fastest one the target's quota already keeps;
* every failure inside capture is contained and counted; logging is rate-bounded; disk
  full, a read-only store or repeated failures turn capture off for the process.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import math
import os
import random
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, TypeVar, overload

from ..snapshot.format import (
    Keyring,
    PayloadTooLarge,
    PickleBlocked,
    code_hash,
    dumps,
    encode_parts,
    host_name,
    new_snapshot_id,
    placeholder_is_auto,
    read_header_file,
    runtime_versions,
)
from ..snapshot.store import Store, write_atomic
from . import targets as _targets
from .redact import (
    RedactionError,
    Redactor,
    RedactSpec,
    denied_positions,
    parameter_names,
    scrub_call,
    scrub_positions,
    scrub_result,
    split_found,
)
from .roundtrip import RoundTrips

log = logging.getLogger("pytest_perfreplay.capture")

CAPTURE_ENV = "PERFREPLAY_CAPTURE"
TARGETS_ENV = "PERFREPLAY_TARGETS"
COMMIT_ENVS = (
    "PERFREPLAY_GIT_COMMIT",
    "GIT_COMMIT",
    "GITHUB_SHA",
    "CI_COMMIT_SHA",
    "SOURCE_COMMIT",
)
F = TypeVar("F", bound=Callable[..., Any])

_FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM})
_MAX_FAILURES = 20


def _pickle_seconds() -> float:
    raw = os.environ.get("PERFREPLAY_MAX_PICKLE_SECONDS", "").strip()
    try:
        value = float(raw) if raw else 1.0
    except ValueError:
        value = -1.0
    if not value > 0:  # a typo in an env var must not stop the service
        log.warning("perfreplay: PERFREPLAY_MAX_PICKLE_SECONDS=%r ignored; using 1 s", raw)
        return 1.0
    return value


#: Time cap on pickling one call's arguments (or result), seconds.
MAX_PICKLE_SECONDS = _pickle_seconds()
_LOG_EVERY = 100  # after the first few, log one failure in this many


def _env_enabled() -> bool:
    return os.environ.get(CAPTURE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class _State:
    """Process-wide capture state. ``active`` is the one flag the hot path reads."""

    active: bool = field(default_factory=_env_enabled)
    store: Any = None  # a local Store, or a remote one (duck-typed: would_keep/put_snapshot)
    keyring: Keyring | None = None
    fsync: bool = False
    disabled_reason: str | None = None
    failures: int = 0
    captured: int = 0
    replaced: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    pid: int = field(default_factory=os.getpid)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get_store(self) -> Any:
        if self.store is None:
            self.store = _open_store(os.environ.get("PERFREPLAY_STORE") or None)
            where = getattr(self.store, "root", None) or getattr(self.store, "url", self.store)
            # Once per process: a service started elsewhere would otherwise write unseen.
            log.warning("perfreplay: capturing into %s (PERFREPLAY_STORE changes it)", where)
        return self.store

    def get_keyring(self) -> Keyring:
        if self.keyring is None:
            keyring = self.get_store().keyring(create=True)
            if keyring is None or keyring.signing is None:
                raise RuntimeError(
                    "no signing key: set PERFREPLAY_KEY (PERFREPLAY_VERIFY_KEYS only verifies)"
                )
            self.keyring = keyring
        # Slot replacement trusts the durations of files signed with these keys only.
        self.get_store().trust_durations_from(self.keyring)
        return self.keyring

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _open_store(where: str | os.PathLike[str] | None) -> Any:
    """A local Store for paths; URLs (``s3://``...) go to the remote store, imported lazily."""
    if where is None:
        return Store.from_env()
    if "://" in os.fspath(where) and not os.fspath(where).startswith("file://"):
        from ..snapshot.remote import open_store  # fsspec is only imported for remote stores

        return open_store(where)
    return Store(Path(os.fspath(where).removeprefix("file://")))


_STATE = _State()
_ROUNDTRIPS = RoundTrips()
_local = threading.local()


def _after_fork_in_child() -> None:
    # Locks held by other threads at fork time would never be released in the child.
    _STATE.lock = threading.Lock()
    _STATE.pid = os.getpid()
    _local.__dict__.clear()
    _ROUNDTRIPS.after_fork()
    if isinstance(_STATE.store, Store):
        _STATE.store.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def configure(
    *,
    enabled: bool | None = None,
    store: str | os.PathLike[str] | Store | None = None,
    key: str | bytes | None = None,
    verify_keys: Sequence[str | bytes] = (),
    targets: Iterable[str] | Mapping[str, Mapping[str, Any]] | None = None,
    budget_bytes: int | None | object = ...,
    fsync: bool | None = None,
) -> None:
    """Set capture up at start-up; decorate (import) after enabling, or use ``force=True``.

    ``targets`` patches functions by dotted name (``"pkg.mod:Class.method"``), like
    ``PERFREPLAY_TARGETS``; a mapping gives each target its ``capture`` options.
    ``budget_bytes`` caps the whole store (``None``: no cap). ``fsync=True`` makes each
    snapshot durable before it becomes visible (costs a disk flush per snapshot).
    """
    if store is not None:
        _STATE.store = store if isinstance(store, Store) else _open_store(store)
        _STATE.keyring = None
    if budget_bytes is not ...:
        if budget_bytes is not None and not isinstance(budget_bytes, int):
            raise TypeError(f"budget_bytes must be an int or None, got {budget_bytes!r}")
        current = _STATE.get_store()
        if isinstance(current, Store):
            _STATE.store = Store(root=current.root, budget_bytes=budget_bytes)
    if key is not None or verify_keys:
        secret = key.encode() if isinstance(key, str) else key
        extra = [k.encode() if isinstance(k, str) else k for k in verify_keys]
        _STATE.keyring = Keyring.from_secrets(secret, extra)
    if fsync is not None:
        _STATE.fsync = fsync
    if enabled is not None:
        _STATE.active = enabled
        if enabled:
            _STATE.disabled_reason = None
            _STATE.failures = 0
    if _STATE.active:
        if targets is not None:
            patch_targets(targets)
        elif enabled:
            _patch_env_targets()


def stats() -> dict[str, Any]:
    """Counters for this process: captured, skipped (by reason), failures, why it stopped.

    Waits (bounded) for first snapshots still in their round-trip check, so the counts
    include them.
    """
    _ROUNDTRIPS.drain()
    return {
        "active": _STATE.active,
        "captured": _STATE.captured,
        "replaced": _STATE.replaced,
        "skipped": dict(_STATE.skipped),
        "failures": _STATE.failures,
        "disabled_reason": _STATE.disabled_reason,
    }


def _reset() -> None:
    """Back to the import-time state (for tests). Mutates, so wrappers see the change."""
    fresh = _State()
    for f in dataclass_fields(_State):
        setattr(_STATE, f.name, getattr(fresh, f.name))
    _local.__dict__.clear()
    _LOGGED.clear()
    _ROUNDTRIPS.reset()
    _targets.clear_pending()


# ---------------------------------------------------------------------------
# Failure containment


def _contain(exc: BaseException, where: str, site: _Site | None = None) -> None:
    """Count a failure inside capture, log it at a bounded rate, and turn off when needed.

    A broken store or disk turns capture off for the process; repeated failures of one
    target turn off that target only, so one bad argument type cannot silence the rest.
    """
    state = _STATE
    state.failures += 1
    n = state.failures
    if isinstance(exc, OSError) and exc.errno in _FATAL_ERRNOS:
        code = errno.errorcode.get(exc.errno or 0, "?")
        _disable(f"{where}: {exc.strerror or exc} ({code})")
        return
    if site is not None:
        site.failures += 1
        if site.failures >= _MAX_FAILURES and site.off is None:
            site.off = f"{site.failures} failures, the last in {where}: {exc!r}"
            log.warning("perfreplay capture turned off for %s: %s", site.target, site.off)
            return
    elif n >= _MAX_FAILURES:
        _disable(f"{n} failures, the last in {where}: {exc!r}")
        return
    if n <= 3 or n % _LOG_EVERY == 0:
        log.warning("perfreplay capture failed in %s (%d so far): %r", where, n, exc)


def _disable(reason: str) -> None:
    with _STATE.lock:
        if not _STATE.active:
            return
        _STATE.active = False
        _STATE.disabled_reason = reason
    log.warning("perfreplay capture turned off for this process: %s", reason)


# ---------------------------------------------------------------------------
# Facts recorded once per site


_COMMITS: dict[str, str | None] = {}


def git_commit(start: str | None) -> str | None:
    """The commit from the environment, else from ``.git`` above ``start`` (read once)."""
    for name in COMMIT_ENVS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    if not start:
        return None
    folder = os.path.dirname(os.path.abspath(start))
    if folder in _COMMITS:
        return _COMMITS[folder]
    commit = None
    probe = folder
    for _ in range(40):
        git = os.path.join(probe, ".git")
        if os.path.exists(git):
            commit = _read_git_head(git)
            break
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    _COMMITS[folder] = commit
    return commit


def _read_git_head(git: str) -> str | None:
    try:
        if os.path.isfile(git):  # a worktree or submodule: "gitdir: <path>"
            with open(git) as f:
                line = f.read().strip()
            if not line.startswith("gitdir:"):
                return None
            git = os.path.join(os.path.dirname(git), line.split(":", 1)[1].strip())
        with open(os.path.join(git, "HEAD")) as f:
            head = f.read().strip()
        if not head.startswith("ref:"):
            return head or None
        ref = head.split(":", 1)[1].strip()
        for base in (git, _common_dir(git)):
            loose = os.path.join(base, ref)
            if os.path.isfile(loose):
                with open(loose) as f:
                    return f.read().strip() or None
            packed = os.path.join(base, "packed-refs")
            if os.path.isfile(packed):
                with open(packed) as f:
                    for line in f:
                        sha, _, name = line.strip().partition(" ")
                        if name == ref:
                            return sha
    except OSError:
        return None
    return None


def _common_dir(git: str) -> str:
    try:
        with open(os.path.join(git, "commondir")) as f:
            return os.path.join(git, f.read().strip())
    except OSError:
        return git


def trace_id() -> str | None:
    """The active OpenTelemetry or Sentry trace id, if either is already imported."""
    otel = sys.modules.get("opentelemetry.trace")
    if otel is not None:
        try:
            ctx = otel.get_current_span().get_span_context()
            if ctx.is_valid:
                return f"{ctx.trace_id:032x}"
        except Exception:
            pass
    sentry = sys.modules.get("sentry_sdk")
    if sentry is not None:
        try:
            span = sentry.get_current_span()
            if span is not None and getattr(span, "trace_id", None):
                return str(span.trace_id)
        except Exception:
            pass
    return None


# ---------------------------------------------------------------------------
# The per-function site and the capture steps


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
    name: str | None
    redactor: Redactor | None
    param_names: tuple[str, ...] = ()
    denied: tuple[int, ...] = ()
    signature: inspect.Signature | None = None
    static_fields: dict[str, Any] | None = None
    warned_unpicklable: bool = False
    failures: int = 0
    off: str | None = None  # why capture stopped for this target alone
    receiver: str | None = None

    def static(self) -> dict[str, Any]:
        if self.static_fields is None:
            self.static_fields = {
                "target": self.target,
                "async": self.is_async,
                "host": host_name(),
                "versions": runtime_versions(),
                "git_commit": git_commit(getattr(inspect.getmodule(self.func), "__file__", None)),
                "code_hash": code_hash(self.func),
                "name": self.name,
                "tags": list(self.tags),
                "sampling": {"rate": self.sample_rate, "slower_than": self.slower_than},
            }
        return self.static_fields

    def resource_ids(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[int, str]:
        if self.receiver and args:  # `self` becomes a placeholder, rebuilt from a fixture
            return {id(args[0]): self.receiver, **self._resource_ids(args, kwargs)}
        return self._resource_ids(args, kwargs)

    def _resource_ids(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[int, str]:
        if not self.resources:
            return {}
        if self.signature is None:
            self.signature = inspect.signature(self.func)
        bound = self.signature.bind_partial(*args, **kwargs)
        return {id(v): k for k, v in bound.arguments.items() if k in self.resources}


class _Pending:
    __slots__ = ("site", "payload", "placeholders", "redactions", "started_ns")

    def __init__(
        self,
        site: _Site,
        payload: bytes,
        placeholders: list[dict[str, Any]],
        redactions: list[dict[str, str]],
    ) -> None:
        self.site = site
        self.payload = payload
        self.placeholders = placeholders
        self.redactions = redactions
        self.started_ns = time.time_ns()


def _begin(site: _Site, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Pending | None:
    """Serialize the arguments *before* the call, so mutation cannot change what is kept."""
    if getattr(_local, "busy", False) or site.off is not None:
        return None  # pickling ran user code that called a decorated function
    if _ROUNDTRIPS.blocked(site.target):
        _STATE.skip("cannot_replay")  # its first snapshot did not unpickle: said once
        return None
    _local.busy = True
    try:
        redactions: list[dict[str, str]] = []
        call_args: Any = args
        call_kwargs: Any = kwargs
        resources = site.resource_ids(args, kwargs)
        redactor = site.redactor
        if redactor is not None and redactor.name_only:
            # Pickle first; walk the graph only if a denylisted name occurs in the bytes.
            call_args, redactions = scrub_positions(redactor, args, site.denied, site.param_names)
            pickled = dumps(
                (call_args, call_kwargs),
                max_bytes=site.max_bytes,
                resources=resources,
                max_seconds=MAX_PICKLE_SECONDS,
            )
            if redactor.may_match(pickled.data) or redactor.named_tuple_denied(
                pickled.named_tuples
            ):
                call_args, call_kwargs, more = scrub_call(redactor, call_args, kwargs, (), ())
                if more:
                    redactions += more
                    pickled = dumps(
                        (call_args, call_kwargs),
                        max_bytes=site.max_bytes,
                        resources=resources,
                        max_seconds=MAX_PICKLE_SECONDS,
                    )
        else:
            if redactor is not None:
                call_args, call_kwargs, redactions = scrub_call(
                    redactor, args, kwargs, site.denied, site.param_names
                )
            pickled = dumps(
                (call_args, call_kwargs),
                max_bytes=site.max_bytes,
                resources=resources,
                max_seconds=MAX_PICKLE_SECONDS,
            )
        placeholders = _describe_placeholders(
            pickled.placeholders, pickled.objects, call_args, call_kwargs
        )
        return _Pending(site, pickled.data, placeholders, redactions)
    except PayloadTooLarge:
        _STATE.skip("too_large")
        _log_once(
            site,
            "too_large",
            f"the arguments of {site.target} pickle to more than max_bytes={site.max_bytes} "
            "bytes (pickling stopped there); raise max_bytes to keep such calls",
        )
        return None
    except PickleBlocked as exc:
        _STATE.skip("blocked")
        _warn_once(site, f"cannot pickle the arguments of {site.target} in time: {exc}")
        return None
    except RedactionError as exc:
        _STATE.skip("redaction")
        _warn_once(site, f"cannot scrub the arguments of {site.target}: {exc}")
        return None
    except BaseException as exc:  # an unpicklable argument must never break the call
        # BaseException too: a SystemExit or KeyboardInterrupt raised by a __reduce__ is
        # the capture's failure, not the call's; the body still runs.
        _STATE.skip("unpicklable")
        _warn_once(site, f"cannot pickle the arguments of {site.target}: {exc!r}")
        return None
    finally:
        _local.busy = False


_LOGGED: set[tuple[str, str]] = set()  # (target, kind): loud skips, once per target


def _log_once(site: _Site, kind: str, message: str) -> None:
    if (site.target, kind) not in _LOGGED:
        _LOGGED.add((site.target, kind))
        log.warning("perfreplay: %s; such calls are skipped (counted in stats())", message)


def _note_stand_ins(site: _Site, stand_ins: list[dict[str, str]]) -> None:
    if (site.target, "stand_in") not in _LOGGED:
        _LOGGED.add((site.target, "stand_in"))
        where = "; ".join(f"{s['path']}: {s['why']}" for s in stand_ins[:3])
        log.warning(
            "perfreplay: kept a call of %s with %d part(s) of its arguments replaced by "
            "stand-ins, because redaction could not scrub them (%s); their values were not "
            "written, and its replay sees different input. redact='strict' skips such calls",
            site.target,
            len(stand_ins),
            where,
        )


def _warn_once(site: _Site, message: str) -> None:
    if not site.warned_unpicklable:
        site.warned_unpicklable = True
        log.warning("perfreplay: %s; such calls are skipped (counted in stats())", message)


def _describe_placeholders(
    names: Mapping[str, str], objects: Mapping[str, Any], args: Any, kwargs: Any
) -> list[dict[str, Any]]:
    if not names:
        return []
    paths = _find_paths({id(obj): name for name, obj in objects.items()}, args, kwargs)
    return [
        {
            "name": name,
            "type": type_name,
            "path": paths.get(name, "?"),
            "auto": placeholder_is_auto(type_name),
        }
        for name, type_name in names.items()
    ]


def _find_paths(
    wanted: dict[int, str], args: Any, kwargs: Any, limit: int = 20_000
) -> dict[str, str]:
    """Where each placeholder's object sits in the arguments (breadth-first, bounded)."""
    found: dict[str, str] = {}
    queue: list[tuple[Any, str]] = [(args, "args"), (kwargs, "kwargs")]
    seen: set[int] = set()
    i = 0
    while i < len(queue) and i < limit and len(found) < len(wanted):
        obj, path = queue[i]
        i += 1
        oid = id(obj)
        if oid in wanted and wanted[oid] not in found:
            found[wanted[oid]] = path
            continue
        if oid in seen or isinstance(obj, (str, bytes, int, float, type, types.ModuleType)):
            continue
        seen.add(oid)
        if isinstance(obj, dict):
            queue.extend((v, f"{path}[{k!r}]") for k, v in obj.items())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            queue.extend((v, f"{path}[{j}]") for j, v in enumerate(obj))
        else:
            state = getattr(obj, "__dict__", None)
            if isinstance(state, dict):
                queue.extend((v, f"{path}.{k}") for k, v in state.items())
    return found


def _finish(pending: _Pending, duration: float, outcome: tuple[bool, Any]) -> None:
    site = pending.site
    state = _STATE
    if duration < site.slower_than:
        state.skip("faster_than_threshold")
        return
    _local.busy = True
    try:
        store = state.get_store()  # a local Store or a RemoteStore: the same protocol
        if not store.would_keep(site.target, site.max_snapshots, duration):
            state.skip("not_slower")
            return
        sections = {"args": pending.payload}
        fields = dict(site.static())
        redactions = list(pending.redactions)
        fields["keep_result"] = False
        # The outcome's kind costs a few bytes and lets replay expect the same exception.
        fields["outcome"] = "return" if outcome[0] else "raise"
        if not outcome[0]:
            fields["raised"] = _describe_exception(outcome[1])[0]
        if site.keep_result:
            kept = _keep_result(site, outcome, redactions)
            if isinstance(kept, bytes):
                sections["result"] = kept
                fields["keep_result"] = True
            else:
                fields["result_skipped"] = kept
        snapshot_id = new_snapshot_id()
        redactions, stand_ins = split_found(redactions)
        fields.update(
            id=snapshot_id,
            captured_at=pending.started_ns / 1e9,
            pid=os.getpid(),
            duration=duration,
            trace_id=trace_id(),
            placeholders=pending.placeholders,
            redactions=redactions,
        )
        if stand_ins:
            fields["unscrubbable"] = stand_ins
            _note_stand_ins(site, stand_ins)
        if getattr(store, "holds_snapshots", False):
            _store_held(site, pending.payload, fields, sections, duration)
            return
        result = _store(site, fields, sections, duration)
        if result.stored and getattr(result, "path", None) is not None:
            # The first kept of this target in this process: does it unpickle? Checked off
            # the call path; a failure marks the header of every file kept meanwhile, and
            # no more are kept.
            path = getattr(result, "path", None)

            def mark(verdict: dict[str, Any] | None) -> None:
                if verdict is not None:
                    _mark_unreplayable(site, fields, sections, path, verdict)

            if _ROUNDTRIPS.claim(site.target):
                _ROUNDTRIPS.submit(site.target, pending.payload, mark, _receiver_hint(site))
            else:
                _ROUNDTRIPS.also(site.target, mark)
    except BaseException as exc:  # the call already returned: nothing may replace that
        _contain(exc, f"writing a snapshot of {site.target}", site)
    finally:
        _local.busy = False


def _store_held(
    site: _Site,
    payload: bytes,
    fields: dict[str, Any],
    sections: dict[str, bytes],
    duration: float,
) -> None:
    """A remote store: an upload cannot be rewritten, so it waits for the round-trip check.

    The first snapshot of a target is queued held and released after its check, re-signed
    with the verdict when it fails; later ones are held until then too, and dropped when it
    failed. The store's exit flush bounds the wait (it then uploads them unchecked).
    """
    target = site.target
    if _ROUNDTRIPS.blocked(target):
        _STATE.skip("cannot_replay")  # began before the check failed
        return
    first = _ROUNDTRIPS.claim(target)
    held = getattr(_store(site, fields, sections, duration, hold=True), "held", None)
    if held is None:  # not kept (duplicate, queue full...): the next one is the first
        if first:
            _ROUNDTRIPS.unclaim(target)
        return
    if not first:

        def settle_later(verdict: dict[str, Any] | None) -> None:
            if verdict is None:
                held.release()
                return
            held.drop()
            _STATE.captured -= 1
            _STATE.skip("cannot_replay")

        _ROUNDTRIPS.also(target, settle_later)
        return

    def settle_first(verdict: dict[str, Any] | None) -> None:
        data = None
        if verdict is not None:
            try:
                data = _encode_marked(site, fields, sections, verdict)
            except Exception as exc:  # still worth uploading unmarked
                _contain(exc, f"marking the snapshot of {target}", site)
        held.release(data)

    _ROUNDTRIPS.submit(target, payload, settle_first, _receiver_hint(site), wait_at_exit=False)


def _store(
    site: _Site,
    fields: dict[str, Any],
    sections: dict[str, bytes],
    duration: float,
    hold: bool = False,
) -> Any:
    state = _STATE
    data, header = encode_parts(
        fields, sections, keyring=state.get_keyring(), compress=site.compress
    )
    digest = header["payload"]["sections"][0]["sha256"]
    extra = {"hold": True} if hold else {}  # only remote stores take it
    result = state.get_store().put_snapshot(
        site.target,
        data,
        quota=site.max_snapshots,
        duration=duration,
        digest=digest,
        fsync=state.fsync,
        **extra,
    )
    if result.outcome == "written":
        state.captured += 1
    elif result.outcome == "replaced":
        state.captured += 1
        state.replaced += 1
    else:
        state.skip(result.outcome)
    return result


def _mark_unreplayable(
    site: _Site,
    fields: dict[str, Any],
    sections: dict[str, bytes],
    path: Path | None,
    verdict: dict[str, Any],
) -> None:
    """From the round-trip thread: re-sign the kept file with the verdict in its header."""
    if path is None:
        return
    try:
        current = read_header_file(path)
        if current.get("id") != fields.get("id"):
            return  # replaced by a slower call meanwhile
        write_atomic(path, _encode_marked(site, fields, sections, verdict), fsync=_STATE.fsync)
    except Exception as exc:
        _contain(exc, f"marking the snapshot of {site.target}", site)


def _encode_marked(
    site: _Site, fields: dict[str, Any], sections: dict[str, bytes], verdict: dict[str, Any]
) -> bytes:
    """The same snapshot, re-signed with the failed check's verdict in its header."""
    data, _ = encode_parts(
        {**fields, "roundtrip": verdict},
        sections,
        keyring=_STATE.get_keyring(),
        compress=site.compress,
    )
    return data


def _receiver_hint(site: _Site) -> str:
    if "." not in site.target.partition(":")[2] or site.param_names[:1] != ("self",):
        return ""
    return (
        f" If the receiver `self` is what fails, keep it as a placeholder and rebuild it "
        f'at replay from a fixture: receiver = "NAME" in [tool.perfreplay.targets."'
        f'{site.target}"] (or @capture(receiver="NAME")), and a fixture NAME (or '
        "NAME_factory) in the rootdir conftest.py"
    )


def _keep_result(
    site: _Site, outcome: tuple[bool, Any], redactions: list[dict[str, str]]
) -> bytes | str:
    ok, value = outcome
    if not ok:
        value = _describe_exception(value)
    kind = "return" if ok else "raise"
    try:
        # Pickle first; walk only when a term or a secret shape occurs in the bytes.
        data = dumps((kind, value), max_bytes=site.max_bytes, max_seconds=MAX_PICKLE_SECONDS).data
        redactor = site.redactor
        func_name = getattr(site.func, "__name__", "")
        if redactor is not None and (redactor.may_match(data) or redactor.key_denied(func_name)):
            scrubbed, more = scrub_result(redactor, func_name, value, raised=not ok)
            if more:
                redactions.extend(more)
                data = dumps(
                    (kind, scrubbed), max_bytes=site.max_bytes, max_seconds=MAX_PICKLE_SECONDS
                ).data
        return data
    except PayloadTooLarge:
        return "too large"
    except BaseException as exc:
        return f"unpicklable: {type(exc).__name__}"


def _describe_exception(exc: BaseException) -> tuple[str, str]:
    t = type(exc)
    return (f"{t.__module__}.{t.__qualname__}", str(exc))


# ---------------------------------------------------------------------------
# Wrappers


#: Our own generator: drawing from the random module's would move the sequence of a
#: service that seeds it. Reseeded in a forked child, as the module's is, so pre-fork
#: workers do not all sample the same calls.
_RNG = random.Random()
os.register_at_fork(after_in_child=_RNG.seed)


def _gap(rate: float) -> int:
    """Calls until the next sampled one: geometric, so each call is sampled with ``rate``."""
    if rate >= 1.0:
        return 1
    if rate <= 0.0:
        return 1 << 62  # never, in practice
    return int(math.log(1.0 - _RNG.random()) / math.log(1.0 - rate)) + 1


def _make_wrapper(site: _Site) -> Callable[..., Any]:
    func = site.func
    rate = site.sample_rate
    perf = time.perf_counter
    state = _STATE  # _reset() and configure() mutate this object, never replace it
    countdown = _gap(rate)

    # The idle path: one flag test and one integer countdown (cheaper than random()).
    # Threads may race on the countdown; that only nudges the sampling rate.
    if site.is_async:

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            nonlocal countdown
            if not state.active:
                return await func(*args, **kwargs)
            countdown -= 1
            if countdown > 0:
                return await func(*args, **kwargs)
            countdown = _gap(rate)
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
            nonlocal countdown
            if not state.active:
                return func(*args, **kwargs)
            countdown -= 1
            if countdown > 0:
                return func(*args, **kwargs)
            countdown = _gap(rate)
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
    redact: RedactSpec | bool | None = ...,
    resources: Iterable[str] = ...,
    compress: bool = ...,
    name: str | None = ...,
    tags: Iterable[str] = ...,
    force: bool = ...,
    receiver: str | None = ...,
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
    redact: RedactSpec | bool | None = None,
    resources: Iterable[str] = (),
    compress: bool = False,
    name: str | None = None,
    tags: Iterable[str] = (),
    force: bool = False,
    receiver: str | None = None,
) -> Any:
    """Keep real calls' arguments as signed snapshots; off unless ``PERFREPLAY_CAPTURE=1``.

    Works bare (``@capture``) or with options:

    * ``sample_rate``: fraction of calls considered (0..1);
    * ``slower_than``: seconds; faster calls are not kept;
    * ``max_snapshots``: per target, across processes; when full, a slower call replaces
      the fastest kept one;
    * ``max_bytes``: pickled-size cap, enforced while pickling;
    * ``keep_result``: also keep the return value (or exception type and message);
    * ``redact``: extra key names, types or ``(key, value) -> bool`` callables to scrub,
      on top of the default denylist; ``False`` turns redaction off;
    * ``resources``: parameter names that are live resources, kept as placeholders that
      replay binds to the pytest fixture of the same name;
    * ``compress``: zstd the payload; ``name``/``tags``: labels stored in the header;
    * ``receiver``: for a method whose ``self`` does not survive pickling, keep ``self`` as
      a placeholder that replay binds to the fixture of this name.

    When capture is off at decoration time the function comes back untouched;
    ``force=True`` wraps it anyway so that a later ``configure(enabled=True)`` applies.
    """
    if not 0.0 <= sample_rate <= 1.0:
        raise ValueError(f"sample_rate must be between 0 and 1, got {sample_rate!r}")
    if slower_than < 0:
        raise ValueError(f"slower_than must be >= 0 seconds, got {slower_than!r}")
    if max_snapshots < 1:
        raise ValueError(f"max_snapshots must be >= 1, got {max_snapshots!r}")
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1 or None, got {max_bytes!r}")
    if isinstance(resources, str):
        resources = (resources,)
    if isinstance(tags, str):
        tags = (tags,)
    redactor_spec = redact
    Redactor.from_spec(redact)  # a bad spec fails at decoration, even while capture is off
    resource_names = frozenset(resources)
    tag_tuple = tuple(tags)

    def decorate(f: Any) -> Any:
        if isinstance(f, (staticmethod, classmethod)):
            return type(f)(decorate(f.__func__))
        _check_supported(f)
        if not (_STATE.active or force):
            return f
        if hasattr(f, "__perfreplay_site__"):
            return f  # already captured
        redactor = Redactor.from_spec(redactor_spec)
        names = parameter_names(f)
        site = _Site(
            func=f,
            target=target_name(f),
            is_async=inspect.iscoroutinefunction(f),
            sample_rate=sample_rate,
            slower_than=slower_than,
            max_snapshots=max_snapshots,
            max_bytes=max_bytes,
            keep_result=keep_result,
            resources=resource_names,
            compress=compress,
            tags=tag_tuple,
            name=name,
            redactor=redactor,
            param_names=names,
            denied=denied_positions(redactor, names) if redactor is not None else (),
            receiver=receiver,
        )
        return _make_wrapper(site)

    if func is not None:
        return decorate(func)
    return decorate


def wrap_by_name(func: Any, options: Mapping[str, Any]) -> Any:
    """How a target named by dotted path is wrapped: ``capture(**options, force=True)``."""
    return capture(**{**options, "force": True})(func)


def patch_targets(targets: Iterable[str] | Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Capture functions by dotted name (``"pkg.mod:Class.method"``); see ``targets``."""
    return _targets.patch_targets(targets, wrap_by_name)


def _patch_env_targets() -> None:
    try:
        specs = _targets.parse_env(os.environ.get(TARGETS_ENV, ""))
        if specs:
            patch_targets(specs)
    except Exception as exc:  # a typo in an env var must not stop the service
        log.warning("perfreplay: %s ignored: %s", TARGETS_ENV, exc)


def unwrap_capture(func: Any) -> Any:
    """The function under our own capture wrapper (other decorators are kept)."""
    site = getattr(func, "__perfreplay_site__", None)
    return site.func if site is not None else func


if _STATE.active:
    _patch_env_targets()
