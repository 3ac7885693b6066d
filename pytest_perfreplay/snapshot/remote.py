"""Snapshot stores behind any fsspec URL (``s3://bucket/prefix``, ``gs://…``, ``memory://…``).

The key layout under the URL prefix mirrors the local store (``store.py``)::

    snapshots/<target_slug>/slot-NNN.prsnap    captured snapshots, one object per quota slot
    snapshots/<target_slug>/<id>.prsnap        snapshots written by id (no quota)

Capture never does network I/O on the call path. ``put_snapshot`` only appends the
already-encoded bytes to a bounded in-memory queue (bounded in count *and* bytes); a lazily
started, fork-aware daemon thread uploads them. A full queue drops the snapshot and counts
it.

Quotas across hosts, without a coordinator. A target with quota N owns the object names
``slot-000`` .. ``slot-{N-1}``; nothing else ever writes slot names, so **a target never
holds more than N captured snapshots, whatever the number of hosts**. How a slot is taken:

* **Conditional writes** (S3 ``If-None-Match: *``; probed once per process): a host claims
  a free slot with a create-only PUT of the snapshot itself, so exactly one racer wins and
  no snapshot is overwritten. When all slots are taken, a slower call replaces the slot
  holding the fastest one with ``If-Match: <etag>``: two racing replacers cannot both win.
* **Fallback** (a backend without them): a host lists the slots and PUTs into a free one;
  two hosts racing for the same free slot overwrite each other (one snapshot lost, the bound
  still holds). Each process also stops after ``host_cap`` uploads per target (default:
  the quota), which bounds the churn; there is no keep-slowest replacement.

When the server goes away: transient errors (connection refused, timeouts, 5xx) are
retried with exponential backoff capped at ``max_backoff`` seconds, forever; meanwhile the
queue fills and new snapshots are dropped and counted; uploading resumes when the server
returns. Permanent errors (credentials refused, missing bucket) turn the uploader off for
the process, with the reason in ``stats()`` and one log line.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import random
import re
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PerfReplayError, SnapshotError, StoreError
from .format import (
    MAGIC,
    MAX_HEADER_BYTES,
    SUFFIX,
    Header,
    Keyring,
    header_is_signed_by,
    max_payload_bytes,
    parse_header,
    read_header,
    verify,
    verify_file,
)
from .store import (
    DEFAULT_ROOT,
    SLOT_PREFIX,
    STORE_ENV,
    TMP_PREFIX,
    PutResult,
    Store,
    make_private_dirs,
    slot_name,
    target_slug,
    write_atomic,
)

log = logging.getLogger("pytest_perfreplay.remote")
# Pull memory: objects up to one chunk are fetched in batches of at most _PULL_BATCH_BYTES;
# larger ones stream to a temp file chunk by chunk and are verified from disk.
_PULL_CHUNK = 4 << 20
_PULL_BATCH_BYTES = 8 << 20
#: Backoff jitter from our own generator, not the random module's (a service may seed it).
_JITTER = random.Random()
_SAFE_SLUG = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")

ENDPOINT_ENV = "PERFREPLAY_S3_ENDPOINT"
FLUSH_TIMEOUT_ENV = "PERFREPLAY_FLUSH_TIMEOUT"
CONDITIONAL_ENV = "PERFREPLAY_STORE_CONDITIONAL"  # auto | on | off
HOST_CAP_ENV = "PERFREPLAY_STORE_HOST_CAP"
CACHE_ENV = "PERFREPLAY_CACHE"

DEFAULT_QUOTA = 20
FULL_RECHECK_SECONDS = 300.0  # a full target is re-tried after this long (prune frees slots)

_S3_PROTOCOLS = ("s3", "s3a")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

# Codes after which retrying cannot help: the uploader turns off instead.
_PERMANENT_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidToken",
        "NoSuchBucket",
        "InvalidBucketName",
        "AuthorizationHeaderMalformed",
    }
)
_EXISTS_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})


# ---------------------------------------------------------------------------
# URLs and configuration


def is_remote(url: str | os.PathLike[str]) -> bool:
    """True for ``scheme://`` URLs other than ``file://`` (those are plain folders)."""
    m = _SCHEME.match(os.fspath(url))
    return m is not None and m.group(1).lower() not in ("file", "local")


def open_store(url_or_path: str | os.PathLike[str]) -> Store | RemoteStore:
    """A local ``Store`` for paths and ``file://`` URLs, a ``RemoteStore`` for the rest."""
    text = os.fspath(url_or_path)
    if is_remote(text):
        return RemoteStore.from_url(text)
    if _SCHEME.match(text):
        text = text.split("://", 1)[1]
    return Store(Path(text))


