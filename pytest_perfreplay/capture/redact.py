"""Scrub secrets out of captured arguments before they are pickled.

Two passes, so that the common case (nothing to scrub) stays cheap:

1. ``Redactor.needs_walk`` *detects*. It reads the graph column-wise with C-level
   ``map``/``set`` operations (a list of 10,000 records with the same keys costs a
   handful of passes in C, not 10,000 Python-level visits) and copies nothing.
2. Only when something may need scrubbing, ``Redactor.scrub`` walks the graph in Python
   and builds a copy-on-write version: containers on the path to a secret are copied,
   everything else is shared with the original. The caller's objects are never mutated.

Matching is by key name (dict keys, object attributes, dataclass fields, namedtuple
fields, parameter names and the globals a by-value function refers to), by type, and
by a user callable ``(key, value) -> bool``.
"""

from __future__ import annotations

import copy
import re
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any

REDACTED = "<redacted>"

#: Substrings of normalized key names (lower case, without ``_ - . space``).
DEFAULT_KEYS: tuple[str, ...] = (
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "authorization",
    "cookie",
    "session",
    "credential",
    "privatekey",
    "accesskey",
)

_SCALARS: frozenset[type] = frozenset(
    {int, float, complex, str, bytes, bool, type(None), range, slice, type(Ellipsis)}
)
# Values of these types are kept even under a denylisted key: a number is not a
# credential, and scrubbing ``max_tokens=100`` would change what replay does.
_KEEP_UNDER_KEY: tuple[type, ...] = (int, float, complex, bool, type(None))
_MAX_DEPTH = 200
_MAX_RECORDS = 50


_CYCLE_MESSAGE = (
    "a secret sits inside a reference cycle, which cannot be scrubbed without changing "
    "the graph; this call is not captured"
)


class RedactionError(Exception):
    """The graph cannot be scrubbed safely (too deep, or a secret inside a cycle)."""


def _normalize(key: str) -> str:
    return key.lower().translate(_STRIP)


_STRIP = str.maketrans("", "", "_-. ")
_FOLD = bytes.maketrans(bytes(range(65, 91)), bytes(range(97, 123)))  # ASCII A-Z -> a-z


RedactSpec = Iterable[str | type | Callable[[str, Any], bool]]


