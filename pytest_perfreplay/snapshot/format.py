"""The snapshot file: a signed JSON header, then cloudpickle payload sections.

Layout::

    MAGIC (8 bytes) | header length (4 bytes, big endian) | header (canonical JSON) | payload

The header is readable without unpickling anything. The payload is the concatenation of
the sections the header lists (``args``, optionally ``result``), each optionally
zstd-compressed. The header records each stored section's size and SHA-256, and the
signature is an HMAC-SHA256 over the magic and the header *without* its ``sig`` field
(canonical JSON). So one hash pass covers the payload, and loading checks, in order: the
header's shape, the signature, each section's hash, then (bounded) decompression. Nothing
is unpickled before all of that has passed.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import io
import json
import math
import os
import pickle
import platform
import re
import secrets
import socket
import sqlite3
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from ..errors import SignatureError, SnapshotError

MAGIC = b"\x89PRSNAP\n"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
SUFFIX = ".prsnap"

KEY_ENV = "PERFREPLAY_KEY"
VERIFY_KEYS_ENV = "PERFREPLAY_VERIFY_KEYS"
MIN_KEY_BYTES = 16


# ---------------------------------------------------------------------------
# Keys


@dataclass(frozen=True)
class Keyring:
    """One key signs; every key verifies (so keys can be rotated without losing old files)."""

    signing: tuple[str, bytes] | None
    verifying: Mapping[str, bytes] = field(default_factory=dict)
    origins: Mapping[str, str] = field(default_factory=dict)  # key id -> where it lives

    @staticmethod
    def key_id(secret: bytes) -> str:
        return hashlib.sha256(b"perfreplay-key-id\0" + secret).hexdigest()[:12]

    @classmethod
    def from_secrets(cls, signing: bytes | None, verifying: Sequence[bytes] = ()) -> Keyring:
        keys = {cls.key_id(s): s for s in verifying}
        sign = None
        if signing is not None:
            sign = (cls.key_id(signing), signing)
            keys[sign[0]] = signing
        return cls(signing=sign, verifying=keys)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Keyring | None:
        """``PERFREPLAY_KEY`` signs; ``PERFREPLAY_VERIFY_KEYS`` (comma-separated) also verify."""
        env = os.environ if environ is None else environ
        signing = env.get(KEY_ENV, "").strip()
        extra = [k.strip() for k in env.get(VERIFY_KEYS_ENV, "").split(",") if k.strip()]
        if not signing and not extra:
            return None
        named = [(VERIFY_KEYS_ENV, k) for k in extra]
        if signing:
            named.append((KEY_ENV, signing))
        for name, value in named:
            if len(value.encode()) < MIN_KEY_BYTES:
                # A short key is recovered offline from the key id in any header.
                raise SignatureError(
                    f"{name}: a key must be at least {MIN_KEY_BYTES} bytes (got "
                    f"{len(value.encode())}); generate one with: python -c "
                    "'import secrets; print(secrets.token_hex(32))'"
                )
        ring = cls.from_secrets(signing.encode() if signing else None, [k.encode() for k in extra])
        origins = {cls.key_id(k.encode()): VERIFY_KEYS_ENV for k in extra}
        if signing:
            origins[cls.key_id(signing.encode())] = KEY_ENV
        return cls(signing=ring.signing, verifying=ring.verifying, origins=origins)

    def origin(self, key_id: str) -> str:
        """Where a key lives, for messages (``PERFREPLAY_KEY``, a user key file...)."""
        return self.origins.get(key_id, "configured key")

    def sign(self, message_parts: Sequence[bytes]) -> dict[str, str]:
        if self.signing is None:
            raise SignatureError("no signing key configured")
        key_id, secret = self.signing
        mac = hmac.new(secret, digestmod=hashlib.sha256)
        for part in message_parts:
            mac.update(part)
        return {"alg": "hmac-sha256", "key_id": key_id, "mac": mac.hexdigest()}

    def verify(self, sig: Mapping[str, Any], message_parts: Sequence[bytes]) -> None:
        key_id = sig.get("key_id")
        secret = self.verifying.get(key_id) if isinstance(key_id, str) else None
        if secret is None:
            known = ", ".join(sorted(self.verifying)) or "none"
            raise SignatureError(
                f"signed with key id {key_id!r}, which is not among the verifying keys ({known}); "
                f"add that key to {VERIFY_KEYS_ENV}"
            )
        mac = hmac.new(secret, digestmod=hashlib.sha256)
        for part in message_parts:
            mac.update(part)
        given = sig.get("mac")
        if not isinstance(given, str) or not hmac.compare_digest(mac.hexdigest(), given):
            raise SignatureError(
                "bad signature: the file was altered after it was signed; it will not be unpickled"
            )


# ---------------------------------------------------------------------------
# Placeholders for live resources


@dataclass(frozen=True)
class Placeholder:
    """Stands in for a live resource at replay when no fixture of that name is bound."""

    name: str
    type: str

    def __repr__(self) -> str:
        return f"<placeholder {self.name}: {self.type}>"


@dataclass(frozen=True)
class StandIn:
    """Kept in place of a part of the arguments that redaction could not scrub.

    The part (a reference cycle that cannot be copied, or a subgraph past the walk's depth
    limit that may hold a secret) never reaches disk; the header's ``unscrubbable`` lists
    each stand-in by path and why, so replay can say that its input differs.
    """

    path: str
    why: str

    def __repr__(self) -> str:
        return f"<stand-in for {self.path}: {self.why}>"


_BINDINGS: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "perfreplay_bindings", default=None
)


def _placeholder(name: str, type_name: str) -> Any:
    """Unpickling hook: the bound fixture value, a fresh lock, or an inert Placeholder."""
    bindings = _BINDINGS.get()
    if bindings is not None and name in bindings:
        return bindings[name]
    fresh = _FRESH.get(type_name)
    if fresh is not None:
        return fresh()
    return Placeholder(name, type_name)


# Resources that replay can simply recreate: a fresh, unlocked lock is what any call gets.
_FRESH: dict[str, Callable[[], Any]] = {
    "_thread.lock": threading.Lock,
    "_thread.RLock": threading.RLock,
}


def placeholder_is_auto(type_name: str) -> bool:
    """Whether replay recreates this resource itself (no fixture needed)."""
    return type_name in _FRESH


def _type_name(obj: object) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def _default_resource_types() -> tuple[type, ...]:
    lock_types = (type(threading.Lock()), type(threading.RLock()))
    return (
        socket.socket,
        sqlite3.Connection,
        sqlite3.Cursor,
        io.IOBase,
        threading.Condition,
        threading.Semaphore,
        threading.Event,
        threading.Thread,
        types.FrameType,
        types.GeneratorType,
        types.CoroutineType,
        types.AsyncGeneratorType,
        *lock_types,
    )


RESOURCE_TYPES: tuple[type, ...] = _default_resource_types()
_RESOURCE_VERDICTS: dict[type, int] = {}  # type -> _PLAIN, _RESOURCE or _CLOUDPICKLE
_MAX_VERDICTS = 4096  # bounded: the keys keep their types alive


def resource_fixture_name(obj: object) -> str:
    """The fixture name an anonymous resource maps to, e.g. ``sqlite3_connection``."""
    t = type(obj)
    root = t.__module__.split(".")[0].lstrip("_") or "builtins"
    name = f"{root}_{t.__qualname__}".lower()
    return "".join(c if c.isalnum() else "_" for c in name)


# ---------------------------------------------------------------------------
# Bounded pickling


class PayloadTooLarge(SnapshotError):
    """The payload passed ``max_bytes`` while it was being pickled."""


class PickleBlocked(SnapshotError):
    """Pickling would block or ran past its time cap; the snapshot is abandoned."""


class _BoundedBuffer(io.BytesIO):
    def __init__(self, limit: int | None, deadline: float | None) -> None:
        super().__init__()
        self._limit = limit
        self.deadline = deadline

    def write(self, b: Any) -> int:
        n = super().write(b)
        if self._limit is not None and self.tell() > self._limit:
            raise PayloadTooLarge(f"payload exceeds max_bytes={self._limit}")
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise PickleBlocked("pickling ran past max_seconds")
        return n


_PLAIN, _RESOURCE, _CLOUDPICKLE, _NAMEDTUPLE, _CUSTOM = 0, 1, 2, 3, 4
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class defined in Python
_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))
_OBJECT_HOOKS = {
    n: getattr(object, n, None) for n in ("__reduce_ex__", "__reduce__", "__getstate__")
}


def _verdict(t: type, resource_types: tuple[type, ...]) -> int:
    if issubclass(t, resource_types):
        return _RESOURCE
    if issubclass(t, (type, types.FunctionType)):
        return _CLOUDPICKLE  # classes and functions: cloudpickle decides by value or by ref
    if issubclass(t, tuple) and hasattr(t, "_fields"):
        return _NAMEDTUPLE  # its field names are not in the stream: redaction must know
    if t.__flags__ & _HEAPTYPE and any(
        getattr(t, n, None) is not hook for n, hook in _OBJECT_HOOKS.items()
    ):
        return _CUSTOM  # Python code runs while it pickles: it may block or take long
    return _PLAIN


def _check_custom(obj: Any, deadline: float | None) -> None:
    """Before a Python-level reducer runs: would it block on a lock it can reach?

    A ``__getstate__`` that takes ``self.lock`` while the caller holds it deadlocks the
    call. A non-blocking try-acquire of every lock in the object's ``__dict__`` finds a
    held one first (an RLock held by this thread is re-entrant, so it passes).
    """
    if deadline is not None and time.perf_counter() > deadline:
        raise PickleBlocked("pickling ran past max_seconds (a slow __reduce__/__getstate__?)")
    state = getattr(obj, "__dict__", None)
    if not state:
        return
    for name, value in list(state.items()):
        if type(value) in _LOCK_TYPES:
            if not value.acquire(blocking=False):
                raise PickleBlocked(
                    f"{type(obj).__qualname__}.{name} is a lock held while pickling: its "
                    "__getstate__/__reduce__ could block the call"
                )
            value.release()


class _CapturePickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle plus placeholders for resources (``reducer_override`` costs nothing extra)."""

    def __init__(
        self,
        file: _BoundedBuffer,
        resources: Mapping[int, str],
        resource_types: tuple[type, ...],
    ) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._deadline = file.deadline
        self._resources = resources
        self._resource_types = resource_types
        self._verdicts = (
            _RESOURCE_VERDICTS if resource_types is RESOURCE_TYPES else {}
        )  # type -> is it a resource? (isinstance against ABCs is slow; types are few)
        self.placeholders: dict[str, str] = {}
        self.objects: dict[str, Any] = {}
        self.named_tuples: set[type] = set()

    def reducer_override(self, obj: Any) -> Any:
        # Called for every non-builtin object, so the common case is one dict lookup: a
        # type that is neither a resource, a class nor a function pickles the standard way,
        # which is what cloudpickle's own override would answer after more work.
        t = type(obj)
        verdict = self._verdicts.get(t)
        if verdict is None:
            if len(self._verdicts) >= _MAX_VERDICTS:
                self._verdicts.clear()  # per-call classes must not stay alive for ever
            verdict = self._verdicts[t] = _verdict(t, self._resource_types)
        if verdict == _PLAIN and not self._resources:
            return NotImplemented
        if verdict == _CUSTOM:
            _check_custom(obj, self._deadline)
            if not self._resources:
                return NotImplemented
        if verdict == _NAMEDTUPLE:
            self.named_tuples.add(t)
        name = self._resources.get(id(obj)) if self._resources else None
        if name is None and verdict == _RESOURCE:
            name = resource_fixture_name(obj)
        if name is not None:
            type_name = _type_name(obj)
            self.placeholders.setdefault(name, type_name)
            self.objects.setdefault(name, obj)
            return _placeholder, (name, type_name)
        return super().reducer_override(obj)


