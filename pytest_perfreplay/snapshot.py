"""The snapshot file: a signed JSON header, then cloudpickle payload sections.

Layout::

    MAGIC (8 bytes) | header length (4 bytes, big endian) | header (canonical JSON) | payload

The header is readable without unpickling anything. The payload is the concatenation of
the sections the header lists (``args``, optionally ``result``), each optionally
zstd-compressed. The signature is an HMAC-SHA256 over the magic, the header *without* its
``sig`` field (canonical JSON), and the payload; it is checked before a single byte is
unpickled.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import io
import json
import os
import pickle
import platform
import secrets
import socket
import sqlite3
import sys
import threading
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from .errors import SignatureError, SnapshotError

MAGIC = b"\x89PRSNAP\n"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
SUFFIX = ".prsnap"

KEY_ENV = "PERFREPLAY_KEY"
VERIFY_KEYS_ENV = "PERFREPLAY_VERIFY_KEYS"


# ---------------------------------------------------------------------------
# Keys


@dataclass(frozen=True)
class Keyring:
    """One key signs; every key verifies (so keys can be rotated without losing old files)."""

    signing: tuple[str, bytes] | None
    verifying: Mapping[str, bytes] = field(default_factory=dict)

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
        return cls.from_secrets(signing.encode() if signing else None, [k.encode() for k in extra])

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


_BINDINGS: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "perfreplay_bindings", default=None
)


def _placeholder(name: str, type_name: str) -> Any:
    """Unpickling hook: the bound fixture value, or an inert Placeholder."""
    bindings = _BINDINGS.get()
    if bindings is not None and name in bindings:
        return bindings[name]
    return Placeholder(name, type_name)


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
        types.GeneratorType,
        types.CoroutineType,
        types.AsyncGeneratorType,
        *lock_types,
    )


RESOURCE_TYPES: tuple[type, ...] = _default_resource_types()


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


class _BoundedBuffer(io.BytesIO):
    def __init__(self, limit: int | None) -> None:
        super().__init__()
        self._limit = limit

    def write(self, b: Any) -> int:
        n = super().write(b)
        if self._limit is not None and self.tell() > self._limit:
            raise PayloadTooLarge(f"payload exceeds max_bytes={self._limit}")
        return n


class _CapturePickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle plus placeholders for resources (``reducer_override`` costs nothing extra)."""

    def __init__(
        self,
        file: io.BytesIO,
        resources: Mapping[int, str],
        resource_types: tuple[type, ...],
    ) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._resources = resources
        self._resource_types = resource_types
        self.placeholders: dict[str, str] = {}

    def reducer_override(self, obj: Any) -> Any:
        name = self._resources.get(id(obj)) if self._resources else None
        if name is None and isinstance(obj, self._resource_types):
            name = resource_fixture_name(obj)
        if name is not None:
            type_name = _type_name(obj)
            self.placeholders.setdefault(name, type_name)
            return _placeholder, (name, type_name)
        return super().reducer_override(obj)


@dataclass
class Pickled:
    data: bytes
    placeholders: dict[str, str]


def dumps(
    obj: Any,
    *,
    max_bytes: int | None = None,
    resources: Mapping[int, str] | None = None,
    resource_types: tuple[type, ...] = RESOURCE_TYPES,
) -> Pickled:
    """Pickle ``obj``, aborting as soon as the output passes ``max_bytes``."""
    buf = _BoundedBuffer(max_bytes)
    pickler = _CapturePickler(buf, resources or {}, resource_types)
    pickler.dump(obj)
    return Pickled(buf.getvalue(), pickler.placeholders)


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
        from . import __version__

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
    """The parsed, not-yet-trusted header. ``fields`` is the JSON object as written."""

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
        return bool(self.fields.get("async", False))

    @property
    def duration(self) -> float | None:
        d = self.fields.get("duration")
        return float(d) if isinstance(d, (int, float)) else None

    @property
    def placeholders(self) -> list[dict[str, str]]:
        return list(self.fields.get("placeholders", []))

    @property
    def has_result(self) -> bool:
        return bool(self.fields.get("keep_result", False))


def encode(
    fields: Mapping[str, Any],
    sections: Mapping[str, bytes],
    *,
    keyring: Keyring | None,
    compress: bool = False,
) -> bytes:
    """Build a snapshot file. ``fields`` must be JSON-serializable; payload facts are added."""
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
                "sha256": hashlib.sha256(raw).hexdigest(),
            }
        )
    payload = b"".join(blobs)
    header = dict(fields)
    header["format"] = FORMAT_VERSION
    header["payload"] = {"codec": codec, "size": len(payload), "sections": meta}
    unsigned = _canonical(header)
    if keyring is not None and keyring.signing is not None:
        header["sig"] = keyring.sign((MAGIC, unsigned, payload))
    header_bytes = _canonical(header)
    return MAGIC + len(header_bytes).to_bytes(4, "big") + header_bytes + payload