@dataclass
class Redactor:
    """What to scrub. Build one per decorated function; it caches verdicts per key."""

    keys: tuple[str, ...] = DEFAULT_KEYS
    types: tuple[type, ...] = ()
    predicate: Callable[[str, Any], bool] | None = None
    _safe: set[str] = field(default_factory=set, repr=False)
    _denied: set[str] = field(default_factory=set, repr=False)
    _kinds: dict[type, str] = field(default_factory=dict, repr=False)
    _compiled: re.Pattern[bytes] | None = field(default=None, repr=False)

    @classmethod
    def from_spec(cls, spec: RedactSpec | bool | None) -> Redactor | None:
        """``None``/``True``: the default denylist. ``False``: off. Else defaults plus these."""
        if spec is False:
            return None
        if spec is None or spec is True:
            return cls()
        keys = list(DEFAULT_KEYS)
        kinds: list[type] = []
        preds: list[Callable[[str, Any], bool]] = []
        for item in spec:
            if isinstance(item, str):
                keys.append(_normalize(item))
            elif isinstance(item, type):
                kinds.append(item)
            elif callable(item):
                preds.append(item)
            else:
                raise TypeError(
                    f"redact= accepts key names (str), types and callables (key, value) -> "
                    f"bool; got {item!r}"
                )
        pred: Callable[[str, Any], bool] | None = None
        if len(preds) == 1:
            pred = preds[0]
        elif preds:
            pred = lambda k, v: any(p(k, v) for p in preds)  # noqa: E731
        return cls(keys=tuple(dict.fromkeys(keys)), types=tuple(kinds), predicate=pred)

    # -- a pre-filter on the pickled bytes ------------------------------------

    @property
    def name_only(self) -> bool:
        """True when only key names decide (no types, no callable): the byte pre-filter applies."""
        return not self.types and self.predicate is None

    def may_match(self, pickled: bytes) -> bool:
        """Could anything in this pickle sit under a denylisted name?

        Every dict key, attribute, slot and dataclass field name, and every global of a
        function pickled by value, is written into the pickle as text. So when no denylisted
        word occurs in the folded bytes, no walk is needed. A hit (even inside a value) only
        means "look closer". Namedtuple field names are not in the stream: the pickler
        reports those types, see ``named_tuple_denied``.
        """
        # One C pass folds case and drops separators, one regex pass looks for every word.
        return self._pattern().search(pickled.translate(_FOLD, b"_-. ")) is not None

    def named_tuple_denied(self, kinds: Iterable[type]) -> bool:
        return any(any(map(self.key_denied, getattr(t, "_fields", ()))) for t in kinds)

    def _pattern(self) -> re.Pattern[bytes]:
        if self._compiled is None:
            words = sorted({re.escape(k.encode()) for k in self.keys}, key=len, reverse=True)
            self._compiled = re.compile(b"|".join(words))
        return self._compiled

    # -- verdicts -------------------------------------------------------------

    def key_denied(self, key: str) -> bool:
        if key in self._safe:
            return False
        if key in self._denied:
            return True
        norm = _normalize(key)
        denied = any(word in norm for word in self.keys)
        cache = self._denied if denied else self._safe
        if len(cache) > 10_000:  # unbounded key vocabularies must not grow memory forever
            cache.clear()
        cache.add(key)
        return denied

    def _kind(self, t: type) -> str:
        kind = self._kinds.get(t)
        if kind is None:
            kind = self._classify(t)
            self._kinds[t] = kind
        return kind

    def _classify(self, t: type) -> str:
        if self.types and issubclass(t, self.types):
            return "redact"
        if issubclass(t, dict):
            return "dict"
        if issubclass(t, tuple) and hasattr(t, "_fields"):
            return "ntuple"
        if issubclass(t, (list, tuple)):
            return "seq"
        if issubclass(t, (set, frozenset)):
            return "set"
        if issubclass(t, types.FunctionType):
            return "func"
        if issubclass(t, (type, types.ModuleType, types.BuiltinFunctionType, types.CodeType)):
            return "skip"
        slots = _slot_names(t)
        has_dict = getattr(t, "__dictoffset__", 0) != 0
        if slots:
            return "slots+dict" if has_dict else "slots"
        return "obj" if has_dict else "skip"

    # -- pass 1: detection (no copies) ---------------------------------------

    def needs_walk(self, obj: Any, depth: int = 0) -> bool:
        """True when ``scrub`` might change something. Cheap; never mutates or copies."""
        if self.predicate is not None:
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
        if kind in ("slots", "slots+dict"):
            return self._dicts_need([_slot_state(obj)], depth)
        if kind == "func":
            return not _by_reference(obj)
        return kind == "redact"

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
                flat: list[Any] = list(chain.from_iterable(homogeneous))
                return self._seq_needs(flat, depth + 1)
        return any(self.needs_walk(x, depth + 1) for x in seq if type(x) not in _SCALARS)

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
        """Whether a denylisted key holds a value that would be scrubbed, in any of dicts."""
        for k in keys:
            if isinstance(k, str) and k not in self._safe and self.key_denied(k):
                getter = itemgetter(k)
                if not all(isinstance(getter(d), _KEEP_UNDER_KEY) for d in dicts):
                    return True
            elif not isinstance(k, str):
                continue
        return False

    # -- pass 2: copy-on-write scrub -----------------------------------------

    def scrub(self, obj: Any, path: str = "") -> tuple[Any, list[dict[str, str]]]:
        """Return (scrubbed object, what was redacted). Unchanged graphs come back as is."""
        walk = _Walk(self)
        new = walk.visit(obj, path, 0)
        if walk.cycle_hit and walk.records:
            raise RedactionError(_CYCLE_MESSAGE)
        return new, walk.records