@dataclass
class Pickled:
    data: bytes
    placeholders: dict[str, str]
    objects: dict[str, Any] = field(default_factory=dict)  # placeholder name -> the object
    named_tuples: set[type] = field(default_factory=set)  # namedtuple types met while pickling


def dumps(
    obj: Any,
    *,
    max_bytes: int | None = None,
    resources: Mapping[int, str] | None = None,
    resource_types: tuple[type, ...] = RESOURCE_TYPES,
    max_seconds: float | None = None,
) -> Pickled:
    """Pickle ``obj``, aborting as soon as the output passes ``max_bytes``.

    ``max_seconds`` caps the time: checked before every Python-level reducer and at every
    buffer write, so many slow reducers stop at the cap (one running reducer is not
    interrupted). Objects whose reducers could block on a held lock are refused first.
    """
    deadline = None if max_seconds is None else time.perf_counter() + max_seconds
    buf = _BoundedBuffer(max_bytes, deadline)
    pickler = _CapturePickler(buf, resources or {}, resource_types)
    pickler.dump(obj)
    return Pickled(buf.getvalue(), pickler.placeholders, pickler.objects, pickler.named_tuples)


# ---------------------------------------------------------------------------
# Environment facts recorded in the header


def code_hash(func: Callable[..., Any]) -> str | None:
    """A hash of the function's code that ignores line numbers and file paths."""
    code = getattr(inspect_unwrap(func), "__code__", None)
    if code is None:
        return None
    h = hashlib.sha256()
    _hash_code(code, h)
    return h.hexdigest()[:16]