def default_cache(url: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Where a remote store is pulled to: ``.perfreplay/remote/<bucket-prefix>-<hash>``."""
    base = Path(root or os.environ.get(CACHE_ENV) or DEFAULT_ROOT)
    digest = hashlib.sha256(url.encode()).hexdigest()[:8]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", url.split("://", 1)[-1]).strip("._")[:60]
    return base / "remote" / f"{readable}-{digest}"


def storage_options(url: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """fsspec options for ``url``: endpoint override and short timeouts for S3.

    Credentials come from the standard AWS chain (env, ``~/.aws``, instance roles); we only
    add the endpoint for S3-compatible servers and make failures fast, because the
    uploader does its own retrying with backoff.
    """
    env = os.environ if environ is None else environ
    m = _SCHEME.match(url)
    protocol = m.group(1).lower() if m else "file"
    opts: dict[str, Any] = {"skip_instance_cache": True}
    if protocol in ("file", "local"):
        opts["auto_mkdir"] = True  # object stores have no folders to create first
    if protocol in _S3_PROTOCOLS:
        endpoint = (
            env.get(ENDPOINT_ENV) or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        )
        if endpoint:
            opts["endpoint_url"] = endpoint
        opts["use_listings_cache"] = False
        opts["config_kwargs"] = {
            "connect_timeout": 3,
            "read_timeout": 20,
            "retries": {"max_attempts": 2, "mode": "standard"},
        }
    return opts


def _env_conditional(environ: Mapping[str, str]) -> bool | None:
    raw = environ.get(CONDITIONAL_ENV, "auto").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw in ("1", "on", "true", "yes"):
        return True
    if raw in ("0", "off", "false", "no"):
        return False
    raise StoreError(f"{CONDITIONAL_ENV} must be auto, on or off, got {raw!r}")


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise StoreError(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise StoreError(f"{name} must be a positive integer, got {raw!r}")
    return value


# ---------------------------------------------------------------------------
# Errors: classify, and say them in one line


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, *[a for a in e.args if isinstance(a, BaseException)]]


def _client_error(exc: BaseException) -> tuple[str, int | None, str] | None:
    """(code, HTTP status, message) of the first botocore-style ClientError in the chain."""
    for e in _chain(exc):
        response = getattr(e, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Error"), dict):
            err = response["Error"]
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return str(err.get("Code", "")), status, str(err.get("Message", ""))
    return None


def _is_exists(exc: BaseException) -> bool:
    if isinstance(exc, FileExistsError):
        return True
    ce = _client_error(exc)
    return ce is not None and (ce[0] in _EXISTS_CODES or ce[1] == 412)


def is_permanent(exc: BaseException) -> bool:
    """Errors that retrying cannot fix: refused credentials, a missing bucket, no s3fs."""
    ce = _client_error(exc)
    if ce is not None:
        return ce[0] in _PERMANENT_CODES or ce[1] == 403
    for e in _chain(exc):
        name = type(e).__name__
        if name in ("NoCredentialsError", "PartialCredentialsError", "ProfileNotFound"):
            return True
        if isinstance(e, (ImportError, PermissionError)):
            return True
    return False


def describe_error(exc: BaseException, url: str) -> str:
    """One line naming the URL and the cause; never a botocore traceback."""
    return f"store {url}: {_cause(exc, url)}"


def _cause(exc: BaseException, url: str) -> str:
    ce = _client_error(exc)
    if ce is not None:
        code, status, message = ce
        bucket = url.split("://", 1)[-1].split("/", 1)[0]
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"):
            return (
                f"credentials refused ({code}); check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            )
        if code in ("AccessDenied", "AllAccessDisabled") or status == 403:
            return f"access denied ({code or status}); the credentials lack permission"
        if code == "NoSuchBucket" or (status == 404 and code in ("404", "NotFound")):
            return f"bucket {bucket!r} does not exist"
        return f"{code or status}: {message}".strip()
    for e in _chain(exc):
        name = type(e).__name__
        if name == "NoCredentialsError":
            return (
                "no credentials found (AWS chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, ~/.aws, instance role)"
            )
        if name == "EndpointConnectionError":
            endpoint = getattr(e, "kwargs", {}).get("endpoint_url", "")
            endpoint = re.sub(r"^(\w+://[^/]+).*$", r"\1", str(endpoint))
            reason = _os_reason(e) or "connection failed"
            return f"cannot connect to {endpoint or 'the endpoint'}: {reason}"
        if name in ("ConnectTimeoutError", "ReadTimeoutError", "TimeoutError", "FSTimeoutError"):
            return f"timed out talking to the server ({name})"
        if isinstance(e, ImportError):
            return f"{e}; install pytest-perfreplay[s3] for s3:// URLs"
        if isinstance(e, FileNotFoundError):
            return f"not found: {e}"
    text = _os_reason(exc) or str(exc) or type(exc).__name__
    return text.splitlines()[0]


def _os_reason(exc: BaseException) -> str | None:
    chain = list(_chain(exc))
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection refused"  # the root cause, however deeply wrapped
    for e in chain:
        if isinstance(e, OSError) and e.strerror and not _client_error(e):
            return e.strerror.lower()
    return None


# ---------------------------------------------------------------------------
# Listing and pulling


@dataclass(frozen=True)
class RemoteEntry:
    """One snapshot object in a remote store, as listed (nothing downloaded)."""

    key: str  # relative to the store URL: snapshots/<slug>/<slot-NNN or id>.prsnap
    target_slug: str
    name: str  # slot-NNN, or the snapshot id for files written by id
    size: int
    modified: float | None  # upload time, seconds since the epoch
    etag: str = ""

    @property
    def version(self) -> str:
        """Changes whenever the object is rewritten (a slot replaced by a slower call)."""
        return f"{self.etag}:{self.size}:{self.modified}"


@dataclass
class PullReport:
    url: str
    dest: Path
    listed: int = 0
    new: int = 0
    present: int = 0
    older: int = 0
    bytes: int = 0
    seconds: float = 0.0
    refused: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused

    def lines(self) -> list[str]:
        mb = self.bytes / 1e6
        rate = f", {mb / self.seconds:.1f} MB/s" if self.seconds > 0 and self.bytes else ""
        out = [
            f"pulled {self.url} into {self.dest}: {self.new} new, {self.present} already "
            f"present, {len(self.refused)} refused, {self.older} older than --since "
            f"({mb:.1f} MB in {self.seconds:.1f}s{rate})"
        ]
        out += [f"  refused {key}: {reason}" for key, reason in self.refused]
        return out


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, *, now: float | None = None) -> float:
    """``2h`` / ``30m`` / ``7d`` ago, or an ISO date/datetime (local time if naive)."""
    m = _DURATION.match(text)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a duration (like 30m, 2h, 7d) or an ISO date (like 2024-05-01 "
            "or 2024-05-01T12:00)"
        ) from None
    return when.timestamp()


def _modified(info: Mapping[str, Any]) -> float | None:
    for name in ("LastModified", "mtime", "created", "updated"):
        value = info.get(name)
        if isinstance(value, dt.datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


# ---------------------------------------------------------------------------
# The store


@dataclass(eq=False)  # queue removal is by identity
class _Item:
    target: str
    data: bytes
    quota: int | None  # None: written by id, outside the quota
    snapshot_id: str = ""
    duration: float = -1.0  # of the captured call; only quota'd items use it
    held: bool = False  # queued, but not uploaded until capture's round-trip check settles


class Held:
    """A queued snapshot the uploader skips until capture's round-trip check settles it.

    It counts against the queue's bounds meanwhile, and the exit flush waits for it at most
    half its timeout, then uploads it as it is (unchecked). Settling it later does nothing.
    """

    def __init__(self, store: RemoteStore, item: _Item) -> None:
        self._store = store
        self._item = item

    def release(self, data: bytes | None = None) -> None:
        """Upload it: as queued, or as ``data`` (the same snapshot re-signed with a mark)."""
        store, item = self._store, self._item
        with store._cond:
            if not item.held or item not in store._queue:
                return  # abandoned at exit, or the queue was reset (fork, turned off)
            if data is not None:
                store._queued_bytes += len(data) - len(item.data)
                item.data = data
            item.held = False
            store._cond.notify_all()

    def drop(self) -> None:
        """Do not upload it (its target cannot replay); counted in ``dropped_unreplayable``."""
        store, item = self._store, self._item
        with store._cond:
            if not item.held or item not in store._queue:
                return
            store._queue.remove(item)
            store._queued_bytes -= len(item.data)
            store.counters.dropped_unreplayable += 1
            store._cond.notify_all()


@dataclass(frozen=True)
class HeldResult(PutResult):
    """``put_snapshot(hold=True)`` accepted the snapshot: settle it with ``held``."""

    held: Held | None = None


@dataclass
class _Counters:
    enqueued: int = 0
    uploaded: int = 0
    replaced: int = 0
    uploaded_bytes: int = 0
    dropped_queue_full: int = 0
    dropped_not_slower: int = 0
    dropped_quota: int = 0
    dropped_duplicate: int = 0
    dropped_off: int = 0
    dropped_at_exit: int = 0
    dropped_unreplayable: int = 0  # held, then its round-trip check failed
    unchecked_at_exit: int = 0  # held, its check still running at exit: uploaded unchecked
    transient_errors: int = 0
    last_error: str | None = None


_INSTANCES: weakref.WeakSet[RemoteStore] = weakref.WeakSet()


def _register_exit_flush(flush: Callable[[], None]) -> None:
    """Flush before interpreter shutdown starts refusing new executor work.

    Plain ``atexit`` runs after ``threading`` has shut down, when asyncio (under s3fs) can
    no longer schedule the DNS lookups a fresh connection needs, so a short-lived process
    would lose its snapshots. ``threading._register_atexit`` runs earlier; registering
    after ``concurrent.futures.thread`` is imported puts our flush before its shutdown.
    """
    import concurrent.futures.thread  # noqa: F401  (its exit hook must be registered first)

    register = getattr(threading, "_register_atexit", None)
    if register is None:
        atexit.register(flush)
        return
    try:
        register(flush)
    except RuntimeError:  # already shutting down
        atexit.register(flush)


def _reset_all_after_fork() -> None:
    for store in list(_INSTANCES):
        store._after_fork()


os.register_at_fork(after_in_child=_reset_all_after_fork)


class RemoteStore:
    """A snapshot store at an fsspec URL, with a non-blocking background uploader."""

    holds_snapshots = True  # put_snapshot(hold=True): capture's round-trip check settles it

    def __init__(
        self,
        url: str,
        *,
        quota: int = DEFAULT_QUOTA,
        host_cap: int | None = None,
        conditional: bool | None = None,
        max_queue: int = 256,
        max_queue_bytes: int = 32 << 20,
        flush_timeout: float = 5.0,
        max_backoff: float = 30.0,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if quota < 1:
            raise ValueError(f"quota must be >= 1, got {quota!r}")
        self.url = url.rstrip("/")
        self.quota = quota
        self.host_cap = host_cap
        self.conditional = conditional  # None: probe (S3 only); True/False: trust the caller
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.flush_timeout = flush_timeout
        self.max_backoff = max_backoff
        self.options = dict(storage_options(self.url) if options is None else options)
        m = _SCHEME.match(self.url)
        self.protocol = m.group(1).lower() if m else "file"
        self._slot_keyring: Keyring | None = None  # set by capture: the keys it signs with
        self._init_process_state()
        _INSTANCES.add(self)

    @classmethod
    def from_url(cls, url: str, environ: Mapping[str, str] | None = None) -> RemoteStore:
        env = os.environ if environ is None else environ
        timeout = env.get(FLUSH_TIMEOUT_ENV, "").strip()
        try:
            flush = float(timeout) if timeout else 5.0
        except ValueError:
            raise StoreError(f"{FLUSH_TIMEOUT_ENV} must be seconds, got {timeout!r}") from None
        return cls(
            url,
            conditional=_env_conditional(env),
            host_cap=_env_int(env, HOST_CAP_ENV),
            flush_timeout=flush,
            options=storage_options(url, env),
        )

    @classmethod
    def from_env(cls) -> RemoteStore:
        url = os.environ.get(STORE_ENV, "")
        if not is_remote(url):
            raise StoreError(f"{STORE_ENV} is not a remote URL: {url!r}")
        return cls.from_url(url)

    def __repr__(self) -> str:
        return f"RemoteStore({self.url!r}, quota={self.quota})"

    # -- per-process state (reset in a forked child) ---------------------------

    def _init_process_state(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._wake = threading.Event()
        self._draining = 0  # flushes waiting now: retries skip the backoff
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_bytes = 0
        self._inflight = False
        self._thread: threading.Thread | None = None
        self._atexit_registered = False
        self._fs: Any = None
        self._root = ""
        self._conditional_ok: bool | None = self.conditional
        self._checked = False
        self._off: str | None = None
        # Per-target facts the hot path reads without I/O, kept up to date by the worker:
        # the duration a call must beat once the target is full (-1 while it is not).
        self._floor: dict[str, float] = {}
        self._digests: dict[str, set[str]] = {}
        self._durations: dict[str, float] = {}  # etag -> duration of the slot's call
        self._host_counts: collections.Counter[str] = collections.Counter()
        self.counters = _Counters()

    def _after_fork(self) -> None:
        # The parent's thread, connections and queued snapshots do not exist here; uploading
        # the parent's queue from the child would duplicate them.
        self._init_process_state()

    # -- the filesystem ------------------------------------------------------

    def filesystem(self) -> tuple[Any, str]:
        """(fsspec filesystem, root path) for this process; created on first use."""
        if self._fs is None:
            from fsspec.core import url_to_fs

            fs, root = url_to_fs(self.url, **self.options)
            if self.protocol in _S3_PROTOCOLS:
                fs.retries = 1  # botocore retries once; our uploader backs off by itself
            self._fs, self._root = fs, str(root).rstrip("/")
        return self._fs, self._root

    def _path(self, key: str) -> str:
        return f"{self.filesystem()[1]}/{key}"

    def check(self) -> None:
        """Raise ``StoreError`` (one line: URL and cause) unless the store can be listed."""
        try:
            self._probe_listing()
        except Exception as exc:
            raise StoreError(describe_error(exc, self.url)) from None

    # -- capture side: never blocks, never raises ----------------------------

    def would_keep(self, target: str, quota: int, duration: float) -> bool:
        """Cheap, no I/O: False when the uploader is off, or the target is full of slower
        calls (as last seen by the worker). Capture asks before encoding a snapshot."""
        if self._off is not None:
            return False
        if len(self._queue) >= self.max_queue:  # unlocked read: a hint, and cheap
            self.counters.dropped_queue_full += 1
            return False  # tell capture now, before it spends time encoding
        floor = self._floor.get(target)
        return floor is None or duration > floor

    def put_snapshot(
        self,
        target: str,
        data: bytes,
        *,
        quota: int,
        duration: float,
        digest: str | None = None,
        fsync: bool = False,
        hold: bool = False,
    ) -> PutResult:
        """Queue a captured call for upload under the target's quota. Never blocks.

        ``written`` means *accepted for upload*; whether it lands (or replaces a faster
        call) is decided by the worker and counted in ``stats()``. With ``hold``, an
        accepted snapshot waits in the queue until the returned ``HeldResult.held`` is
        released or dropped (capture's round-trip check).
        """
        del fsync  # durability is the object store's business
        if digest is not None:
            seen = self._digests.setdefault(target, set())
            if digest in seen:
                self.counters.dropped_duplicate += 1
                return PutResult("duplicate")
            if len(seen) < 4 * quota:  # bounded memory, like everything else here
                seen.add(digest)
        if not self.would_keep(target, quota, duration):
            return PutResult("store_off" if self._off else "not_slower")
        item = _Item(target, data, quota, duration=duration, held=hold)
        outcome = self._enqueue(item)
        if hold and outcome == "written":
            return HeldResult(outcome, held=Held(self, item))
        return PutResult(outcome)

    def write_snapshot(self, target: str, snapshot_id: str, data: bytes) -> None:
        """Queue a snapshot for upload under its id, outside any quota. Never blocks."""
        self._enqueue(_Item(target, data, None, snapshot_id=snapshot_id))

    def after_fork(self) -> None:
        """Called by capture in a forked child (also done by our own fork hook)."""
        if self._pid != os.getpid():
            self._init_process_state()

    def _enqueue(self, item: _Item) -> str:
        c = self.counters
        if self._off is not None:
            c.dropped_off += 1
            return "store_off"
        with self._cond:
            if (
                len(self._queue) >= self.max_queue
                or self._queued_bytes + len(item.data) > self.max_queue_bytes
            ):
                c.dropped_queue_full += 1
                return "queue_full"
            self._queue.append(item)
            self._queued_bytes += len(item.data)
            c.enqueued += 1
            if self._thread is None:
                self._start_worker()
            self._cond.notify()
        return "written"

    def _start_worker(self) -> None:
        thread = threading.Thread(target=self._run, name="perfreplay-upload", daemon=True)
        self._thread = thread
        thread.start()
        if not self._atexit_registered:
            self._atexit_registered = True
            _register_exit_flush(self._flush_at_exit)

    def _flush_at_exit(self) -> None:
        if self._pid != os.getpid() or self._thread is None:
            return
        deadline = time.monotonic() + self.flush_timeout
        self._release_held(time.monotonic() + self.flush_timeout / 2)
        if not self.flush(max(0.0, deadline - time.monotonic())):
            with self._cond:
                left = len(self._queue)
                self.counters.dropped_at_exit += left
            log.warning(
                "perfreplay: %d snapshot(s) dropped: not uploaded to %s within %.1fs at exit (%s)",
                left,
                self.url,
                self.flush_timeout,
                self.counters.last_error or "no error recorded",
            )

    def _release_held(self, until: float) -> None:
        """At exit: wait for held snapshots until ``until``, then upload the rest unchecked.

        A round-trip check is bounded on its own, but the exit must not wait on it beyond
        the flush's bound; an unchecked snapshot is still worth more than none.
        """
        with self._cond:
            while self._off is None and any(i.held for i in self._queue):
                remaining = until - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            abandoned = [i for i in self._queue if i.held]
            for item in abandoned:
                item.held = False
            self.counters.unchecked_at_exit += len(abandoned)
            self._cond.notify_all()
        for target in sorted({i.target for i in abandoned}):
            log.warning(
                "perfreplay: the round-trip check of %s still running at exit: its snapshot "
                "is uploaded unchecked (perfreplay verify --load after pull checks it)",
                target,
            )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the queue is empty (True) or ``timeout`` passes (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # While someone waits, failed uploads retry at once instead of backing off: a
        # backoff cut short once and then resumed would outlast the caller's timeout.
        self._draining += 1
        self._wake.set()
        try:
            with self._cond:
                while (self._queue or self._inflight) and self._off is None:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return not self._queue and not self._inflight
        finally:
            self._draining -= 1

    def close(self) -> None:
        """Stop uploading in this process; queued snapshots are dropped (counted)."""
        if self._off is None:
            self._turn_off("closed")
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            queued, queued_bytes = len(self._queue), self._queued_bytes
        c = self.counters
        return {
            "url": self.url,
            "queued": queued,
            "queued_bytes": queued_bytes,
            "enqueued": c.enqueued,
            "uploaded": c.uploaded,
            "replaced": c.replaced,
            "uploaded_bytes": c.uploaded_bytes,
            "dropped_queue_full": c.dropped_queue_full,
            "dropped_not_slower": c.dropped_not_slower,
            "dropped_quota": c.dropped_quota,
            "dropped_duplicate": c.dropped_duplicate,
            "dropped_off": c.dropped_off,
            "dropped_at_exit": c.dropped_at_exit,
            "dropped_unreplayable": c.dropped_unreplayable,
            "unchecked_at_exit": c.unchecked_at_exit,
            "transient_errors": c.transient_errors,
            "last_error": c.last_error,
            "conditional": self._conditional_ok,
            "off": self._off,
        }

    def trust_durations_from(self, keyring: Keyring | None) -> None:
        """Only objects signed with these keys may claim a ``duration`` when replacing."""
        self._slot_keyring = keyring

    def keyring(self, *, create: bool = False) -> Keyring | None:
        """The configured keyring. A fleet shares one key: there is no store-local key file.

        Keeping the key in the bucket would let anyone who can write there forge snapshots.
        """
        configured = Keyring.from_env()
        if configured is None and create:
            raise StoreError(
                f"store {self.url}: a remote store needs a shared signing key; set "
                "PERFREPLAY_KEY on every capturing host and where you pull"
            )
        return configured

    # -- the uploader thread --------------------------------------------------

    def _run(self) -> None:
        failures = 0
        with contextlib.suppress(Exception):  # connect now, not at exit (errors come later)
            self.filesystem()
        while True:
            with self._cond:
                while (item := self._next_item()) is None and self._off is None:
                    self._cond.wait()
                if self._off is not None or item is None:
                    return
                self._inflight = True
            retry = False
            try:
                self._upload(item)
            except Exception as exc:  # the thread must survive anything
                if is_permanent(exc):
                    self._turn_off(describe_error(exc, self.url))
                else:
                    retry = True
                    self._note_transient(exc)
            with self._cond:
                done = not retry or self._off is not None
                if done and item in self._queue:
                    self._queue.remove(item)
                    self._queued_bytes -= len(item.data)
                self._inflight = False
                self._cond.notify_all()
                if self._off is not None:
                    return
            if retry:
                failures += 1
                delay = min(self.max_backoff, 0.25 * 2 ** min(failures, 20))
                if self._draining:
                    delay = 0.05  # a flush is waiting: keep trying until its deadline
                self._wake.wait(delay * _JITTER.uniform(0.5, 1.0))
                self._wake.clear()
            else:
                failures = 0

    def _next_item(self) -> _Item | None:
        """The oldest snapshot not held by a round-trip check (the queue is short)."""
        return next((i for i in self._queue if not i.held), None)

    def _note_transient(self, exc: BaseException) -> None:
        c = self.counters
        c.transient_errors += 1
        c.last_error = describe_error(exc, self.url)
        n = c.transient_errors
        if n <= 3 or n % 100 == 0:
            log.warning("perfreplay upload failed (%d so far), will retry: %s", n, c.last_error)

    def _turn_off(self, reason: str) -> None:
        with self._cond:
            self._off = reason
            self.counters.dropped_off += len(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            self._cond.notify_all()
        if reason != "closed":
            log.warning("perfreplay remote store turned off for this process: %s", reason)

    def _upload(self, item: _Item) -> None:
        fs, root = self.filesystem()
        if not self._checked:
            self._probe_listing()
            self._checked = True
        slug = target_slug(item.target)
        folder = f"{root}/snapshots/{slug}"
        c = self.counters
        if item.quota is None:
            fs.pipe_file(f"{folder}/{item.snapshot_id}{SUFFIX}", item.data)
        elif self._uses_conditional():
            if not self._claim(fs, folder, item) and not self._replace_fastest(fs, folder, item):
                c.dropped_not_slower += 1
                return
        else:
            cap = self.host_cap or item.quota
            if self._host_counts[slug] >= cap or not self._claim(fs, folder, item):
                self._floor[item.target] = float("inf")  # nothing frees a slot here
                c.dropped_quota += 1
                return
            self._host_counts[slug] += 1
        c.uploaded += 1
        c.uploaded_bytes += len(item.data)

    def _slots(self, fs: Any, folder: str) -> dict[str, Mapping[str, Any]]:
        """The target's slot objects: name -> listing info (size, ETag, …)."""
        try:
            found = fs.find(folder, detail=True)
        except FileNotFoundError:
            return {}
        return {
            str(p).rsplit("/", 1)[-1]: info
            for p, info in found.items()
            if str(p).rsplit("/", 1)[-1].startswith(SLOT_PREFIX)
        }

    def _claim(self, fs: Any, folder: str, item: _Item) -> bool:
        """Take a free slot: create-only PUTs when the store has them, else plain PUTs."""
        assert item.quota is not None
        taken = self._slots(fs, folder)
        conditional = bool(self._conditional_ok)
        for k in range(item.quota):
            name = slot_name(k)
            if name in taken:
                continue
            try:
                if conditional:
                    fs.pipe_file(f"{folder}/{name}", item.data, mode="create")
                else:
                    fs.pipe_file(f"{folder}/{name}", item.data)
            except Exception as exc:
                if conditional and _is_exists(exc):
                    continue  # another host took it since our listing
                raise
            if len(taken) + 1 < item.quota:
                self._floor.pop(item.target, None)
            return True
        return False

    def _replace_fastest(self, fs: Any, folder: str, item: _Item) -> bool:
        """Keep the slowest: overwrite the fastest slot if this call was slower.

        ``If-Match: <etag>`` makes the overwrite conditional on nobody having replaced that
        slot since we looked, so two hosts cannot both evict the same call.
        """
        if self.protocol not in _S3_PROTOCOLS:
            return False  # If-Match is passed the S3 way; other backends keep the first N
        slots = self._slots(fs, folder)
        victim: tuple[float, str, str] | None = None
        kept: dict[str, float] = {}
        for name, info in slots.items():
            etag = str(info.get("ETag") or "")
            if etag not in self._durations:
                try:
                    header = self.read_header(f"{folder[len(self._root) + 1 :]}/{name}")
                    # Only a header signed with a fleet key may claim a duration: a planted
                    # object saying ``duration: 1e308`` would otherwise hold its slot.
                    keys = self._slot_keyring or self.keyring()
                    d = header.duration if header_is_signed_by(header, keys) else None
                except SnapshotError:
                    d = None
                self._durations[etag] = -1.0 if d is None else d  # unreadable: replace first
            d = kept[name] = self._durations[etag]
            if victim is None or d < victim[0]:
                victim = (d, name, etag)
        if victim is None:
            return False
        self._floor[item.target] = victim[0]
        if item.duration <= victim[0]:
            return False
        try:
            out = fs.pipe_file(f"{folder}/{victim[1]}", item.data, IfMatch=victim[2])
        except Exception as exc:
            if _is_exists(exc):
                return False  # someone replaced it first; the next call looks again
            raise
        if isinstance(out, dict) and out.get("ETag"):
            self._durations[str(out["ETag"])] = item.duration
        self._durations.pop(victim[2], None)
        kept[victim[1]] = item.duration
        self._floor[item.target] = min(kept.values())  # what the next call must beat
        self.counters.replaced += 1
        return True

    def _probe_listing(self) -> None:
        # A one-key listing: the cheapest request that fails on bad credentials and on a
        # missing bucket (a PUT into a missing bucket is a retryable 500 on some servers).
        fs, root = self.filesystem()
        if self.protocol in _S3_PROTOCOLS:
            bucket, _, prefix = root.partition("/")
            fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
        else:
            with contextlib.suppress(FileNotFoundError):
                fs.find(root, maxdepth=1)

    def _uses_conditional(self) -> bool:
        if self._conditional_ok is None:
            if self.protocol in _S3_PROTOCOLS:
                self._conditional_ok = self._probe_conditional()
                if not self._conditional_ok:
                    log.warning(
                        "perfreplay: %s ignores If-None-Match; quotas fall back to per-process "
                        "caps",
                        self.url,
                    )
            else:
                self._conditional_ok = False  # fsspec's generic create is check-then-write
        return self._conditional_ok

    def _probe_conditional(self) -> bool:
        """Create one key twice with If-None-Match; the second must be refused."""
        fs, root = self.filesystem()
        probe = f"{root}/.perfreplay-probe-{secrets.token_hex(6)}"
        fs.pipe_file(probe, b"probe", mode="create")
        try:
            fs.pipe_file(probe, b"probe", mode="create")
        except Exception as exc:
            if not _is_exists(exc):
                raise
            return True
        finally:
            with contextlib.suppress(Exception):
                fs.rm_file(probe)
        return False

    # -- reading: listing, headers, pull, delete -----------------------------

    def iter_snapshots(self, targets: Iterable[str] = ()) -> Iterator[RemoteEntry]:
        """The snapshot objects, optionally only those of ``targets`` (names or slugs)."""
        fs, root = self.filesystem()
        slugs = {target_slug(t) for t in targets}
        folders = [f"{root}/snapshots/{s}" for s in sorted(slugs)] or [f"{root}/snapshots"]
        for folder in folders:
            try:
                found = fs.find(folder, detail=True)
            except FileNotFoundError as exc:
                if _client_error(exc) is not None:
                    raise  # a missing bucket, not an empty prefix
                continue
            for path, info in sorted(found.items()):
                rel = str(path)[len(root) + 1 :] if root else str(path)
                parts = rel.split("/")
                if len(parts) != 3 or not parts[2].endswith(SUFFIX):
                    continue
                yield RemoteEntry(
                    key=rel,
                    target_slug=parts[1],
                    name=parts[2][: -len(SUFFIX)],
                    size=int(info.get("size") or 0),
                    modified=_modified(info),
                    etag=str(info.get("ETag") or ""),
                )

    def read(self, key: str) -> bytes:
        data: bytes = self.filesystem()[0].cat_file(self._path(key))
        return data

    def read_header(self, key: str) -> Header:
        """The header only, with range reads: ``list`` and ``show`` download no payload.

        Not verified (nothing is unpickled from it); ``read`` + ``snapshot.verify`` for that.
        """
        fs = self.filesystem()[0]
        path = self._path(key)
        where = f"{self.url}/{key}"
        head: bytes = fs.cat_file(path, start=0, end=65536)
        need = len(MAGIC) + 4
        if len(head) < need or not head.startswith(MAGIC):
            return read_header(head, path=where)[0]  # raises the precise SnapshotError
        n = int.from_bytes(head[len(MAGIC) : need], "big")
        if len(head) < need + n:
            head = fs.cat_file(path, start=0, end=need + n)
        if n > MAX_HEADER_BYTES:
            return read_header(head, path=where)[0]  # raises the precise SnapshotError
        # The same checks as a local file (nesting, field types, id and target patterns),
        # so one junk object cannot crash listing or escape ``prune --invalid``.
        return parse_header(head[need : need + n], path=where)

    def delete(self, key: str) -> None:
        """Delete a snapshot object; a deleted slot is free for the next capture."""
        self.filesystem()[0].rm_file(self._path(key))

    def pull(
        self,
        dest: Store,
        *,
        targets: Iterable[str] = (),
        since: float | None = None,
        allow_unsigned: bool = False,
        keyring: Keyring | None = None,
        batch: int = 128,
        progress: Callable[[int, int], None] | None = None,
    ) -> PullReport:
        """Copy snapshots into ``dest``, verifying each; refused files are reported, not kept.

        Files already in ``dest`` are skipped, so repeated pulls are incremental. Network
        and credential errors raise ``StoreError`` with a one-line message.
        """
        report = PullReport(url=self.url, dest=dest.root)
        t0 = time.perf_counter()
        keys = keyring if keyring is not None else dest.keyring(create=False)
        if keys is None and not allow_unsigned:
            raise StoreError(
                f"store {self.url}: no verifying key; set PERFREPLAY_KEY (or "
                "PERFREPLAY_VERIFY_KEYS) to the key the fleet signs with"
            )
        try:
            entries = list(self.iter_snapshots(targets))
        except Exception as exc:
            raise StoreError(describe_error(exc, self.url)) from None
        report.listed = len(entries)
        manifest_path = (
            dest.root / f".pulled-{hashlib.sha256(self.url.encode()).hexdigest()[:8]}.json"
        )
        manifest = _load_manifest(manifest_path)
        todo: list[RemoteEntry] = []
        for e in entries:
            known = manifest.get(e.key)
            local_id = known[1] if known and known[0] == e.version else None
            if not e.name.startswith(SLOT_PREFIX):
                local_id = e.name
            if since is not None and e.modified is not None and e.modified < since:
                report.older += 1
            elif local_id and (dest.snapshots_dir / e.target_slug / f"{local_id}{SUFFIX}").exists():
                report.present += 1
            else:
                todo.append(e)
        # Sizes come from the listing: an object too large to be a snapshot is refused
        # before a byte of it is downloaded, and batches are bounded in bytes as well as
        # in count, so memory stays near one batch whatever the bucket holds.
        limit = max_payload_bytes() + MAX_HEADER_BYTES + 64
        fitting = []
        for e in todo:
            if e.size > limit:
                report.refused.append((e.key, f"{e.size} bytes, over the {limit}-byte limit"))
            else:
                fitting.append(e)
        chunks: list[list[RemoteEntry]] = [[]]
        held = 0
        streamed: list[RemoteEntry] = []
        for e in fitting:
            if e.size > _PULL_CHUNK:
                streamed.append(e)
                continue
            if chunks[-1] and (len(chunks[-1]) >= batch or held + e.size > _PULL_BATCH_BYTES):
                chunks.append([])
                held = 0
            chunks[-1].append(e)
            held += e.size
        done = 0
        fs, root = self.filesystem()
        try:
            for chunk in chunks:
                if not chunk:
                    continue
                ranged = [e for e in chunk if e.size > 0]  # a range of an empty object is refused
                try:
                    # At most one chunk each, even if an object grew since the listing.
                    blobs = (
                        fs.cat(
                            [f"{root}/{e.key}" for e in ranged],
                            on_error="return",
                            start=0,
                            end=_PULL_CHUNK + 1,
                        )
                        if ranged
                        else {}
                    )
                except Exception as exc:
                    raise StoreError(describe_error(exc, self.url)) from None
                if len(ranged) == 1 and not isinstance(blobs, dict):
                    blobs = {f"{root}/{ranged[0].key}": blobs}
                for e in chunk:
                    data = blobs.get(f"{root}/{e.key}") if e.size > 0 else b""
                    if isinstance(data, FileNotFoundError) or data is None:
                        report.refused.append((e.key, "vanished while pulling"))
                    elif isinstance(data, BaseException):
                        raise StoreError(describe_error(data, self.url))
                    elif len(data) > _PULL_CHUNK:
                        streamed.append(e)  # grew since the listing: stream it instead
                        continue
                    else:
                        kept = self._accept(e, data, dest, keys, allow_unsigned, since, report)
                        if kept is not None:
                            manifest[e.key] = (e.version, kept)
                    done += 1
                if progress is not None:
                    progress(done, len(fitting))
            for e in streamed:
                kept = self._stream(e, dest, keys, allow_unsigned, since, report, limit)
                if kept is not None:
                    manifest[e.key] = (e.version, kept)
                done += 1
                if progress is not None:
                    progress(done, len(fitting))
        finally:
            if report.new:
                _save_manifest(manifest_path, manifest)
        report.seconds = time.perf_counter() - t0
        return report

    def _stream(
        self,
        entry: RemoteEntry,
        dest: Store,
        keys: Keyring | None,
        allow_unsigned: bool,
        since: float | None,
        report: PullReport,
        limit: int,
    ) -> str | None:
        """Download one large object chunk by chunk into a temp file in its destination
        folder, verify it from there in chunks, then rename it into place (or delete it).
        Memory stays near one chunk whatever the object's size."""
        where = f"{self.url}/{entry.key}"
        if not _SAFE_SLUG.fullmatch(entry.target_slug):
            report.refused.append((entry.key, "not a snapshot key (bad target folder name)"))
            return None
        folder = dest.snapshots_dir / entry.target_slug
        try:
            dest.ensure()
            make_private_dirs(folder)
            tmp = folder / f"{TMP_PREFIX}pull.{os.getpid()}.{secrets.token_hex(4)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot write into {dest.root}: {exc}") from None
        fs, root = self.filesystem()
        try:
            with os.fdopen(fd, "wb") as out:
                got = self._download(fs, f"{root}/{entry.key}", out, limit)
            if got is None:
                report.refused.append((entry.key, "vanished while pulling"))
                return None
            if got > limit:
                report.refused.append((entry.key, f"over the {limit}-byte limit"))
                return None
            try:
                header, _ = verify_file(
                    tmp, keyring=keys, allow_unsigned=allow_unsigned, path=where, chunk=_PULL_CHUNK
                )
            except SnapshotError as exc:
                report.refused.append((entry.key, str(exc).removeprefix(f"{where}: ")))
                return None
            if not self._fits(entry, header, since, report):
                return None
            os.replace(tmp, folder / f"{header.id}{SUFFIX}")
        except OSError as exc:
            raise StoreError(f"cannot write into {dest.root}: {exc}") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()  # refused, or failed: nothing half-checked stays
        report.new += 1
        report.bytes += got
        return header.id

    def _download(self, fs: Any, path: str, out: Any, limit: int) -> int | None:
        """Copy ``path`` into ``out`` one chunk at a time: bytes copied (stops past
        ``limit``), or None when the object is gone. Local write errors propagate."""
        got = 0
        try:
            with fs.open(path, "rb", block_size=_PULL_CHUNK, cache_type="none") as src:
                while got <= limit:
                    piece = src.read(min(_PULL_CHUNK, limit + 1 - got))
                    if not piece:
                        break
                    got += len(piece)
                    try:
                        out.write(piece)
                    except OSError as exc:
                        raise _LocalWriteError(exc) from exc
        except _LocalWriteError as exc:
            raise exc.error from None
        except FileNotFoundError as exc:
            code = _client_error(exc)
            if code is not None and code[0] == "NoSuchBucket":
                raise StoreError(describe_error(exc, self.url)) from None
            return None
        except Exception as exc:
            raise StoreError(describe_error(exc, self.url)) from None
        return got

    def _fits(
        self, entry: RemoteEntry, header: Header, since: float | None, report: PullReport
    ) -> bool:
        """A verified header stored under its own name, and new enough to keep."""
        named_by_id = not entry.name.startswith(SLOT_PREFIX)
        if target_slug(header.target) != entry.target_slug or (
            named_by_id and header.id != entry.name
        ):
            report.refused.append(
                (entry.key, f"stored under a name that does not match its header ({header.id})")
            )
            return False
        captured = header.get("captured_at")
        if since is not None and isinstance(captured, (int, float)) and captured < since:
            report.older += 1
            return False
        return True

    def _accept(
        self,
        entry: RemoteEntry,
        data: bytes,
        dest: Store,
        keys: Keyring | None,
        allow_unsigned: bool,
        since: float | None,
        report: PullReport,
    ) -> str | None:
        """Verify one downloaded file and keep it; the snapshot id, or None if refused."""
        where = f"{self.url}/{entry.key}"
        try:
            snap = verify(data, keyring=keys, allow_unsigned=allow_unsigned, path=where)
        except SnapshotError as exc:
            report.refused.append((entry.key, str(exc).removeprefix(f"{where}: ")))
            return None
        header = snap.header
        if not self._fits(entry, header, since, report):
            return None
        try:
            # No fsync: a cache that a crash can cost is pulled again, not lost.
            dest.write_snapshot(header.target, header.id, data, fsync=False)
        except OSError as exc:
            raise StoreError(f"cannot write into {dest.root}: {exc}") from None
        report.new += 1
        report.bytes += len(data)
        return header.id


class _LocalWriteError(Exception):
    """A write into the local cache failed while downloading (not a network error)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _load_manifest(path: Path) -> dict[str, tuple[str, str]]:
    """Which remote object versions a cache already holds: key -> (version, snapshot id)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {
        k: (v[0], v[1])
        for k, v in raw.items()
        if isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)
    }


def _save_manifest(path: Path, manifest: Mapping[str, tuple[str, str]]) -> None:
    body = json.dumps({k: list(v) for k, v in sorted(manifest.items())}, indent=0)
    write_atomic(path, body.encode())


def pull_into_cache(
    url: str,
    *,
    cache: Path | None = None,
    targets: Iterable[str] = (),
    since: float | None = None,
    allow_unsigned: bool = False,
) -> tuple[Store, PullReport]:
    """For replay collection: sync ``url`` into its local cache and return that store.

    Raises ``StoreError`` with one line naming the URL and the cause.
    """
    remote = RemoteStore.from_url(url)
    remote.check()
    dest = Store(cache or default_cache(url))
    try:
        return dest, remote.pull(dest, targets=targets, since=since, allow_unsigned=allow_unsigned)
    except PerfReplayError:
        raise
    except Exception as exc:
        raise StoreError(describe_error(exc, url)) from None