class _Walk:
    def __init__(self, redactor: Redactor) -> None:
        self.r = redactor
        self.records: list[dict[str, str]] = []
        self.count = 0
        self.active: set[int] = set()
        self.done: dict[int, Any] = {}
        self.cycle_hit = False

    def record(self, path: str, by: str) -> None:
        self.count += 1
        if len(self.records) < _MAX_RECORDS:
            self.records.append({"path": path, "by": by})
        elif len(self.records) == _MAX_RECORDS:
            self.records.append({"path": "...", "by": "more redactions not listed"})

    def entry(self, key: Any, value: Any, path: str, depth: int) -> Any:
        """The scrubbed value stored under ``key`` (a dict key, attribute or parameter)."""
        if isinstance(key, str):
            by = None
            if self.r.key_denied(key):
                by = "key"
            elif self.r.predicate is not None and self.r.predicate(key, value):
                by = "callable"
            if by is not None and not isinstance(value, _KEEP_UNDER_KEY):
                self.record(path, by)
                return _redacted_like(value)
        return self.visit(value, path, depth + 1)

    def visit(self, obj: Any, path: str, depth: int) -> Any:
        t = type(obj)
        if t in _SCALARS:
            return obj
        if depth > _MAX_DEPTH:
            raise RedactionError(f"argument graph deeper than {_MAX_DEPTH} levels at {path}")
        oid = id(obj)
        if oid in self.done:
            return self.done[oid]
        if oid in self.active:
            self.cycle_hit = True
            return obj
        kind = self.r._kind(t)
        if kind == "skip":
            return obj
        if kind == "redact":
            self.record(path, f"type {t.__module__}.{t.__qualname__}")
            return REDACTED
        self.active.add(oid)
        try:
            new = self._rebuild(obj, kind, path, depth)
        finally:
            self.active.discard(oid)
        if new is not obj:
            self.done[oid] = new  # shared references stay shared in the copy
        return new

    def _changed(
        self, items: Mapping[Any, Any], where: Callable[[Any], str], depth: int
    ) -> dict[Any, Any]:
        """The entries whose scrubbed value differs (copy-on-write: nothing else is copied)."""
        changed = {}
        for k, v in items.items():
            nv = self.entry(k, v, where(k), depth)
            if nv is not v:
                changed[k] = nv
        return changed

    def _rebuild(self, obj: Any, kind: str, path: str, depth: int) -> Any:
        if kind == "dict":
            changed = self._changed(obj, lambda k: f"{path}[{k!r}]", depth)
            if not changed:
                return obj
            new = dict(obj) if type(obj) is dict else copy.copy(obj)
            new.update(changed)
            return new
        if kind in ("seq", "set"):
            items = list(obj)
            out = [self.visit(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(items)]
            if all(a is b for a, b in zip(out, items, strict=False)):
                return obj
            return type(obj)(out) if type(obj) in (list, tuple, set, frozenset) else out
        if kind == "ntuple":
            out = [
                self.entry(name, v, f"{path}.{name}", depth)
                for name, v in zip(type(obj)._fields, obj, strict=False)
            ]
            if all(a is b for a, b in zip(out, obj, strict=False)):
                return obj
            return type(obj)._make(out)
        if kind == "func":
            return self._function(obj, path, depth)
        state = obj.__dict__ if kind == "obj" else _slot_state(obj)
        if kind == "slots+dict":
            state = {**obj.__dict__, **state}
        changed = self._changed(state, lambda k: f"{path}.{k}", depth)
        if not changed:
            return obj
        new = copy.copy(obj)
        for k, v in changed.items():
            if kind != "slots" and k in getattr(new, "__dict__", {}):
                new.__dict__[k] = v
            else:
                object.__setattr__(new, k, v)
        return new

    def _function(self, fn: types.FunctionType, path: str, depth: int) -> Any:
        """A by-value function carries the globals it names and its closure: scrub both."""
        if _by_reference(fn):
            return fn
        names = _global_names(fn.__code__)
        changed_globals: dict[str, Any] = {}
        for name in names:
            if name in fn.__globals__:
                value = fn.__globals__[name]
                nv = self.entry(name, value, f"{path}.<global {name}>", depth)
                if nv is not value:
                    changed_globals[name] = nv
        closure = fn.__closure__
        new_cells = None
        if closure:
            contents = []
            for var, cell in zip(fn.__code__.co_freevars, closure, strict=False):
                try:
                    value = cell.cell_contents
                except ValueError:  # an empty cell
                    contents.append(cell)
                    continue
                nv = self.entry(var, value, f"{path}.<closure {var}>", depth)
                contents.append(cell if nv is value else types.CellType(nv))
            if any(a is not b for a, b in zip(contents, closure, strict=False)):
                new_cells = tuple(contents)
        if not changed_globals and new_cells is None:
            return fn
        g = {n: fn.__globals__[n] for n in names if n in fn.__globals__}
        g.update(changed_globals)
        for special in ("__name__", "__builtins__", "__package__"):
            if special in fn.__globals__:
                g[special] = fn.__globals__[special]
        new = types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__, new_cells or closure)
        new.__kwdefaults__ = fn.__kwdefaults__
        new.__qualname__ = fn.__qualname__
        new.__module__ = fn.__module__
        new.__dict__.update(fn.__dict__)
        return new


def _redacted_like(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return REDACTED.encode()
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
    """Positional parameter names, so that ``login(user, "hunter2")`` is scrubbed too."""
    code = getattr(func, "__code__", None)
    if code is None:
        return ()
    return tuple(code.co_varnames[: code.co_argcount])


def denied_positions(redactor: Redactor, names: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(i for i, n in enumerate(names) if redactor.key_denied(n))


def scrub_positions(
    args: tuple[Any, ...], positions: tuple[int, ...], names: tuple[str, ...]
) -> tuple[tuple[Any, ...], list[dict[str, str]]]:
    """Scrub positional arguments whose *parameter name* is denylisted (``def f(token)``)."""
    records: list[dict[str, str]] = []
    if positions:
        listed = list(args)
        for i in positions:
            if i < len(listed) and not isinstance(listed[i], _KEEP_UNDER_KEY):
                listed[i] = _redacted_like(listed[i])
                records.append({"path": f"args[{i}] ({names[i]})", "by": "parameter"})
        if records:
            args = tuple(listed)
    return args, records


def scrub_call(
    redactor: Redactor,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    positions: tuple[int, ...],
    names: tuple[str, ...],
) -> tuple[tuple[Any, ...], Mapping[str, Any], list[dict[str, str]]]:
    """Scrub one call's arguments; returns the originals (same objects) when clean."""
    args, records = scrub_positions(args, positions, names)
    if not redactor.needs_walk((args, kwargs)):
        return args, kwargs, records
    walk = _Walk(redactor)
    new_args = walk.visit(args, "args", 0)  # one walk: aliasing across args/kwargs survives
    new_kwargs = walk.visit(kwargs, "kwargs", 0)
    if walk.cycle_hit and walk.records:
        raise RedactionError(_CYCLE_MESSAGE)
    return new_args, new_kwargs, records + walk.records