def inspect_unwrap(func: Any) -> Any:
    seen = 0
    while hasattr(func, "__wrapped__") and seen < 32:
        func = func.__wrapped__
        seen += 1
    return getattr(func, "__func__", func)


def _hash_code(code: types.CodeType, h: Any) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _hash_code(const, h)
        else:
            h.update(repr(const).encode())


_VERSIONS: dict[str, str] | None = None


def runtime_versions() -> dict[str, str]:
    global _VERSIONS
    if _VERSIONS is None:
        from .._version import __version__

        _VERSIONS = {
            "python": platform.python_version(),
            "implementation": sys.implementation.name,
            "cloudpickle": getattr(cloudpickle, "__version__", "unknown"),
            "perfreplay": __version__,
        }
    return _VERSIONS


def python_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


# ---------------------------------------------------------------------------
# Encoding and decoding


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _compressor() -> Any:
    import zstandard

    return zstandard


@dataclass(frozen=True)
class Header:
    """The parsed, not-yet-trusted header. ``fields`` is the JSON object as written.

    Accessors never raise on odd values: an unverified header is only ever displayed.
    """

    fields: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    @property
    def id(self) -> str:
        return str(self.fields["id"])

    @property
    def target(self) -> str:
        return str(self.fields["target"])

    @property
    def is_async(self) -> bool:
        return self.fields.get("async") is True

    @property
    def duration(self) -> float | None:
        d = self.fields.get("duration")
        return float(d) if isinstance(d, (int, float)) else None

    @property
    def captured_at(self) -> float | None:
        t = self.fields.get("captured_at")
        return float(t) if isinstance(t, (int, float)) else None

    @property
    def placeholders(self) -> list[dict[str, Any]]:
        return [p for p in self.fields.get("placeholders", []) if isinstance(p, dict)]

    @property
    def has_result(self) -> bool:
        return self.fields.get("keep_result") is True

    @property
    def python(self) -> str | None:
        versions = self.fields.get("versions")
        v = versions.get("python") if isinstance(versions, dict) else None
        return v if isinstance(v, str) else None

    @property
    def args_digest(self) -> str | None:
        """SHA-256 of the stored ``args`` section, as recorded (used for deduplication)."""
        for meta in self.fields["payload"]["sections"]:
            if meta["name"] == "args":
                return str(meta["sha256"])
        return None


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NAME = r"[^\W\d]\w*"  # an identifier, Unicode letters included
# module:qualname; qualnames may hold ``<locals>`` and ``<lambda>`` parts.
TARGET_PATTERN = re.compile(
    rf"{_NAME}(?:\.{_NAME})*:(?:{_NAME}|<[a-z]+>)(?:\.(?:{_NAME}|<[a-z]+>))*"
)
_MAX_DURATION = 86_400.0 * 365  # a year: anything longer is junk, not a measurement
_MAX_TIMESTAMP = 1e11  # about the year 5138; datetime overflows long after


