"""Scrub secrets out of captured arguments before they are pickled.

Matching is by **exact key names**, not substrings. A key (dict key, ``bytes`` key,
attribute, slot, dataclass/namedtuple/pydantic/attrs field, ``functools.partial``
keyword, parameter name, global or default of a function pickled by value) is split into
words (``x-auth-token`` -> ``x auth token``, ``accessToken`` -> ``access token``). It is a
secret when a denylisted term is its last word(s), or is followed only by words that say
"the same thing, encoded" (``password_hash`` is not a secret, ``password_b64`` is). So
"token" matches ``token``, ``access_token``, ``id_token`` and ``x-auth-token``, and not
``tokens``, ``toc_tokens`` or ``tokensource``.

What is replaced: the strings and bytes under a secret key, at any depth (so
``auth=("alice", "pw")`` and ``credentials={"user": ..., "pw": ...}`` keep their shape).
Numbers, booleans and ``None`` are kept (``max_tokens=100`` is not a secret), and so are
live resources (generators, files, sockets...): they are never pickled by value anyway.
In ``(name, value)`` pairs (ASGI/WSGI header lists, ``requests``' case-insensitive dict)
the name is kept and the value scrubbed.

Values are matched by **shape** too: bearer tokens, JWTs, AWS access key ids and PEM
private keys. That scan is on for strings under header-like containers (a key named
``headers``, a ``*Headers`` or ``CaseInsensitiveDict`` type) and for kept results, and
everywhere with ``Redact(scan_values=True)``.

Two passes keep the common case (nothing to scrub) cheap: a regex over the pickled bytes
decides whether to look at all, then ``needs_walk`` reads the graph column-wise in C, and
only then ``_Walk`` builds a copy-on-write version. The caller's objects are never mutated.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import re
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any

from ..snapshot.format import RESOURCE_TYPES, StandIn, dumps

REDACTED = "<redacted>"

#: Denylisted terms, each one or more words; see the module docstring for the rule.
DEFAULT_KEYS: tuple[str, ...] = (
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "access_key",
    "secret_key",
    "private_key",
    "signing_key",
    "session_id",
    "sessionid",
    "session_key",
    "authorization",
    "auth",
    "cookie",
    "credential",
    "credentials",
    "pin",
    "dsn",
    "jwt",
    "private",
    "signature",
)

#: Words that may follow a term and still name the secret itself.
_SAME_SECRET = frozenset(
    [
        "value",
        "str",
        "string",
        "raw",
        "b",
        "base",
        "hex",
        "bytes",
        "text",
        "plain",
        "plaintext",
        "clear",
        "cleartext",
        "data",
        "enc",
        "encoded",
        "confirm",
        "confirmation",
        "again",
        "repeat",
        "new",
        "old",
        "current",
        "input",
    ]
)
#: Words that make a container "header-like": its strings are scanned by shape.
_HEADER_WORDS = frozenset({"headers", "header", "environ", "scope"})

#: Secret shapes, as bytes patterns (they also run over the pickled bytes as a pre-filter).
VALUE_PATTERNS: dict[str, bytes] = {
    "bearer token": rb"(?i:bearer)\s+[A-Za-z0-9._~+/-]{8,}=*",
    "JWT": rb"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
    "AWS access key id": rb"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])",
    "PEM private key": rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----",
}
_VALUE_RES = {name: re.compile(p) for name, p in VALUE_PATTERNS.items()}
# The same shapes, loosened to run over lower-cased bytes (a superset of the above).
_VALUE_PREFILTER = re.compile(rb"bearer\s|\.eyj[a-z0-9_-]{8,}\.|akia[a-z0-9]{16}|asia[a-z0-9]{16}")
# Anchors of the shapes. A JWT is found by its ``.eyJ`` payload and a PEM private key by
# the term ``private key`` itself: rarer first bytes keep the one regex pass fast.
_VALUE_STARTS = (b"bearer", b".eyj", b"akia", b"asia")
_LOWER = frozenset(range(97, 123))
_UPPER = frozenset(range(65, 91))
_DIGIT = frozenset(range(48, 58))
# Printable separators, and bytes of UTF-8 sequences (``key_words`` skips both).
_SEPARATOR = frozenset(range(0x20, 0x7F)) - _LOWER - _UPPER - _DIGIT | frozenset(range(0x80, 0x100))
# Pickle opcodes that put a str/bytes/bytearray right after a length of n bytes.
_STRING_OPS = ((2, (0x8C, 0x43)), (5, (0x58, 0x42)), (9, (0x8D, 0x8E, 0x96)))


def _word_bounded(data: bytes, start: int, end: int) -> bool:
    """Could ``data[start:end]`` be a word of a pickled name, as ``key_words`` splits it?

    It starts a word at the start of a pickled string, after a separator, or at a camelCase
    or digit boundary; random binary (a pickled integer that reads ``JWT``) does not.
    """
    if end < len(data) and data[end] in _LOWER:
        return False
    if start == 0:
        return True
    prev, first = data[start - 1], data[start]
    if prev in _SEPARATOR or prev in _DIGIT:
        return True
    if prev in _LOWER or prev in _UPPER:
        return first in _UPPER  # camelCase, or the capitalized word after an acronym
    return any(start >= n and data[start - n] in ops for n, ops in _STRING_OPS)


_SCALARS: frozenset[type] = frozenset(
    {int, float, complex, str, bytes, bool, type(None), range, slice, type(Ellipsis)}
)
_TEXT = (str, bytes, bytearray)
# Never replaced under a secret key: a number is not a credential.
_KEEP_UNDER_KEY: tuple[type, ...] = (int, float, complex, bool, type(None))
_MAX_DEPTH = 200
_MAX_RECORDS = 50
# A subgraph past _MAX_DEPTH is kept whole only when its own pickle shows nothing to
# scrub; these bound that check (beyond them it becomes a stand-in).
_MAX_DEEP_CHECKS = 64
_DEEP_CHECK_BYTES = 16 << 20
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


class RedactionError(Exception):
    """``redact="strict"``: the graph cannot be scrubbed exactly, so the call is skipped."""


def key_words(key: str) -> tuple[str, ...]:
    """``"X-Auth-Token"`` -> ``("x", "auth", "token")``; camelCase splits too."""
    return tuple(w.lower() for w in _WORD.findall(key))


def _term(key: str) -> tuple[str, ...]:
    return key_words(key) or (key.lower(),)


@dataclass(frozen=True)
class Redact:
    """Redaction options; ``redact=Redact(...)`` on ``@capture``.

    ``keys``: more terms (same exact-word rule as the defaults); ``types``: scrub whole
    objects of these types; ``predicates``: ``(key, value) -> bool``; ``scan_values``:
    match secret shapes in every string, not only under header-like containers;
    ``strict``: skip the call when anything could not be scrubbed exactly.
    """

    keys: tuple[str, ...] = ()
    types: tuple[type, ...] = ()
    predicates: tuple[Callable[[str, Any], bool], ...] = ()
    scan_values: bool = False
    strict: bool = False


RedactSpec = Iterable[str | type | Callable[[str, Any], bool]] | Redact | str


@dataclass
class Redactor:
    """What to scrub. Build one per decorated function; it caches verdicts per key."""

    keys: tuple[str, ...] = DEFAULT_KEYS
    types: tuple[type, ...] = ()
    predicate: Callable[[str, Any], bool] | None = None
    scan_values: bool = False
    strict: bool = False
    _verdicts: dict[str, int] = field(default_factory=dict, repr=False)
    _kinds: dict[type, str] = field(default_factory=dict, repr=False)
    _safe: set[str] = field(default_factory=set, repr=False)
    _terms: frozenset[tuple[str, ...]] = field(default=frozenset(), repr=False)
    _longest: int = field(default=1, repr=False)
    _compiled: (
        tuple[re.Pattern[bytes], dict[bytes, list[tuple[re.Pattern[bytes], bool]]]] | None
    ) = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._terms = frozenset(_term(k) for k in self.keys)
        self._longest = max((len(t) for t in self._terms), default=1)

    @classmethod
    def from_spec(cls, spec: RedactSpec | bool | None) -> Redactor | None:
        """``None``/``True``: defaults. ``False``: off. ``"strict"``, a ``Redact``, or a list."""
        if spec is False:
            return None
        if spec is None or spec is True:
            return cls()
        if isinstance(spec, str):
            if spec != "strict":
                raise TypeError(
                    f"redact= accepts True, False, 'strict', a Redact(...) or a list of key "
                    f"names, types and callables; got {spec!r}"
                )
            return cls(strict=True)
        options = spec if isinstance(spec, Redact) else _options_from_list(spec)
        preds = options.predicates
        pred: Callable[[str, Any], bool] | None = None
        if len(preds) == 1:
            pred = preds[0]
        elif preds:
            pred = lambda k, v: any(p(k, v) for p in preds)  # noqa: E731
        keys = tuple(dict.fromkeys((*DEFAULT_KEYS, *options.keys)))
        return cls(
            keys=keys,
            types=options.types,
            predicate=pred,
            scan_values=options.scan_values,
            strict=options.strict,
        )

    # -- a pre-filter on the pickled bytes ------------------------------------

    @property
    def name_only(self) -> bool:
        """True when the byte pre-filter decides (no types, no callable, no global scan)."""
        return not self.types and self.predicate is None and not self.scan_values

    def may_match(self, pickled: bytes) -> bool:
        """Could anything in this pickle be a secret?

        Every dict key, attribute, slot, field and global name is written into the pickle
        as text, and so is every string value. So when no denylisted term starts a word in
        the bytes and no secret shape occurs, no walk is needed. A hit only means "look
        closer". Namedtuple field names are not in the stream: see ``named_tuple_denied``.
        """
        lowered = pickled.lower()  # one C pass; case is checked on the original below
        anchors, checks = self._finders()
        m = anchors.search(lowered)
        while m is not None:
            pos = m.start()
            for pattern, is_value in checks[m.group()]:
                t = pattern.match(lowered, pos)
                if t is not None and (is_value or _word_bounded(pickled, pos, t.end())):
                    return True
            m = anchors.search(lowered, pos + 1)
        return False

    def named_tuple_denied(self, kinds: Iterable[type]) -> bool:
        return any(any(map(self.key_denied, getattr(t, "_fields", ()))) for t in kinds)

    def _finders(
        self,
    ) -> tuple[re.Pattern[bytes], dict[bytes, list[tuple[re.Pattern[bytes], bool]]]]:
        """One regex of short literal anchors (first words merged by a common 4-letter
        prefix: ``pass`` for password/passwd/passphrase), as fast as the old substring
        scan; then, per anchor hit, the exact term patterns to try there."""
        if self._compiled is None:
            groups: dict[str, list[tuple[str, ...]]] = {}
            for term in self._terms:
                groups.setdefault(term[0][:4], []).append(term)
            checks: dict[bytes, list[tuple[re.Pattern[bytes], bool]]] = {}
            for members in groups.values():
                anchor = os.path.commonprefix([t[0] for t in members]).encode()
                for term in sorted(members, key=lambda t: (-sum(map(len, t)), t)):
                    pattern = rb"[^a-z0-9]*".join(re.escape(w.encode()) for w in term)
                    checks.setdefault(anchor, []).append((re.compile(pattern), False))
            for literal in _VALUE_STARTS:
                checks.setdefault(literal, []).append((_VALUE_PREFILTER, True))
            # An anchor that extends another (``apikey``, ``api``) folds into the shorter:
            # alternatives sharing a prefix cost the regex its fast path.
            for anchor in sorted(checks, key=len, reverse=True):
                for shorter in checks:
                    if shorter != anchor and anchor.startswith(shorter):
                        checks[shorter] = checks.pop(anchor) + checks[shorter]
                        break
            ordered = sorted(checks)
            anchors = b"|".join(a.replace(b".", rb"\.") for a in ordered)  # letters, digits, .
            self._compiled = (re.compile(anchors), checks)
        return self._compiled

    # -- verdicts -------------------------------------------------------------

    def key_denied(self, key: str) -> bool:
        return self._verdict(key) == 1

    def _verdict(self, key: str) -> int:
        """0: plain, 1: a secret, 2: a header-like container (scan its strings by shape)."""
        v = self._verdicts.get(key)
        if v is None:
            v = self._judge(key)
            if len(self._verdicts) > 10_000:  # unbounded key vocabularies must not grow memory
                self._verdicts.clear()
                self._safe.clear()
            self._verdicts[key] = v
            if not v:
                self._safe.add(key)
        return v

    def _judge(self, key: str) -> int:
        words = key_words(key)
        if not words:
            return 0
        terms = self._terms
        n = len(words)
        end = n
        while True:
            for size in range(1, min(self._longest, end) + 1):
                if words[end - size : end] in terms:
                    return 1
            # An encoding suffix (``password_b64``) still names the secret itself.
            if end > 1 and (words[end - 1] in _SAME_SECRET or words[end - 1].isdigit()):
                end -= 1
                continue
            break
        if words[-1] in _HEADER_WORDS:
            return 2
        return 0

    def _kind(self, t: type) -> str:
        kind = self._kinds.get(t)
        if kind is None:
            kind = self._classify(t)
            if len(self._kinds) > 4096:  # per-call classes must not pin memory
                self._kinds.clear()
            self._kinds[t] = kind
        return kind

    def _classify(self, t: type) -> str:
        if self.types and issubclass(t, self.types):
            return "redact"
        if issubclass(t, RESOURCE_TYPES):
            return "skip"  # pickled as placeholders: never by value
        has_dict = getattr(t, "__dictoffset__", 0) != 0
        if issubclass(t, dict):
            if _header_type(t):
                return "headers"
            return "dict+obj" if has_dict else "dict"
        if issubclass(t, tuple) and hasattr(t, "_fields"):
            return "ntuple"
        if issubclass(t, (list, tuple)):
            return "seq"
        if issubclass(t, (set, frozenset)):
            return "set"
        if issubclass(t, types.FunctionType):
            return "func"
        if issubclass(t, functools.partial):
            return "partial"
        if issubclass(t, (type, types.ModuleType, types.BuiltinFunctionType, types.CodeType)):
            return "skip"
        if _header_type(t):
            return "headers"
        slots = _slot_names(t)
        if slots:
            return "slots+dict" if has_dict else "slots"
        return "obj" if has_dict else "skip"

    # -- pass 1: detection (no copies) ---------------------------------------

    def needs_walk(self, obj: Any, depth: int = 0) -> bool:
        """True when ``scrub`` might change something. Cheap; never mutates or copies."""
        if self.predicate is not None or self.scan_values:
            return True
        if depth > _MAX_DEPTH:
            return True  # deep or cyclic: let the careful walk decide
        t = type(obj)
        if t in _SCALARS:
            return False
        kind = self._kind(t)
        if kind == "dict":
            return self._dicts_need([obj], depth)
        if kind == "seq":
            return self._seq_needs(obj, depth)
        if kind == "ntuple":
            return any(map(self.key_denied, t._fields)) or self._seq_needs(obj, depth)
        if kind == "set":
            return self._seq_needs(list(obj), depth)
        if kind == "obj":
            return self._dicts_need([obj.__dict__], depth)
        if kind == "slots":
            return self._dicts_need([_slot_state(obj)], depth)
        if kind == "slots+dict":
            return self._dicts_need([_slot_state(obj), obj.__dict__], depth)
        if kind == "dict+obj":
            return self._dicts_need([obj], depth) or self._dicts_need([obj.__dict__], depth)
        if kind == "func":
            return not _by_reference(obj)
        return kind in ("redact", "partial", "headers")

    def _seq_needs(self, seq: Any, depth: int) -> bool:  # seq: a list/tuple/set
        if depth > _MAX_DEPTH:
            return True  # deep or cyclic: let the careful walk decide
        all_kinds = set(map(type, seq))
        kinds = all_kinds - _SCALARS
        if not kinds:
            return False
        if len(kinds) == 1:
            (t,) = kinds
            kind = self._kind(t)
            homogeneous: Any = seq if len(all_kinds) == 1 else [x for x in seq if type(x) is t]
            if kind == "dict":
                return self._dicts_need(homogeneous, depth + 1)
            if kind == "obj":
                return self._dicts_need(list(map(vars, homogeneous)), depth + 1)
            if kind in ("seq", "set"):  # a list of lists: flatten one level, in C
                if kind == "seq" and self._pairs_denied(homogeneous):
                    return True
                flat: list[Any] = list(chain.from_iterable(homogeneous))
                return self._seq_needs(flat, depth + 1)
        return any(self.needs_walk(x, depth + 1) for x in seq if type(x) not in _SCALARS)

    def _pairs_denied(self, seqs: Iterable[Any]) -> bool:
        """``[(b"authorization", b"Bearer ...")]``: a (name, value) list names its secrets."""
        names = {s[0] for s in seqs if len(s) == 2 and _name_like(s[0])}
        return any(self._verdict(_text_key(n)) for n in names)

    def _dicts_need(self, dicts: list[Any], depth: int) -> bool:
        if not dicts:
            return False
        if depth > _MAX_DEPTH:
            return True
        shapes = set(map(tuple, dicts)) if len(dicts) > 1 else {tuple(dicts[0])}
        if len(shapes) == 1:  # records with the same keys: check keys once, values by column
            keys = next(iter(shapes))
            if not self._safe.issuperset(keys) and self._denied_in(keys, dicts):
                return True
            for key in keys:
                if not _SCALARS.issuperset(set(map(type, map(itemgetter(key), dicts)))):
                    column = list(map(itemgetter(key), dicts))
                    if self._seq_needs(column, depth):
                        return True
            return False
        if not all(map(self._safe.issuperset, dicts)):
            for d in dicts:
                if self._denied_in(tuple(d), (d,)):
                    return True
        rest = [v for v in chain.from_iterable(map(dict.values, dicts)) if type(v) not in _SCALARS]
        return bool(rest) and self._seq_needs(rest, depth)

    def _denied_in(self, keys: tuple[Any, ...], dicts: list[Any] | tuple[Any, ...]) -> bool:
        """Whether a secret or header-like key holds something scrubbable, in any of dicts."""
        verdicts = self._verdicts
        for k in keys:
            tk = type(k)
            if tk is str:
                v = verdicts.get(k)
                if v is None:
                    v = self._verdict(k)
            elif tk is bytes:
                v = self._verdict(_text_key(k))
            else:
                continue
            if v:
                getter = itemgetter(k)
                if not all(isinstance(getter(d), _KEEP_UNDER_KEY) for d in dicts):
                    return True
        return False

    # -- pass 2: copy-on-write scrub -----------------------------------------

    def scrub(
        self, obj: Any, path: str = "", *, scan: bool = False
    ) -> tuple[Any, list[dict[str, str]]]:
        """Return (scrubbed object, what was redacted). Unchanged graphs come back as is."""
        walk = _Walk(self)
        new = walk.run([(obj, path, None)], scan=scan)[0]
        return new, walk.found


def _options_from_list(spec: Iterable[Any]) -> Redact:
    keys: list[str] = []
    kinds: list[type] = []
    preds: list[Callable[[str, Any], bool]] = []
    for item in spec:
        if isinstance(item, str):
            keys.append(item)
        elif isinstance(item, type):
            kinds.append(item)
        elif callable(item):
            preds.append(item)
        else:
            raise TypeError(
                f"redact= accepts key names (str), types and callables (key, value) -> bool; "
                f"got {item!r}"
            )
    return Redact(keys=tuple(keys), types=tuple(kinds), predicates=tuple(preds))


def _text_key(k: str | bytes) -> str:
    return k if isinstance(k, str) else k.decode("latin-1")


_NAME_LIKE = re.compile(r"[A-Za-z0-9_.:-]{1,100}\Z")
_NAME_LIKE_B = re.compile(rb"[A-Za-z0-9_.:-]{1,100}\Z")


def _name_like(x: Any) -> bool:
    """A short token that can be a header or field name (not a sentence, not a PEM)."""
    t = type(x)
    if t is str:
        return _NAME_LIKE.match(x) is not None
    return t is bytes and _NAME_LIKE_B.match(x) is not None


def _header_type(t: type) -> bool:
    name = t.__name__
    return "Header" in name or name == "CaseInsensitiveDict"


# Secret context for the walk: 0 nothing, 1 replace strings, 2 scan strings by shape.
_PLAIN, _SECRET, _SCAN = 0, 1, 2


class _Walk:
    def __init__(self, redactor: Redactor, by: str = "key") -> None:
        self.r = redactor
        self.by = by  # what a name-based redaction is recorded as ("key", "parameter")
        self.records: list[dict[str, str]] = []
        self.count = 0
        self.active: set[tuple[int, int]] = set()
        self.done: dict[tuple[int, int], Any] = {}
        self.cycle_hit = False
        self.copy_all = False
        self.gaps: list[dict[str, str]] = []  # stand-ins: what could not be scrubbed
        self.reentered: set[tuple[int, int]] = set()
        self.deep_checks = 0

    def run(self, roots: list[tuple[Any, str, str | None]], *, scan: bool = False) -> list[Any]:
        """Scrub several roots in one walk, so that aliasing across them survives.

        A secret inside a reference cycle cannot be scrubbed copy-on-write (the cycle's
        back edge would still reach the original), so then every node is copied.
        """
        return self.run_ctx(roots, _SCAN if (scan or self.r.scan_values) else _PLAIN)

    def run_ctx(self, roots: list[tuple[Any, str, str | None]], ctx: int) -> list[Any]:
        out = self._roots(roots, ctx)
        # A stand-in counts too: the cycle's back edge would still reach what it replaced.
        if self.cycle_hit and (self.records or self.gaps):
            if self.r.strict:
                raise RedactionError(
                    "a secret sits inside a reference cycle; redact='strict' keeps no copy"
                )
            self.__init__(self.r, self.by)  # type: ignore[misc]
            self.copy_all = True
            out = self._roots(roots, ctx)
        return out

    @property
    def found(self) -> list[dict[str, str]]:
        """Redactions (``by``) then stand-ins (``why``), as the header records them."""
        return self.records + self.gaps

    def stand_in(self, path: str, why: str) -> StandIn:
        """Replace what cannot be scrubbed, so its value never reaches disk (strict: skip)."""
        short = path if len(path) <= 160 else f"{path[:80]}...{path[-60:]}"
        if self.r.strict:
            raise RedactionError(f"{why} at {short}; redact='strict' keeps no copy")
        if len(self.gaps) < _MAX_RECORDS:
            self.gaps.append({"path": short, "why": why})
        elif len(self.gaps) == _MAX_RECORDS:
            self.gaps.append({"path": "...", "why": "more stand-ins not listed"})
        return StandIn(short, why)

    def holds_nothing(self, obj: Any, ctx: int) -> bool:
        """Could nothing under ``obj`` need scrubbing? Decided without walking it: its own
        pickle gets the same pre-filter as the whole call (names and secret shapes)."""
        r = self.r
        if ctx == _SECRET or r.types or r.predicate is not None:
            return False  # every string below is a secret, or only a walk could tell
        if self.deep_checks >= _MAX_DEEP_CHECKS:
            return False
        self.deep_checks += 1
        try:
            pickled = dumps(obj, max_bytes=_DEEP_CHECK_BYTES, max_seconds=1.0)
        except Exception:
            return False
        return not r.may_match(pickled.data) and not r.named_tuple_denied(pickled.named_tuples)

    def _roots(self, roots: list[tuple[Any, str, str | None]], ctx: int) -> list[Any]:
        return [
            self.visit(obj, path, 0, ctx) if key is None else self.entry(key, obj, path, -1, ctx)
            for obj, path, key in roots
        ]

    def record(self, path: str, by: str) -> None:
        self.count += 1
        if len(self.records) < _MAX_RECORDS:
            self.records.append({"path": path, "by": by})
        elif len(self.records) == _MAX_RECORDS:
            self.records.append({"path": "...", "by": "more redactions not listed"})

    def entry(self, key: Any, value: Any, path: str, depth: int, ctx: int) -> Any:
        """The scrubbed value stored under ``key`` (a dict key, attribute or parameter)."""
        tk = type(key)
        if tk is str or tk is bytes:
            name = key if tk is str else key.decode("latin-1")
            verdict = self.r._verdict(name)
            if verdict == 1:
                ctx = _SECRET
            elif verdict == 2 and ctx == _PLAIN:
                ctx = _SCAN
            elif self.r.predicate is not None and self.r.predicate(name, value):
                if isinstance(value, _KEEP_UNDER_KEY):
                    return value
                self.record(path, "callable")
                return _redacted_like(value)
        return self.visit(value, path, depth + 1, ctx)

    def leaf(self, value: Any, path: str, ctx: int) -> Any:
        if ctx == _SECRET:
            self.record(path, self.by)
            return _redacted_like(value)
        if ctx == _SCAN and value:
            data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
            for name, pattern in _VALUE_RES.items():
                if pattern.search(data):
                    self.record(path, f"value ({name})")
                    return _redacted_like(value)
        return value

    def visit(self, obj: Any, path: str, depth: int, ctx: int) -> Any:
        t = type(obj)
        if t in _SCALARS:
            if ctx and (t is str or t is bytes):
                return self.leaf(obj, path, ctx)
            return obj
        if t is bytearray:
            return self.leaf(obj, path, ctx) if ctx else obj
        memo = (id(obj), ctx)
        if memo in self.done:
            return self.done[memo]
        kind = self.r._kind(t)
        if kind == "skip":
            return obj
        if kind == "redact":
            self.record(path, f"type {t.__module__}.{t.__qualname__}")
            return REDACTED
        if depth > _MAX_DEPTH:
            if self.holds_nothing(obj, ctx):
                return obj  # nothing below to scrub: kept whole
            return self.stand_in(path, f"deeper than {_MAX_DEPTH} levels")
        again = memo in self.active
        if again:
            if not self.copy_all:
                self.cycle_hit = True
                return obj
            if memo in self.reentered:
                # Only nodes that cannot be copied ahead of their children on this cycle.
                self.cycle_hit = True
                return self.stand_in(path, f"reference cycle through {_qualname(t)}")
            # An immutable node met again on its own cycle: walk it once more, as
            # copy.deepcopy does. Its cycle's mutable node is copied by then, so the
            # inner copy closes the cycle; the outer walk then returns that copy.
            self.reentered.add(memo)
        if kind == "headers" and ctx == _PLAIN:
            ctx = _SCAN
        if not again:
            self.active.add(memo)
        try:
            new = self._rebuild(obj, kind, path, depth, ctx, memo)
        finally:
            if not again:
                self.active.discard(memo)
        prior = self.done.get(memo)
        if prior is not None:
            return prior  # built by an inner walk of its own cycle (or a shell)
        if new is not obj:
            self.done[memo] = new  # shared references stay shared in the copy
        return new

    def _changed(
        self, items: Mapping[Any, Any], where: Callable[[Any], str], depth: int, ctx: int
    ) -> dict[Any, Any]:
        """The entries whose scrubbed value differs (copy-on-write: nothing else is copied)."""
        changed = {}
        for k, v in list(items.items()):
            nv = self.entry(k, v, where(k), depth, ctx)
            if nv is not v or self.copy_all:
                changed[k] = nv
        return changed

    def _shell(self, obj: Any, memo: tuple[int, int]) -> Any:
        """In copy-all mode, the copy exists before its children, so cycles close on it."""
        new = copy.copy(obj)
        self.done[memo] = new
        return new

    def _rebuild(
        self, obj: Any, kind: str, path: str, depth: int, ctx: int, memo: tuple[int, int]
    ) -> Any:
        if kind in ("dict", "dict+obj", "headers") and isinstance(obj, dict):
            shell = self._shell(obj, memo) if self.copy_all else None
            changed = self._changed(obj, lambda k: f"{path}[{k!r}]", depth, ctx)
            attrs: dict[str, Any] = {}
            if kind == "dict+obj" and obj.__dict__:
                attrs = self._changed(obj.__dict__, lambda k: f"{path}.{k}", depth, ctx)
            if not changed and not attrs and shell is None:
                return obj
            new = (
                shell if shell is not None else (dict(obj) if type(obj) is dict else copy.copy(obj))
            )
            dict.update(new, changed)
            if attrs:
                new.__dict__.update(attrs)
            return new
        if kind == "headers":  # a headers object that is not a dict: walk its state
            slots, has_dict = _slot_names(type(obj)), hasattr(obj, "__dict__")
            if not slots and not has_dict:
                return obj
            kind = ("slots+dict" if has_dict else "slots") if slots else "obj"
        if kind == "seq" and isinstance(obj, list) and self.copy_all:
            new_list = self._shell(obj, memo)
            new_list[:] = [self.visit(v, f"{path}[{i}]", depth + 1, ctx) for i, v in enumerate(obj)]
            return new_list
        if kind in ("seq", "set"):
            items = list(obj)
            if (
                kind == "seq"
                and len(items) == 2
                and _name_like(items[0])
                and self.r._verdict(_text_key(items[0]))
            ):
                # A (name, value) pair such as a header: judge the value by the name.
                out = [items[0], self.entry(items[0], items[1], f"{path}[1]", depth, ctx)]
            else:
                out = [self.visit(v, f"{path}[{i}]", depth + 1, ctx) for i, v in enumerate(items)]
            if all(a is b for a, b in zip(out, items, strict=False)) and not self.copy_all:
                return obj
            return type(obj)(out) if type(obj) in (list, tuple, set, frozenset) else out
        if kind == "ntuple":
            out = [
                self.entry(name, v, f"{path}.{name}", depth, ctx)
                for name, v in zip(type(obj)._fields, obj, strict=False)
            ]
            if all(a is b for a, b in zip(out, obj, strict=False)):
                return obj
            return type(obj)._make(out)
        if kind == "func":
            return self._function(obj, path, depth, ctx)
        if kind == "partial":
            return self._partial(obj, path, depth, ctx)
        shell = None
        if self.copy_all:
            try:
                shell = self._shell(obj, memo)
            except Exception:
                if self.holds_nothing(obj, ctx):
                    return obj
                return self.stand_in(path, f"{_qualname(type(obj))} cannot be copied")
        state = obj.__dict__ if kind == "obj" else _slot_state(obj)
        if kind == "slots+dict":
            state = {**obj.__dict__, **state}
        changed = self._changed(state, lambda k: f"{path}.{k}", depth, ctx)
        if not changed and shell is None:
            return obj
        if shell is not None:
            new = shell
        else:
            try:
                new = copy.copy(obj)
            except Exception:  # a secret inside, and no copy to scrub it in
                return self.stand_in(path, f"{_qualname(type(obj))} cannot be copied")
        for k, v in changed.items():
            if kind != "slots" and k in getattr(new, "__dict__", {}):
                new.__dict__[k] = v
            else:
                object.__setattr__(new, k, v)
        return new

    def _partial(self, p: functools.partial[Any], path: str, depth: int, ctx: int) -> Any:
        func = self.visit(p.func, f"{path}.func", depth + 1, ctx)
        args = [self.visit(a, f"{path}.args[{i}]", depth + 1, ctx) for i, a in enumerate(p.args)]
        keywords = {
            k: self.entry(k, v, f"{path}.keywords[{k!r}]", depth, ctx)
            for k, v in p.keywords.items()
        }
        same = (
            func is p.func
            and all(a is b for a, b in zip(args, p.args, strict=True))
            and all(keywords[k] is v for k, v in p.keywords.items())
        )
        if same:
            return p
        new = type(p)(func, *args, **keywords)
        if getattr(p, "__dict__", None):
            new.__dict__.update(p.__dict__)
        return new

    def _function(self, fn: types.FunctionType, path: str, depth: int, ctx: int) -> Any:
        """A by-value function carries its globals, closure and defaults: scrub all three."""
        if _by_reference(fn):
            return fn
        code = fn.__code__
        names = _global_names(code)
        changed_globals: dict[str, Any] = {}
        for name in names:
            if name in fn.__globals__:
                value = fn.__globals__[name]
                nv = self.entry(name, value, f"{path}.<global {name}>", depth, ctx)
                if nv is not value:
                    changed_globals[name] = nv
        closure = fn.__closure__
        new_cells = None
        if closure:
            contents = []
            for var, cell in zip(code.co_freevars, closure, strict=False):
                try:
                    value = cell.cell_contents
                except ValueError:  # an empty cell
                    contents.append(cell)
                    continue
                nv = self.entry(var, value, f"{path}.<closure {var}>", depth, ctx)
                contents.append(cell if nv is value else types.CellType(nv))
            if any(a is not b for a, b in zip(contents, closure, strict=False)):
                new_cells = tuple(contents)
        defaults = fn.__defaults__
        new_defaults = defaults
        if defaults:
            positional = code.co_varnames[: code.co_argcount]
            params = positional[len(positional) - len(defaults) :]
            new_defaults = tuple(
                self.entry(n, v, f"{path}.<default {n}>", depth, ctx)
                for n, v in zip(params, defaults, strict=False)
            )
            if all(a is b for a, b in zip(new_defaults, defaults, strict=False)):
                new_defaults = defaults
        kwdefaults = fn.__kwdefaults__
        new_kwdefaults = kwdefaults
        if kwdefaults:
            new_kwdefaults = {
                n: self.entry(n, v, f"{path}.<default {n}>", depth, ctx)
                for n, v in kwdefaults.items()
            }
            if all(new_kwdefaults[n] is v for n, v in kwdefaults.items()):
                new_kwdefaults = kwdefaults
        if (
            not changed_globals
            and new_cells is None
            and new_defaults is defaults
            and new_kwdefaults is kwdefaults
        ):
            return fn
        g = {n: fn.__globals__[n] for n in names if n in fn.__globals__}
        g.update(changed_globals)
        for special in ("__name__", "__builtins__", "__package__"):
            if special in fn.__globals__:
                g[special] = fn.__globals__[special]
        new = types.FunctionType(code, g, fn.__name__, new_defaults, new_cells or closure)
        new.__kwdefaults__ = new_kwdefaults
        new.__qualname__ = fn.__qualname__
        new.__module__ = fn.__module__
        new.__dict__.update(fn.__dict__)
        return new


def _qualname(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _redacted_like(value: Any) -> Any:
    if isinstance(value, bytes):
        return REDACTED.encode()
    if isinstance(value, bytearray):
        return bytearray(REDACTED.encode())
    return REDACTED


def _slot_names(t: type) -> tuple[str, ...]:
    names: list[str] = []
    for klass in t.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        if isinstance(slots, str):
            slots = (slots,)
        names.extend(s for s in slots if s not in ("__dict__", "__weakref__"))
    return tuple(names)


def _slot_state(obj: Any) -> dict[str, Any]:
    out = {}
    for name in _slot_names(type(obj)):
        try:
            out[name] = object.__getattribute__(obj, name)
        except AttributeError:
            continue
    return out


def _by_reference(fn: Any) -> bool:
    """Whether cloudpickle will pickle ``fn`` by reference (then no globals are stored)."""
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    if module is None or module.__name__ == "__main__":
        return False
    obj: Any = module
    for part in fn.__qualname__.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    return obj is fn


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def parameter_names(func: Callable[..., Any]) -> tuple[str, ...]:
    """Positional parameter names, so that ``login(user, "hunter2")`` is scrubbed too.

    ``inspect.signature`` follows ``__wrapped__``, so a ``functools.wraps`` decorator
    under ``@capture`` still yields the real names.
    """
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return ()
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in sig.parameters.values() if p.kind in positional]
    if inspect.ismethod(func):  # signature() drops a bound receiver; args still hold it
        names.insert(0, "self")
    return tuple(names)


def denied_positions(redactor: Redactor, names: tuple[str, ...]) -> tuple[int, ...]:
    """Positions whose parameter name is a secret or header-like (judged like kwargs)."""
    return tuple(i for i, n in enumerate(names) if redactor._verdict(n))


def scrub_positions(
    redactor: Redactor, args: tuple[Any, ...], positions: tuple[int, ...], names: tuple[str, ...]
) -> tuple[tuple[Any, ...], list[dict[str, str]]]:
    """Positional arguments under a denylisted parameter name (``def login(user, token)``).

    Parameter names are not in the pickle, so these are scrubbed before the byte
    pre-filter runs; they are judged exactly like the same value passed by keyword.
    """
    if not positions:
        return args, []
    walk = _Walk(redactor, by="parameter")
    roots: list[tuple[Any, str, str | None]] = [
        (args[i], f"args[{i}] ({names[i]})", names[i]) for i in positions if i < len(args)
    ]
    if not roots:
        return args, []
    out = walk.run(roots)
    listed = list(args)
    for i, new in zip(positions, out, strict=False):
        listed[i] = new
    if all(a is b for a, b in zip(listed, args, strict=True)):
        return args, walk.found
    return tuple(listed), walk.found


def scrub_call(
    redactor: Redactor,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    positions: tuple[int, ...],
    names: tuple[str, ...],
) -> tuple[tuple[Any, ...], Mapping[str, Any], list[dict[str, str]]]:
    """Scrub one call's arguments; returns the originals (same objects) when clean."""
    args, records = scrub_positions(redactor, args, positions, names)
    if not redactor.needs_walk((args, kwargs)):
        return args, kwargs, records
    walk = _Walk(redactor)
    # One walk: aliasing across args and kwargs survives.
    new_args, new_kwargs = walk.run([(args, "args", None), (kwargs, "kwargs", None)])
    return new_args, new_kwargs, records + walk.found


def scrub_result(
    redactor: Redactor, func_name: str, value: Any, *, raised: bool
) -> tuple[Any, list[dict[str, str]]]:
    """A kept return value or exception message: always scanned for secret shapes, and
    scrubbed whole when the function's name says it returns a secret (``get_token``)."""
    ctx = _SECRET if not raised and redactor._verdict(func_name) == 1 else _SCAN
    walk = _Walk(redactor)
    out = walk.run_ctx([(value, "result", None)], ctx)
    return out[0], walk.found


def split_found(found: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(redactions, stand-ins): the header's ``redactions`` and ``unscrubbable``."""
    return [r for r in found if "why" not in r], [r for r in found if "why" in r]