def read_header(data: bytes, *, path: str | None = None) -> tuple[Header, bytes, bytes]:
    """Parse the header (JSON only, never pickle). Returns (header, header bytes, payload)."""
    if len(data) == 0:
        raise SnapshotError("empty file: not a snapshot (a crashed writer? delete it)", path=path)
    if not data.startswith(MAGIC):
        if data[:1] == b"\x80":
            hint = "it looks like a plain pickle, which is never loaded"
        else:
            hint = "it does not start with the snapshot magic bytes"
        raise SnapshotError(f"not a perfreplay snapshot: {hint}", path=path)
    if len(data) < len(MAGIC) + 4:
        raise SnapshotError("truncated snapshot: the header length is missing", path=path)
    n = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 4], "big")
    start = len(MAGIC) + 4
    if n > MAX_HEADER_BYTES:
        raise SnapshotError(f"header claims {n} bytes (limit {MAX_HEADER_BYTES})", path=path)
    if len(data) < start + n:
        raise SnapshotError(
            f"truncated snapshot: header needs {n} bytes, file has {len(data) - start}", path=path
        )
    header_bytes = data[start : start + n]
    try:
        fields = json.loads(header_bytes.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SnapshotError(f"corrupt header: {exc}", path=path) from None
    if not isinstance(fields, dict):
        raise SnapshotError("corrupt header: not a JSON object", path=path)
    version = fields.get("format")
    if not isinstance(version, int) or isinstance(version, bool):
        raise SnapshotError("corrupt header: no format version", path=path)
    if version > FORMAT_VERSION:
        raise SnapshotError(
            f"format version {version} is newer than this pytest-perfreplay understands "
            f"({FORMAT_VERSION}); upgrade pytest-perfreplay",
            path=path,
        )
    _check_fields(fields, path)
    payload = data[start + n :]
    size = fields["payload"]["size"]
    if len(payload) != size:
        what = "truncated" if len(payload) < size else "has trailing bytes"
        raise SnapshotError(
            f"payload {what}: header says {size} bytes, file has {len(payload)}", path=path
        )
    return Header(fields), header_bytes, payload


def _check_fields(fields: Mapping[str, Any], path: str | None) -> None:
    required: dict[str, type | tuple[type, ...]] = {"id": str, "target": str, "payload": dict}
    for key, kind in required.items():
        if not isinstance(fields.get(key), kind):
            raise SnapshotError(f"corrupt header: field {key!r} missing or mistyped", path=path)
    payload = fields["payload"]
    sections = payload.get("sections")
    size = payload.get("size")
    if (
        not isinstance(size, int)
        or size < 0
        or payload.get("codec") not in ("none", "zstd")
        or not isinstance(sections, list)
        or not all(
            isinstance(s, dict)
            and isinstance(s.get("name"), str)
            and isinstance(s.get("size"), int)
            and s["size"] >= 0
            and isinstance(s.get("sha256"), str)
            for s in sections
        )
        or sum(s["size"] for s in sections) != size
    ):
        raise SnapshotError("corrupt header: payload description is inconsistent", path=path)
    sig = fields.get("sig")
    if sig is not None and not isinstance(sig, dict):
        raise SnapshotError("corrupt header: 'sig' is not an object", path=path)


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
        raw = self.sections[name]
        token = _BINDINGS.set(bindings)
        try:
            return pickle.loads(raw)
        finally:
            _BINDINGS.reset(token)

    def load_call(
        self, bindings: Mapping[str, Any] | None = None
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args, kwargs = self.loads_section("args", bindings)
        return tuple(args), dict(kwargs)

    def load_result(self) -> Any:
        return self.loads_section("result")

    def args_digest(self) -> str:
        return hashlib.sha256(self.sections["args"]).hexdigest()


def verify(
    data: bytes,
    *,
    keyring: Keyring | None,
    allow_unsigned: bool = False,
    path: str | None = None,
) -> Snapshot:
    """Check the signature, then the section hashes. Nothing is unpickled here."""
    header, header_bytes, payload = read_header(data, path=path)
    fields = dict(header.fields)
    sig = fields.pop("sig", None)
    signed = sig is not None
    if signed:
        if keyring is None:
            if not allow_unsigned:
                raise SignatureError(
                    f"signed snapshot but no verifying key is configured; set {KEY_ENV} or "
                    f"{VERIFY_KEYS_ENV}",
                    path=path,
                )
            signed = False  # accepted as unverified, like an unsigned file
        else:
            try:
                keyring.verify(sig, (MAGIC, _canonical(fields), payload))
            except SignatureError as exc:
                raise SignatureError(str(exc), path=path) from None
        if _canonical(header.fields) != header_bytes:
            raise SignatureError(
                "header is not in canonical form: altered after signing", path=path
            )
    elif not allow_unsigned:
        raise SignatureError(
            "unsigned snapshot refused; pass --perf-replay-allow-unsigned (or allow_unsigned=True) "
            "only if you trust where it came from",
            path=path,
        )
    sections = dict(_split_sections(header, payload, path))
    return Snapshot(header=header, sections=sections, path=path, signed=signed)


def _split_sections(
    header: Header, payload: bytes, path: str | None
) -> Iterator[tuple[str, bytes]]:
    codec = header["payload"]["codec"]
    offset = 0
    for meta in header["payload"]["sections"]:
        blob = payload[offset : offset + meta["size"]]
        offset += meta["size"]
        if codec == "zstd":
            try:
                raw = _compressor().ZstdDecompressor().decompress(blob)
            except ImportError:
                raise SnapshotError(
                    "payload is zstd-compressed; install pytest-perfreplay[zstd]", path=path
                ) from None
            except Exception as exc:
                raise SnapshotError(f"cannot decompress section {meta['name']!r}: {exc}", path=path)
        else:
            raw = blob
        if hashlib.sha256(raw).hexdigest() != meta["sha256"]:
            raise SnapshotError(f"section {meta['name']!r} does not match its hash", path=path)
        yield meta["name"], raw


def new_snapshot_id() -> str:
    return secrets.token_hex(6)


def host_name() -> str:
    return socket.gethostname()