def encode(
    fields: Mapping[str, Any],
    sections: Mapping[str, bytes],
    *,
    keyring: Keyring | None,
    compress: bool = False,
) -> bytes:
    """Build a snapshot file. ``fields`` must be JSON-serializable; payload facts are added."""
    return encode_parts(fields, sections, keyring=keyring, compress=compress)[0]


def encode_parts(
    fields: Mapping[str, Any],
    sections: Mapping[str, bytes],
    *,
    keyring: Keyring | None,
    compress: bool = False,
) -> tuple[bytes, dict[str, Any]]:
    """``encode``, also returning the header as written (so callers need not parse it)."""
    codec = "zstd" if compress else "none"
    blobs: list[bytes] = []
    meta: list[dict[str, Any]] = []
    for name, raw in sections.items():
        blob = _compressor().ZstdCompressor(level=3).compress(raw) if compress else raw
        blobs.append(blob)
        meta.append(
            {
                "name": name,
                "size": len(blob),
                "raw_size": len(raw),
                "sha256": hashlib.sha256(blob).hexdigest(),
            }
        )
    payload = b"".join(blobs)
    header = dict(fields)
    header["format"] = FORMAT_VERSION
    header["payload"] = {"codec": codec, "size": len(payload), "sections": meta}
    header.pop("sig", None)
    if keyring is not None and keyring.signing is not None:
        header["sig"] = keyring.sign((MAGIC, _canonical(header)))
    header_bytes = _canonical(header)
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise SnapshotError(f"header is {len(header_bytes)} bytes (limit {MAX_HEADER_BYTES})")
    return MAGIC + len(header_bytes).to_bytes(4, "big") + header_bytes + payload, header


_PREFIX = len(MAGIC) + 4
_WHAT_TO_DO = "delete it (perfreplay prune --invalid) and capture again"


def header_length(prefix: bytes, *, path: str | None = None) -> int:
    """Check the magic and return the header length from the first 12 bytes."""
    if len(prefix) == 0:
        raise SnapshotError(
            f"empty file: not a snapshot (a crashed writer?); {_WHAT_TO_DO}", path=path
        )
    if not prefix.startswith(MAGIC[: len(prefix)]):
        if prefix[:1] == b"\x80":
            hint = "it looks like a plain pickle, and plain pickles are never loaded"
        else:
            hint = "it does not start with the snapshot magic bytes"
        raise SnapshotError(f"not a perfreplay snapshot: {hint}", path=path)
    if len(prefix) < _PREFIX:
        raise SnapshotError(
            f"truncated snapshot: the header length is missing; {_WHAT_TO_DO}", path=path
        )
    n = int.from_bytes(prefix[len(MAGIC) : _PREFIX], "big")
    if n > MAX_HEADER_BYTES or n < 2:
        raise SnapshotError(
            f"corrupt snapshot: header length {n} is outside 2..{MAX_HEADER_BYTES}; {_WHAT_TO_DO}",
            path=path,
        )
    return n


def read_header(data: bytes, *, path: str | None = None) -> tuple[Header, bytes, bytes]:
    """Parse the header (JSON only, never pickle). Returns (header, header bytes, payload)."""
    n = header_length(data[:_PREFIX], path=path)
    if len(data) < _PREFIX + n:
        raise SnapshotError(
            f"truncated snapshot: header needs {n} bytes, file has {len(data) - _PREFIX}; "
            f"{_WHAT_TO_DO}",
            path=path,
        )
    header_bytes = data[_PREFIX : _PREFIX + n]
    header = parse_header(header_bytes, path=path)
    payload = data[_PREFIX + n :]
    size = header["payload"]["size"]
    if len(payload) != size:
        raise _size_mismatch(size, len(payload), path)
    return header, header_bytes, payload


def _size_mismatch(size: int, found: int, path: str | None) -> SnapshotError:
    what = "truncated" if found < size else "trailing bytes"
    return SnapshotError(
        f"payload size mismatch ({what}): header says {size} bytes, file has {found}; "
        f"{_WHAT_TO_DO}",
        path=path,
    )


def read_header_file(path: str | os.PathLike[str]) -> Header:
    """Read only a file's header (a few hundred bytes), checking the payload length by size."""
    where = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return _read_head(f, where)[0]
    except OSError as exc:
        raise SnapshotError(f"cannot read: {exc.strerror or exc}", path=where) from None


def _read_head(f: Any, where: str) -> tuple[Header, bytes, int]:
    """(header, its bytes, its length) of an open snapshot file, positioned at the start;
    the payload's length is checked against the header by the file's size."""
    n = header_length(f.read(_PREFIX), path=where)
    header_bytes = f.read(n)
    if len(header_bytes) < n:
        raise SnapshotError(
            f"truncated snapshot: header needs {n} bytes, file has {len(header_bytes)}; "
            f"{_WHAT_TO_DO}",
            path=where,
        )
    header = parse_header(header_bytes, path=where)
    size = header["payload"]["size"]
    found = os.fstat(f.fileno()).st_size - _PREFIX - n
    if found != size:
        raise _size_mismatch(size, found, where)
    return header, header_bytes, n


def parse_header(header_bytes: bytes, *, path: str | None = None) -> Header:
    try:
        fields = json.loads(header_bytes.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise SnapshotError(f"corrupt header ({reason}); {_WHAT_TO_DO}", path=path) from None
    if not isinstance(fields, dict):
        raise SnapshotError(f"corrupt header: not a JSON object; {_WHAT_TO_DO}", path=path)
    version = fields.get("format")
    if not isinstance(version, int) or isinstance(version, bool):
        raise SnapshotError(f"corrupt header: no format version; {_WHAT_TO_DO}", path=path)
    if version > FORMAT_VERSION:
        raise SnapshotError(
            f"format version {version} is newer than this pytest-perfreplay understands "
            f"({FORMAT_VERSION}); upgrade pytest-perfreplay to read it",
            path=path,
        )
    if version < 1:
        raise SnapshotError(f"corrupt header: format version {version}; {_WHAT_TO_DO}", path=path)
    _check_fields(fields, path)
    return Header(fields)


def _check_fields(fields: Mapping[str, Any], path: str | None) -> None:
    def bad(what: str) -> SnapshotError:
        return SnapshotError(f"corrupt header: {what}; {_WHAT_TO_DO}", path=path)

    for key in ("id", "target"):
        value = fields.get(key)
        if not isinstance(value, str) or not value or len(value) > 1000:
            raise bad(f"field {key!r} missing or mistyped")
    # Paths (pull cache, history, profiles, slots) are built from these two: a strict
    # pattern keeps ``../x``, ``/tmp/x``, NUL and control bytes out of every path.
    if not ID_PATTERN.fullmatch(fields["id"]):
        raise bad("field 'id' is not a snapshot id (1-64 of A-Z a-z 0-9 _ -)")
    if not TARGET_PATTERN.fullmatch(fields["target"]):
        raise bad("field 'target' is not 'module:qualname'")
    payload = fields.get("payload")
    if not isinstance(payload, dict):
        raise bad("field 'payload' missing or mistyped")
    sections = payload.get("sections")
    size = payload.get("size")
    if (
        not isinstance(size, int)
        or isinstance(size, bool)
        or size < 0
        or payload.get("codec") not in ("none", "zstd")
        or not isinstance(sections, list)
        or not all(_section_ok(s) for s in sections)
        or sum(s["size"] for s in sections) != size
        or len({s["name"] for s in sections}) != len(sections)
    ):
        raise bad("payload description is inconsistent")
    optional: dict[str, Callable[[Any], bool]] = {
        "async": lambda v: isinstance(v, bool),
        "keep_result": lambda v: isinstance(v, bool),
        "duration": lambda v: v is None or (_is_number(v) and 0 <= v <= _MAX_DURATION),
        "captured_at": lambda v: v is None or (_is_number(v) and 0 <= v <= _MAX_TIMESTAMP),
        "pid": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
        "versions": lambda v: isinstance(v, dict),
        "placeholders": lambda v: isinstance(v, list) and all(isinstance(p, dict) for p in v),
        "redactions": lambda v: isinstance(v, list),
        "unscrubbable": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
        "tags": lambda v: isinstance(v, list),
        "trace_id": lambda v: v is None or isinstance(v, str),
        "sig": lambda v: isinstance(v, dict),
    }
    for key, ok in optional.items():
        if key in fields and not ok(fields[key]):
            raise bad(f"field {key!r} has the wrong type")


def _section_ok(s: Any) -> bool:
    return (
        isinstance(s, dict)
        and isinstance(s.get("name"), str)
        and isinstance(s.get("size"), int)
        and not isinstance(s.get("size"), bool)
        and s["size"] >= 0
        and isinstance(s.get("sha256"), str)
        and (
            "raw_size" not in s
            or (isinstance(s["raw_size"], int) and not isinstance(s["raw_size"], bool))
        )
    )


@dataclass(frozen=True)
class Snapshot:
    """A snapshot whose signature (or explicit unsigned allowance) has been checked."""

    header: Header
    sections: Mapping[str, bytes]
    path: str | None = None
    signed: bool = True

    @property
    def id(self) -> str:
        return self.header.id

    def loads_section(self, name: str, bindings: Mapping[str, Any] | None = None) -> Any:
        """Unpickle one verified section; failures become a SnapshotError that says why."""
        try:
            raw = self.sections[name]
        except KeyError:
            raise SnapshotError(f"this snapshot has no {name!r} section", path=self.path) from None
        token = _BINDINGS.set(bindings)
        try:
            return pickle.loads(raw)
        except Exception as exc:
            raise SnapshotError(
                f"cannot unpickle the {name!r} section: {type(exc).__name__}: {exc}. Replay "
                "where the captured code and its dependencies are importable.",
                path=self.path,
            ) from exc
        finally:
            _BINDINGS.reset(token)

    def load_call(
        self, bindings: Mapping[str, Any] | None = None
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        loaded = self.loads_section("args", bindings)
        if not isinstance(loaded, tuple) or len(loaded) != 2 or not isinstance(loaded[1], dict):
            raise SnapshotError("the 'args' section is not an (args, kwargs) pair", path=self.path)
        args, kwargs = loaded
        return tuple(args), dict(kwargs)

    def load_result(self) -> Any:
        return self.loads_section("result")

    def args_digest(self) -> str:
        return hashlib.sha256(self.sections["args"]).hexdigest()


def header_is_signed_by(header: Header, keyring: Keyring | None) -> bool:
    """Whether the header carries a valid signature by one of ``keyring``'s keys.

    Checks the header only (no payload): enough to trust its claims (``duration``) when
    choosing which kept call a slower one replaces.
    """
    fields = dict(header.fields)
    sig = fields.pop("sig", None)
    if keyring is None or not isinstance(sig, dict):
        return False
    try:
        keyring.verify(sig, (MAGIC, _canonical(fields)))
    except SignatureError:
        return False
    return True


def verify(
    data: bytes,
    *,
    keyring: Keyring | None,
    allow_unsigned: bool = False,
    allow_python_mismatch: bool = False,
    path: str | None = None,
) -> Snapshot:
    """Check shape, signature, hashes and Python version. Nothing is unpickled here."""
    header, header_bytes, payload = read_header(data, path=path)
    signed = _check_signature(header, header_bytes, keyring, allow_unsigned, path)
    sections = dict(_split_sections(header, payload, path))
    _check_python(header, allow_python_mismatch, path)
    return Snapshot(header=header, sections=sections, path=path, signed=signed)


def verify_file(
    file: str | os.PathLike[str],
    *,
    keyring: Keyring | None,
    allow_unsigned: bool = False,
    allow_python_mismatch: bool = False,
    path: str | None = None,
    chunk: int = 1 << 20,
) -> tuple[Header, bool]:
    """``verify`` for a file on disk, read in pieces of ``chunk`` bytes, so memory stays near
    one chunk whatever the file's size. Returns (header, signed); nothing is unpickled.

    The same checks in the same order: header shape and payload size, signature, section
    hashes, then (zstd) each section decompressed as a stream to exactly its declared size.
    """
    where = path if path is not None else os.fspath(file)
    with open(file, "rb") as f:
        header, header_bytes, n = _read_head(f, where)
        signed = _check_signature(header, header_bytes, keyring, allow_unsigned, where)
        start = _PREFIX + n
        metas = header["payload"]["sections"]
        offset = start
        for meta in metas:  # hashes first: nothing unauthenticated is decompressed
            digest = hashlib.sha256()
            for piece in _pieces(f, offset, meta["size"], chunk):
                digest.update(piece)
            if not hmac.compare_digest(digest.hexdigest(), meta["sha256"]):
                raise SnapshotError(
                    f"section {meta['name']!r} does not match its hash (corrupted); {_WHAT_TO_DO}",
                    path=where,
                )
            offset += meta["size"]
        if header["payload"]["codec"] == "zstd":
            offset = start
            for meta in metas:
                _check_decompress(_Pieces(f, offset, meta["size"], chunk), meta, where, chunk)
                offset += meta["size"]
    _check_python(header, allow_python_mismatch, where)
    return header, signed


def _pieces(f: Any, offset: int, size: int, chunk: int) -> Iterator[bytes]:
    reader = _Pieces(f, offset, size, chunk)
    while piece := reader.read(chunk):
        yield piece


class _Pieces:
    """One section of an open file as a file-like object that reads at most ``chunk``."""

    def __init__(self, f: Any, offset: int, size: int, chunk: int) -> None:
        self._f, self._pos, self._left, self._chunk = f, offset, size, chunk

    def read(self, n: int = -1) -> bytes:
        want = self._left if n is None or n < 0 else min(n, self._left)
        want = min(want, self._chunk)
        if want <= 0:
            return b""
        self._f.seek(self._pos)
        data: bytes = self._f.read(want)
        if not data:
            self._left = 0
            return b""
        self._pos += len(data)
        self._left -= len(data)
        return data


def _check_decompress(source: _Pieces, meta: Mapping[str, Any], path: str, chunk: int) -> None:
    """``_decompress`` without keeping the output: the same limits, the same errors."""
    try:
        zstd = _compressor()
    except ImportError:
        raise SnapshotError(
            "payload is zstd-compressed; install pytest-perfreplay[zstd]", path=path
        ) from None
    limit = _raw_limit(meta, path)
    seen = 0
    try:
        with zstd.ZstdDecompressor().stream_reader(source, read_size=chunk) as reader:
            while seen <= limit:
                piece = reader.read(min(chunk, limit + 1 - seen))
                if not piece:
                    break
                seen += len(piece)
    except Exception as exc:
        raise SnapshotError(
            f"cannot decompress section {meta['name']!r}: {exc}", path=path
        ) from None
    if seen != limit:
        raise SnapshotError(f"section {meta['name']!r} decompressed to the wrong size", path=path)


def _check_signature(
    header: Header,
    header_bytes: bytes,
    keyring: Keyring | None,
    allow_unsigned: bool,
    path: str | None,
) -> bool:
    """Whether the header's signature verified; raises when it must be refused."""
    fields = dict(header.fields)
    sig = fields.pop("sig", None)
    signed = sig is not None
    if signed:
        if keyring is None:
            if not allow_unsigned:
                raise SignatureError(
                    f"signed snapshot but no verifying key is configured; set {KEY_ENV} or "
                    f"{VERIFY_KEYS_ENV} to the key the capturing service used",
                    path=path,
                )
            signed = False  # accepted as unverified, like an unsigned file
        else:
            try:
                keyring.verify(sig, (MAGIC, _canonical(fields)))
            except SignatureError as exc:
                raise SignatureError(str(exc), path=path) from None
            if _canonical(header.fields) != header_bytes:
                raise SignatureError(
                    "header is not in canonical form: altered after signing", path=path
                )
    elif not allow_unsigned:
        raise SignatureError(
            "unsigned snapshot refused; pass --perf-replay-allow-unsigned (or "
            "allow_unsigned=True) only if you trust where it came from",
            path=path,
        )
    return signed


def _check_python(header: Header, allow_python_mismatch: bool, path: str | None) -> None:
    captured = header.python
    if captured is not None and not allow_python_mismatch:
        import platform

        here = platform.python_version()
        if python_minor(captured) != python_minor(here):
            raise SnapshotError(
                f"captured on Python {captured}, but this is Python {here}: pickles are only "
                f"reliable within one minor version. Replay with Python "
                f"{python_minor(captured)}, or capture again on {python_minor(here)}",
                path=path,
            )


def _split_sections(
    header: Header, payload: bytes, path: str | None
) -> Iterator[tuple[str, bytes]]:
    codec = header["payload"]["codec"]
    offset = 0
    for meta in header["payload"]["sections"]:
        blob = payload[offset : offset + meta["size"]]
        offset += meta["size"]
        if not hmac.compare_digest(hashlib.sha256(blob).hexdigest(), meta["sha256"]):
            raise SnapshotError(
                f"section {meta['name']!r} does not match its hash (corrupted); {_WHAT_TO_DO}",
                path=path,
            )
        if codec == "zstd":
            yield meta["name"], _decompress(blob, meta, path)
        else:
            yield meta["name"], blob


def _decompress(blob: bytes, meta: Mapping[str, Any], path: str | None) -> bytes:
    try:
        zstd = _compressor()
    except ImportError:
        raise SnapshotError(
            "payload is zstd-compressed; install pytest-perfreplay[zstd]", path=path
        ) from None
    limit = _raw_limit(meta, path)
    # Streamed in chunks: memory follows what the data really holds, never what the
    # header (or the zstd frame) claims, and it stops one byte past the declared size.
    out = bytearray()
    try:
        with zstd.ZstdDecompressor().stream_reader(blob) as reader:
            while len(out) <= limit:
                chunk = reader.read(min(1 << 20, limit + 1 - len(out)))
                if not chunk:
                    break
                out += chunk
    except Exception as exc:
        raise SnapshotError(
            f"cannot decompress section {meta['name']!r}: {exc}", path=path
        ) from None
    if len(out) != limit:
        raise SnapshotError(f"section {meta['name']!r} decompressed to the wrong size", path=path)
    return bytes(out)


def _raw_limit(meta: Mapping[str, Any], path: str | None) -> int:
    limit = meta.get("raw_size")
    if not isinstance(limit, int) or limit < 0:
        raise SnapshotError(f"section {meta['name']!r} has no raw size", path=path)
    cap = max_payload_bytes()
    if limit > cap:
        raise SnapshotError(
            f"section {meta['name']!r} declares {limit} bytes uncompressed, over the "
            f"{cap}-byte limit ({MAX_PAYLOAD_ENV})",
            path=path,
        )
    return limit


MAX_PAYLOAD_ENV = "PERFREPLAY_MAX_PAYLOAD_BYTES"
_DEFAULT_MAX_PAYLOAD = 256 << 20


def max_payload_bytes() -> int:
    """The largest payload loaded or pulled (256 MiB; ``PERFREPLAY_MAX_PAYLOAD_BYTES``)."""
    raw = os.environ.get(MAX_PAYLOAD_ENV, "").strip()
    try:
        return int(raw) if raw else _DEFAULT_MAX_PAYLOAD
    except ValueError:
        raise SnapshotError(f"{MAX_PAYLOAD_ENV} must be a number of bytes, got {raw!r}") from None


def new_snapshot_id() -> str:
    return secrets.token_hex(6)


_HOST: str | None = None


def host_name() -> str:
    global _HOST
    if _HOST is None:
        _HOST = socket.gethostname()
    return _HOST
