"""Speedscope toolkit: read, validate, normalize, focus, merge, summarize and diff profiles.

Everything here is a pure function over JSON-like dicts: callers do the file reading and writing,
so the whole module can be tested exactly (DESIGN.md §3, §5).

Input formats accepted by :func:`load`:

* speedscope files (``sampled`` and/or ``evented`` profiles) as written by py-spy 0.4,
  pyinstrument's speedscope renderer, or speedscope's own export;
* pyinstrument sessions (``Session.to_json()``): either the ``frame_records`` list that
  pyinstrument >= 4 writes, or a frame tree (``root_frame`` / ``{"identifier", "time",
  "children"}``) whose identifiers are ``"function\\x00file\\x00line"``.

Every document produced here (:func:`normalize`, :func:`merge`, :attr:`Diff.document`) passes the
official speedscope JSON schema and imports cleanly in the speedscope app: no nulls, no empty
stacks, only positive weights, ``activeProfileIndex`` set, at least one sample per profile.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

__all__ = [
    "SCHEMA_URL",
    "UNITS",
    "Diff",
    "DiffRow",
    "Frame",
    "SpeedscopeError",
    "Summary",
    "SummaryRow",
    "calls_in_name",
    "diff",
    "dump_chunks",
    "focus_on",
    "format_weight",
    "function_key",
    "is_library_frame",
    "load",
    "parse_json",
    "merge",
    "module_from_path",
    "normalize",
    "summarize",
    "validate",
]

SCHEMA_URL = "https://www.speedscope.app/file-format-schema.json"
UNITS = ("bytes", "microseconds", "milliseconds", "nanoseconds", "none", "seconds")
ALL_THREADS = "all threads"
#: Below this top self-time share a profile is called flat: no single function dominates.
FLAT_THRESHOLD = 0.10

Frame = Mapping[str, Any]
FunctionKey = tuple[str, str]

_TIME_SCALE = {"nanoseconds": 1e-9, "microseconds": 1e-6, "milliseconds": 1e-3, "seconds": 1.0}
# py-spy's flamegraph/raw modes name frames "func (file.py:12)"; speedscope mode may too.
_NAME_SUFFIX = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_STDLIB = re.compile(r"/lib/python\d+(?:\.\d+)?t?/")
_PACKAGE_MARKERS = ("/site-packages/", "/dist-packages/")
_MAX_SAME_PROBLEM = 3  # validate() reports this many of one kind, then counts the rest

# pyinstrument frame-record vocabulary (pyinstrument/frame_info.py, frame.py)
_PYI_IDENTIFIER_SEP = "\x00"
_PYI_ATTRIBUTES_SEP = "\x01"
_PYI_THREAD_MARKER = "<thread>"
_PYI_DROPPED = frozenset({"[self]", "[root]"})  # bookkeeping frames, not code


class SpeedscopeError(ValueError):
    """The input is not a profile this module can read; the message says what is wrong."""


# --------------------------------------------------------------------------------------------
# function identity


def module_from_path(path: str | None, roots: Sequence[str] = ()) -> str:
    """Dotted module name for a source path, stable across machines and checkouts.

    Strips ``site-packages``/``dist-packages``/stdlib prefixes, then the longest of ``roots``
    (e.g. ``sys.path`` entries), then a ``src/`` layout folder. An absolute path under none of
    these keeps its last two components (``/any/where/pkg/mod.py`` -> ``pkg.mod``) so that the key
    never depends on where the project is checked out.
    """
    if not path:
        return ""
    if path.startswith("<"):
        # "<frozen importlib._bootstrap>" is a real module; "<string>" etc. stay as they are.
        inner = path[1:-1] if path.endswith(">") else path[1:]
        return inner.split(" ", 1)[1] if inner.startswith("frozen ") else path
    p = path.replace("\\", "/")
    rel: str | None = None
    for marker in _PACKAGE_MARKERS:
        at = p.rfind(marker)
        if at >= 0:
            rel = p[at + len(marker) :]
            break
    if rel is None:
        matches = list(_STDLIB.finditer(p))
        if matches:
            rel = p[matches[-1].end() :]
    if rel is None:
        best = ""
        for root in roots:
            r = root.replace("\\", "/").rstrip("/") + "/"
            if len(r) > 1 and p.startswith(r) and len(r) > len(best):
                best = r
        if best:
            rel = p[len(best) :]
    if rel is None and "/src/" in p:
        rel = p[p.rfind("/src/") + len("/src/") :]
    parts = [part for part in (rel if rel is not None else p).split("/") if part]
    if parts:
        last = parts[-1]
        for suffix in (".pyx", ".pyw", ".py"):
            if last.endswith(suffix):
                parts[-1] = last[: -len(suffix)]
                break
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
    if rel is None and p.startswith("/"):
        parts = parts[-2:]
    return ".".join(parts)


def _split_name(frame: Frame) -> tuple[str, str | None, int | None]:
    """(qualname, file, line) with py-spy's optional " (file.py:12)" name suffix removed."""
    raw = frame.get("name")
    name = raw if isinstance(raw, str) else ""
    file = frame.get("file") if isinstance(frame.get("file"), str) else None
    line_value = frame.get("line")
    line = int(line_value) if _is_number(line_value) else None
    m = _NAME_SUFFIX.match(name)
    if m is not None and ("." in m.group("file") or "/" in m.group("file")):
        name = m.group("name")
        if file is None:
            file = m.group("file")
        if line is None and m.group("line"):
            line = int(m.group("line"))
    return name.strip(), file, line


def function_key(frame: Frame, *, roots: Sequence[str] = ()) -> FunctionKey:
    """(module, qualname) identifying the function of a speedscope frame, ignoring the line."""
    qualname, file, _ = _split_name(frame)
    return module_from_path(file, roots), qualname


def _same_module(a: str, b: str) -> bool:
    # Derived module names may lack a package prefix (see module_from_path), so compare on a
    # dotted-suffix basis.
    return a == b or (bool(a) and bool(b) and (a.endswith("." + b) or b.endswith("." + a)))


def focus_on(qualname: str, module: str | None = None) -> Callable[[Frame], bool]:
    """Predicate for :func:`normalize`'s ``focus``: frames of one function.

    ``qualname`` may be ``"pkg.mod:Class.method"``. With a module, a frame also matches when its
    name is the tail of ``qualname`` (pyinstrument names a nested function ``inner`` where py-spy
    says ``outer.<locals>.inner``) and modules match up to a missing package prefix.
    """
    if module is None and ":" in qualname:
        module, qualname = qualname.split(":", 1)

    def matches(frame: Frame) -> bool:
        mod, qual = function_key(frame)
        if module is None:
            return qual == qualname
        if not _same_module(mod, module):
            return False
        return qual == qualname or (bool(qual) and qualname.endswith("." + qual))

    return matches


def is_library_frame(frame: Frame) -> bool:
    """True for installed packages, the stdlib, frozen/builtin modules and frames with no file."""
    file = frame.get("file")
    if not isinstance(file, str) or not file or file.startswith("<"):
        return True
    p = file.replace("\\", "/")
    return any(m in p for m in _PACKAGE_MARKERS) or _STDLIB.search(p) is not None


def _display(key: FunctionKey) -> str:
    module, qualname = key
    return f"{module}:{qualname}" if module else qualname


_CALLS_IN_NAME = re.compile(r"\((\d+) calls?(?:, [^()]*)?\)\s*$")


def calls_in_name(doc: Mapping[str, Any]) -> int | None:
    """The replayed-call count the profiling pass writes at the end of a profile's name,
    ``"pkg.mod:func [snapshot] (2048 calls, py-spy)"``; None when the name has none."""
    name = doc.get("name") if isinstance(doc, Mapping) else None
    m = _CALLS_IN_NAME.search(name) if isinstance(name, str) else None
    return int(m.group(1)) if m and int(m.group(1)) > 0 else None


# --------------------------------------------------------------------------------------------
# validation


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


class _Problems:
    """Collects messages; caps repeats of one kind so a 100k-sample file stays readable."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.fatal = False
        self._seen: dict[str, int] = {}

    def add(self, kind: str, message: str, *, fatal: bool) -> None:
        self.fatal = self.fatal or fatal
        n = self._seen.get(kind, 0) + 1
        self._seen[kind] = n
        if n <= _MAX_SAME_PROBLEM:
            self.messages.append(message)

    def finish(self) -> list[str]:
        extra = [
            f"... and {n - _MAX_SAME_PROBLEM} more like {kind!r}"
            for kind, n in self._seen.items()
            if n > _MAX_SAME_PROBLEM
        ]
        return self.messages + extra


def _check_document(doc: object) -> _Problems:
    """All problems in a speedscope document. ``fatal`` means it cannot be read at all; the rest
    (nulls, zero weights, missing names...) are things :func:`normalize` repairs."""
    out = _Problems()
    if not isinstance(doc, Mapping):
        out.add("document", f"document: expected a JSON object, got {_type_name(doc)}", fatal=True)
        return out
    if "$schema" not in doc:
        out.add("$schema", f"$schema: missing (must be {SCHEMA_URL!r})", fatal=False)
    elif doc["$schema"] != SCHEMA_URL:
        out.add("$schema", f"$schema: must be {SCHEMA_URL!r}, got {doc['$schema']!r}", fatal=False)
    for key in ("name", "exporter"):
        if key in doc and not isinstance(doc[key], str):
            out.add(key, f"{key}: must be a string, got {_type_name(doc[key])}", fatal=False)

    shared = doc.get("shared")
    frames = shared.get("frames") if isinstance(shared, Mapping) else None
    if not isinstance(shared, Mapping):
        out.add("shared", f"shared: must be an object, got {_type_name(shared)}", fatal=True)
        n_frames = 0
    elif not isinstance(frames, list):
        out.add("frames", f"shared.frames: must be an array, got {_type_name(frames)}", fatal=True)
        n_frames = 0
    else:
        n_frames = len(frames)
        for i, frame in enumerate(frames):
            _check_frame(out, f"shared.frames[{i}]", frame)

    profiles = doc.get("profiles")
    if not isinstance(profiles, list):
        out.add("profiles", f"profiles: must be an array, got {_type_name(profiles)}", fatal=True)
        profiles = []
    elif not profiles:
        out.add(
            "no-profiles",
            "profiles: empty (speedscope alerts on a file with no profiles)",
            fatal=False,
        )
    if "activeProfileIndex" in doc:
        index = doc["activeProfileIndex"]
        if not (_is_number(index) and float(index).is_integer()):
            out.add("active", f"activeProfileIndex: must be an integer, got {index!r}", fatal=False)
        elif profiles and not 0 <= int(index) < len(profiles):
            out.add(
                "active",
                f"activeProfileIndex: {index} out of range for {len(profiles)} profiles",
                fatal=False,
            )
    for i, profile in enumerate(profiles):
        _check_profile(out, f"profiles[{i}]", profile, n_frames)
    return out


def _check_frame(out: _Problems, where: str, frame: object) -> None:
    if not isinstance(frame, Mapping):
        out.add("frame", f"{where}: must be an object, got {_type_name(frame)}", fatal=True)
        return
    if not isinstance(frame.get("name"), str):
        out.add(
            "frame.name",
            f"{where}.name: must be a string, got {_type_name(frame.get('name'))}",
            fatal=True,
        )
    if "file" in frame and not isinstance(frame["file"], str):
        out.add(
            "frame.file",
            f"{where}.file: must be a string, got {_type_name(frame['file'])}",
            fatal=False,
        )
    for key in ("line", "col"):
        if key in frame and not _is_number(frame[key]):
            out.add(
                f"frame.{key}",
                f"{where}.{key}: must be a number, got {_type_name(frame[key])}",
                fatal=False,
            )


def _frame_index_ok(value: object, n_frames: int) -> TypeGuard[int | float]:
    return _is_number(value) and float(value).is_integer() and 0 <= value < n_frames


def _check_profile(out: _Problems, where: str, profile: object, n_frames: int) -> None:
    if not isinstance(profile, Mapping):
        out.add("profile", f"{where}: must be an object, got {_type_name(profile)}", fatal=True)
        return
    kind = profile.get("type")
    if kind not in ("sampled", "evented"):
        out.add(
            "profile.type",
            f"{where}.type: must be 'sampled' or 'evented', got {kind!r}",
            fatal=True,
        )
        return
    if not isinstance(profile.get("name"), str):
        out.add(
            "profile.name",
            f"{where}.name: must be a string, got {_type_name(profile.get('name'))}",
            fatal=False,
        )
    if profile.get("unit") not in UNITS:
        out.add(
            "profile.unit",
            f"{where}.unit: must be one of {', '.join(UNITS)}, got {profile.get('unit')!r}",
            fatal=True,
        )
    start, end = profile.get("startValue"), profile.get("endValue")
    for key, value in (("startValue", start), ("endValue", end)):
        if not _is_number(value):
            out.add(
                f"profile.{key}", f"{where}.{key}: must be a number, got {value!r}", fatal=False
            )
    bounds: tuple[float, float] | None = None
    if _is_number(start) and _is_number(end):
        bounds = (float(start), float(end))
        if start > end:
            out.add("profile.bounds", f"{where}: startValue {start} > endValue {end}", fatal=False)
    if kind == "sampled":
        _check_sampled(out, where, profile, n_frames)
    else:
        _check_evented(out, where, profile, n_frames, bounds)


def _check_sampled(out: _Problems, where: str, profile: Mapping[str, Any], n_frames: int) -> None:
    samples, weights = profile.get("samples"), profile.get("weights")
    if not isinstance(samples, list):
        out.add(
            "samples", f"{where}.samples: must be an array, got {_type_name(samples)}", fatal=True
        )
        samples = None
    if not isinstance(weights, list):
        out.add(
            "weights", f"{where}.weights: must be an array, got {_type_name(weights)}", fatal=True
        )
        weights = None
    if samples is not None and weights is not None and len(samples) != len(weights):
        out.add(
            "lengths",
            f"{where}: samples has {len(samples)} entries but weights has "
            f"{len(weights)} (speedscope rejects the file)",
            fatal=True,
        )
    if samples is not None and weights is not None and _sampled_ok(samples, weights, n_frames):
        return  # the common case, checked at C speed; the loops below find what is wrong
    for i, stack in enumerate(samples or []):
        if not isinstance(stack, list):
            out.add(
                "stack",
                f"{where}.samples[{i}]: must be an array, got {_type_name(stack)}",
                fatal=True,
            )
            continue
        for j, index in enumerate(stack):
            if not _frame_index_ok(index, n_frames):
                out.add(
                    "stack.frame",
                    f"{where}.samples[{i}][{j}]: {index!r} is not a frame "
                    f"index (0..{n_frames - 1})",
                    fatal=True,
                )
    for i, weight in enumerate(weights or []):
        if not isinstance(weight, int | float) or isinstance(weight, bool):
            out.add(
                "weight.type",
                f"{where}.weights[{i}]: must be a number, got {_type_name(weight)}",
                fatal=True,
            )
        elif not (math.isfinite(weight) and weight > 0):
            out.add(
                "weight.value", f"{where}.weights[{i}]: must be > 0, got {weight!r}", fatal=False
            )


def _sampled_ok(samples: list[Any], weights: list[Any], n_frames: int) -> bool:
    """True when every stack is a list of in-range integer frame indexes and every weight a
    positive finite number; distinct values are few, so they are checked once each."""
    if set(map(type, samples)) - {list}:
        return False
    # parse_json shares one list per distinct stack: check each once
    distinct = list({id(s): s for s in samples}.values())
    flat = itertools.chain.from_iterable
    kinds = set(map(type, flat(distinct)))
    if kinds - {int, float}:
        return False
    values = set(flat(distinct))
    if values and not (min(values) >= 0 and max(values) < n_frames):
        return False
    if float in kinds and not all(float(v).is_integer() for v in values):
        return False
    if set(map(type, weights)) - {int, float}:
        return False
    return all(math.isfinite(w) and w > 0 for w in set(weights))


def _check_evented(
    out: _Problems,
    where: str,
    profile: Mapping[str, Any],
    n_frames: int,
    bounds: tuple[float, float] | None,
) -> None:
    events = profile.get("events")
    if not isinstance(events, list):
        out.add("events", f"{where}.events: must be an array, got {_type_name(events)}", fatal=True)
        return
    stack: list[int] = []
    last: float | None = None
    for i, event in enumerate(events):
        here = f"{where}.events[{i}]"
        if not isinstance(event, Mapping):
            out.add("event", f"{here}: must be an object, got {_type_name(event)}", fatal=True)
            continue
        kind, at, frame = event.get("type"), event.get("at"), event.get("frame")
        if kind not in ("O", "C"):
            out.add("event.type", f"{here}.type: must be 'O' or 'C', got {kind!r}", fatal=True)
            continue
        if not _frame_index_ok(frame, n_frames):
            out.add(
                "event.frame",
                f"{here}.frame: {frame!r} is not a frame index (0..{n_frames - 1})",
                fatal=True,
            )
            continue
        if not _is_number(at):
            out.add("event.at", f"{here}.at: must be a number, got {at!r}", fatal=True)
            continue
        if last is not None and at < last:
            out.add(
                "event.order",
                f"{here}.at: {at} is before the previous event ({last}); "
                "events must be in non-decreasing order",
                fatal=True,
            )
        last = at if last is None else max(last, at)
        if bounds is not None and not bounds[0] <= at <= bounds[1]:
            out.add(
                "event.bounds",
                f"{here}.at: {at} outside [startValue, endValue] = [{bounds[0]}, {bounds[1]}]",
                fatal=False,
            )
        index = int(frame)
        if kind == "O":
            stack.append(index)
        elif not stack:
            out.add("event.close", f"{here}: closes frame {index} but no frame is open", fatal=True)
        elif stack[-1] != index:
            out.add(
                "event.nesting",
                f"{here}: closes frame {index} while frame {stack[-1]} is "
                "the innermost open frame (events must nest)",
                fatal=True,
            )
        else:
            stack.pop()
    if stack:
        out.add(
            "event.unclosed",
            f"{where}.events: {len(stack)} frame(s) opened but never "
            f"closed (innermost: {stack[-1]})",
            fatal=True,
        )


def validate(doc: object) -> list[str]:
    """Problems that would fail the official schema or speedscope's importer; [] means valid.

    Checks the schema's required fields and types (no nulls where a string or number is
    required, ``activeProfileIndex`` an in-range integer when present, frame indexes in range)
    and the app's import rules: at least one profile, ``samples``/``weights`` of equal length,
    weights > 0, and for evented profiles ``at`` non-decreasing and within
    ``[startValue, endValue]`` with open/close events balanced and properly nested.
    """
    return _check_document(doc).finish()


# --------------------------------------------------------------------------------------------
# loading


@dataclass
class _Profile:
    name: str
    unit: str
    stacks: list[tuple[int, ...]]
    weights: list[float]


@dataclass
class _Parsed:
    name: str
    frames: list[Frame]
    profiles: list[_Profile]


_SAMPLES_START = re.compile(r'"(samples|weights)"\s*:\s*\[')
_SIMPLE_SAMPLES = re.compile(r"(?:\s*\[[\d\s,]*\]\s*,?)*\s*\]")
_SIMPLE_WEIGHTS = re.compile(r"[\d\s,.eE+-]*\]")
_STACK = re.compile(r"\[([\d\s,]*)\]")


def parse_json(text: str) -> Any:
    """``json.loads`` for profiles, with the memory of a large py-spy file kept near its size.

    ``samples`` arrays of plain integer stacks are read by a scanner that gives every repeated
    stack the same list object, and ``weights`` arrays become floats directly; the rest of the
    text goes through ``json.loads``. Anything unusual in those arrays falls back to
    ``json.loads`` for that array, so the result always equals ``json.loads(text)``.
    """
    pieces: list[str] = []
    arrays: list[list[Any]] = []
    stacks: dict[str, list[int]] = {}
    floats: dict[str, float] = {}
    pos = 0
    for m in _SAMPLES_START.finditer(text):
        if m.start() < pos:
            continue  # inside an array already replaced
        body = m.end()
        simple = (_SIMPLE_SAMPLES if m.group(1) == "samples" else _SIMPLE_WEIGHTS).match(text, body)
        if simple is None:
            continue
        end = simple.end()  # just past the closing bracket
        if m.group(1) == "samples":
            array: list[Any] = []
            for stack in _STACK.finditer(text, body, end):
                key = stack.group(1)
                found = stacks.get(key)
                if found is None:
                    parts = [x for x in key.split(",") if x.strip()]
                    found = stacks[key] = [int(x) for x in parts]
                array.append(found)
        else:
            array = []
            for x in text[body : end - 1].split(","):
                if x.strip():
                    value = floats.get(x)
                    if value is None:
                        value = floats[x] = json.loads(x)  # the exact int/float json would give
                    array.append(value)
        pieces.append(text[pos : m.start()])
        pieces.append(f'"{m.group(1)}": "\\u0000perfreplay:{len(arrays)}"')
        arrays.append(array)
        pos = end
    if not arrays:
        return json.loads(text)
    pieces.append(text[pos:])
    doc = json.loads("".join(pieces))
    marker = "\x00perfreplay:"

    def put_back(node: Any) -> Any:
        if isinstance(node, str) and node.startswith(marker):
            return arrays[int(node[len(marker) :])]
        if isinstance(node, dict):
            for key, value in node.items():
                node[key] = put_back(value)
        elif isinstance(node, list) and node and not isinstance(node[0], int | float):
            for i, value in enumerate(node):
                node[i] = put_back(value)
        return node

    return put_back(doc)


def dump_chunks(doc: Mapping[str, Any], chunk: int = 50_000) -> Iterator[str]:
    """Compact JSON text of ``doc`` in pieces: long ``profiles[*]`` arrays are encoded
    ``chunk`` items at a time, so writing a large profile never holds all its text at once
    (``json.dump`` does the same item by item, several times slower)."""

    def encode(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"))

    text_of: dict[int, str] = {}  # id(stack list) -> its JSON; documents share stack lists

    def encode_stacks(stacks: list[Any]) -> str:
        out = []
        for stack in stacks:
            text = text_of.get(id(stack))
            if text is None:
                text = text_of[id(stack)] = encode(stack)
            out.append(text)
        return ",".join(out)

    yield "{"
    for i, (key, value) in enumerate(doc.items()):
        yield ("," if i else "") + encode(key) + ":"
        if key != "profiles" or not isinstance(value, list):
            yield encode(value)
            continue
        yield "["
        for j, profile in enumerate(value):
            yield ",{" if j else "{"
            for n, (pkey, pvalue) in enumerate(profile.items()):
                yield ("," if n else "") + encode(pkey) + ":"
                if pkey == "samples" and isinstance(pvalue, list):
                    yield "["
                    for start in range(0, len(pvalue), chunk):
                        yield ("," if start else "") + encode_stacks(pvalue[start : start + chunk])
                    yield "]"
                elif isinstance(pvalue, list) and len(pvalue) > chunk:
                    yield "["
                    for start in range(0, len(pvalue), chunk):
                        yield ("," if start else "") + encode(pvalue[start : start + chunk])[1:-1]
                    yield "]"
                else:
                    yield encode(pvalue)
            yield "}"
        yield "]"
    yield "}"


def load(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A speedscope document from a parsed speedscope file or a pyinstrument session.

    Speedscope input is returned as a deep copy, unchanged (use :func:`normalize` to repair it).
    A pyinstrument session becomes sampled profiles (one per thread), one sample per distinct
    stack, weight = self time in seconds. Raises :class:`SpeedscopeError` on anything else.
    """
    if isinstance(obj, str | bytes):
        raise SpeedscopeError("expected a parsed JSON object, got text: parse it with json.loads")
    if not isinstance(obj, Mapping):
        raise SpeedscopeError(f"expected a JSON object, got {_type_name(obj)}")
    return _load(obj, copy_speedscope=True)


def _load(obj: Mapping[str, Any], *, copy_speedscope: bool) -> dict[str, Any]:
    if ("profiles" in obj and "shared" in obj) or obj.get("$schema") == SCHEMA_URL:
        # Internal readers only read: copying a 50 MB profile would double the memory.
        return copy.deepcopy(dict(obj)) if copy_speedscope else dict(obj)
    if "frame_records" in obj:
        return _from_pyinstrument_records(obj)
    tree = obj.get("root_frame", obj)
    if isinstance(tree, Mapping) and "identifier" in tree:
        return _from_pyinstrument_tree(obj, tree)
    keys = ", ".join(sorted(map(str, obj))[:8]) or "none"
    raise SpeedscopeError(
        "not a speedscope file or a pyinstrument session (expected 'profiles' and 'shared', "
        f"'frame_records', or 'root_frame'); found keys: {keys}"
    )


def _parse_pyinstrument_frame(frame_info: str) -> tuple[str | None, dict[str, Any] | None]:
    """(thread name, None) for a thread marker, (None, frame) for code, (None, None) to drop."""
    identifier, _, attributes = frame_info.partition(_PYI_ATTRIBUTES_SEP)
    parts = identifier.split(_PYI_IDENTIFIER_SEP)
    if len(parts) == 3 and parts[1] == _PYI_THREAD_MARKER:
        return parts[0], None
    if identifier in _PYI_DROPPED:
        return None, None
    if len(parts) != 3:
        return None, {"name": identifier or "(unknown)"}  # "[await]", "[out-of-context]"
    function, file, line = parts
    class_name = next(
        (a[1:] for a in attributes.split(_PYI_ATTRIBUTES_SEP) if a.startswith("c") and a[1:]), None
    )
    frame: dict[str, Any] = {"name": f"{class_name}.{function}" if class_name else function}
    if file:
        frame["file"] = file
    if line.isdigit():
        frame["line"] = int(line)
    return None, frame


def _qualify(frame: dict[str, Any], callers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """pyinstrument names code objects by ``co_name``; give comprehensions and lambdas the
    ``outer.<locals>.<genexpr>`` qualname py-spy reports, so two ``<genexpr>`` of one module don't
    merge into one function. The defining function is the nearest caller in the same file (a
    builtin such as ``sorted`` or ``sum`` may sit in between); that holds in all but contrived
    cases."""
    name = frame["name"]
    if not name.startswith("<") or name == "<module>" or "." in name:
        return frame
    for caller in reversed(callers):
        if caller.get("file") == frame.get("file"):
            if caller["name"] == "<module>":
                return frame
            return {**frame, "name": f"{caller['name']}.<locals>.{name}"}
        if not _is_builtin_frame(caller):
            return frame  # called from other Python code: not the defining function
    return frame


def _is_builtin_frame(frame: Mapping[str, Any]) -> bool:
    file = frame.get("file")
    return not isinstance(file, str) or not file or file.startswith("<built-in")


class _StackAccumulator:
    """Frames and per-thread (stack -> weight) sums in first-seen order."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self._frame_index: dict[tuple[Any, ...], int] = {}
        self.threads: dict[str, dict[tuple[int, ...], float]] = {}

    def add(self, thread: str, frames: Iterable[dict[str, Any]], weight: float) -> None:
        if not weight > 0:
            return
        stack: list[int] = []
        for frame in frames:
            key = (frame["name"], frame.get("file"), frame.get("line"))
            index = self._frame_index.get(key)
            if index is None:
                index = self._frame_index[key] = len(self.frames)
                self.frames.append(frame)
            stack.append(index)
        if stack:
            per_thread = self.threads.setdefault(thread, {})
            per_thread[tuple(stack)] = per_thread.get(tuple(stack), 0.0) + weight

    def document(self, name: str, exporter: str) -> dict[str, Any]:
        profiles = [
            _Profile(thread, "seconds", list(stacks), list(stacks.values()))
            for thread, stacks in self.threads.items()
        ]
        return _document(name=name, exporter=exporter, frames=self.frames, profiles=profiles)


def _pyinstrument_name(session: Mapping[str, Any]) -> str:
    description = session.get("target_description")
    return description if isinstance(description, str) and description else "pyinstrument session"


def _from_pyinstrument_records(session: Mapping[str, Any]) -> dict[str, Any]:
    records = session["frame_records"]
    if not isinstance(records, list):
        raise SpeedscopeError(f"frame_records: must be an array, got {_type_name(records)}")
    default_thread = _pyinstrument_name(session)
    acc = _StackAccumulator()
    for i, record in enumerate(records):
        if not (
            isinstance(record, list | tuple)
            and len(record) == 2
            and isinstance(record[0], list | tuple)
            and all(isinstance(f, str) for f in record[0])
            and _is_number(record[1])
        ):
            raise SpeedscopeError(f"frame_records[{i}]: expected [[frame info, ...], time]")
        thread = default_thread
        frames: list[dict[str, Any]] = []
        for frame_info in record[0]:
            thread_name, frame = _parse_pyinstrument_frame(frame_info)
            if thread_name is not None:
                thread = thread_name
            elif frame is not None:
                frames.append(_qualify(frame, frames))
        acc.add(thread, frames, float(record[1]))
    return acc.document(default_thread, "pyinstrument (session)")


def _from_pyinstrument_tree(session: Mapping[str, Any], root: Mapping[str, Any]) -> dict[str, Any]:
    acc = _StackAccumulator()
    default_thread = _pyinstrument_name(session)
    # Iterative walk: real stacks are deep enough to hit the recursion limit.
    todo: list[tuple[Mapping[str, Any], tuple[dict[str, Any], ...], str]] = [
        (root, (), default_thread)
    ]
    while todo:
        node, parents, thread = todo.pop()
        identifier = node.get("identifier")
        children = node.get("children") or []
        if not isinstance(identifier, str) or not _is_number(node.get("time")):
            raise SpeedscopeError("pyinstrument frame: expected 'identifier' and 'time'")
        if not isinstance(children, list):
            raise SpeedscopeError("pyinstrument frame: 'children' must be an array")
        attributes = node.get("attributes") or {}
        class_attrs = [(t, a) for a, t in attributes.items() if str(a).startswith("c") and a[1:]]
        info = identifier
        if class_attrs:
            info += _PYI_ATTRIBUTES_SEP + max(class_attrs)[1]  # the most observed class name
        thread_name, frame = _parse_pyinstrument_frame(info)
        if frame is not None:
            frame = _qualify(frame, parents)
        stack = parents + ((frame,) if frame is not None else ())
        thread = thread_name or thread
        if _is_number(node.get("self_time")):
            self_time = float(node["self_time"])
        else:
            self_time = float(node["time"]) - sum(
                float(c["time"]) for c in children if isinstance(c, Mapping) and "time" in c
            )
        if self_time > 1e-12:  # time minus children leaves float dust
            acc.add(thread, stack, self_time)
        for child in reversed(children):
            if not isinstance(child, Mapping):
                raise SpeedscopeError("pyinstrument frame: children must be objects")
            todo.append((child, stack, thread))
    return acc.document(default_thread, "pyinstrument (session)")


def _parse(doc: Mapping[str, Any]) -> _Parsed:
    """Readable form of any accepted input; evented profiles become sampled ones."""
    if isinstance(doc, str | bytes) or not isinstance(doc, Mapping):
        load(doc)  # raises the right error
    loaded = _load(doc, copy_speedscope=False)
    problems = _check_document(loaded)
    if problems.fatal:
        raise SpeedscopeError("unreadable speedscope document: " + "; ".join(problems.finish()))
    frames: list[Frame] = loaded["shared"]["frames"]
    profiles: list[_Profile] = []
    # Real profiles repeat a few thousand stacks hundreds of thousands of times: one tuple per
    # distinct stack keeps memory flat and lets the algorithms memoize per stack.
    interned: dict[tuple[int, ...], tuple[int, ...]] = {}
    for i, raw in enumerate(loaded["profiles"]):
        name = raw.get("name") if isinstance(raw.get("name"), str) else f"profile {i + 1}"
        if raw["type"] == "sampled":
            samples = raw["samples"]
            by_id: dict[int, tuple[int, ...]] = {}  # parse_json shares repeated stack lists
            for s in {id(s): s for s in samples}.values():
                t = tuple(s) if all(type(f) is int for f in s) else tuple(map(int, s))
                by_id[id(s)] = interned.setdefault(t, t)
            stacks = [by_id[id(s)] for s in samples]
            weights = list(map(float, raw["weights"]))
        else:
            stacks, weights = _evented_to_samples(raw["events"], raw.get("startValue"))
        profiles.append(_Profile(name, raw["unit"], stacks, weights))
    doc_name = loaded.get("name")
    return _Parsed(doc_name if isinstance(doc_name, str) else "", frames, profiles)


def _evented_to_samples(
    events: Sequence[Mapping[str, Any]], start: object
) -> tuple[list[tuple[int, ...]], list[float]]:
    # Events are already checked to be ordered and nested; each gap between two events is one
    # sample of the stack that was open during it.
    stacks: list[tuple[int, ...]] = []
    weights: list[float] = []
    stack: list[int] = []
    last = float(start) if _is_number(start) else None
    for event in events:
        at = float(event["at"])
        if stack and last is not None and at > last:
            _append_sample(stacks, weights, tuple(stack), at - last)
        last = at
        if event["type"] == "O":
            stack.append(int(event["frame"]))
        else:
            stack.pop()
    return stacks, weights


def _append_sample(
    stacks: list[tuple[int, ...]], weights: list[float], stack: tuple[int, ...], weight: float
) -> None:
    # Adjacent identical stacks carry no extra information (speedscope merges them too).
    if stacks and stacks[-1] == stack:
        weights[-1] += weight
    else:
        stacks.append(stack)
        weights.append(weight)


# --------------------------------------------------------------------------------------------
# building documents


class _FrameTable:
    """Output frames, one per function_key. Keeps the first file seen and the lowest line (the
    closest sampled line to the definition); never writes nulls."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self._index: dict[FunctionKey, int] = {}

    def add(self, frame: Frame) -> int:
        key = function_key(frame)
        qualname, file, line = _split_name(frame)
        index = self._index.get(key)
        if index is None:
            index = self._index[key] = len(self.frames)
            out: dict[str, Any] = {"name": qualname or "(unknown)"}
            if file:
                out["file"] = file
            if line is not None:
                out["line"] = line
            self.frames.append(out)
        elif line is not None:
            current = self.frames[index].get("line")
            if current is None or line < current:
                self.frames[index]["line"] = line
        return index


def _document(
    *, name: str, exporter: str, frames: Sequence[Frame], profiles: Sequence[_Profile]
) -> dict[str, Any]:
    # One list per distinct stack, shared by its samples: a million samples of a few thousand
    # stacks cost a million pointers, not a million lists. Treat the result as read-only.
    as_list: dict[tuple[int, ...], list[int]] = {}
    for p in profiles:
        for stack in p.stacks:
            if stack not in as_list:
                as_list[stack] = list(stack)
    return {
        "$schema": SCHEMA_URL,
        "name": name,
        "exporter": exporter,
        "activeProfileIndex": 0,
        "shared": {"frames": [dict(f) for f in frames]},
        "profiles": [
            {
                "type": "sampled",
                "name": p.name,
                "unit": p.unit,
                "startValue": 0,
                "endValue": math.fsum(p.weights),
                "samples": [as_list[s] for s in p.stacks],
                "weights": list(p.weights),
            }
            for p in profiles
        ],
    }


def _all_usable(profile: _Profile) -> bool:
    """No empty stack, and every weight positive and finite."""
    weights = set(profile.weights)
    return all(math.isfinite(w) and w > 0 for w in weights) and () not in set(profile.stacks)


def _common_unit(units: Iterable[str]) -> str:
    distinct = set(units)
    if len(distinct) <= 1:
        return distinct.pop() if distinct else "none"
    if distinct <= set(_TIME_SCALE):
        return "seconds"
    raise SpeedscopeError(f"cannot combine profiles with units {sorted(distinct)}")


def _scale(unit: str, target: str) -> float:
    return 1.0 if unit == target else _TIME_SCALE[unit] / _TIME_SCALE[target]


def normalize(
    doc: Mapping[str, Any],
    *,
    name: str,
    exporter: str,
    focus: Callable[[Frame], bool] | None = None,
) -> dict[str, Any]:
    """A clean, valid, sampled speedscope document from any input :func:`load` accepts.

    * one frame per function (frames differing only by line are merged, see :func:`function_key`);
    * no nulls, no empty stacks, no zero/negative weights; evented profiles become sampled;
    * ``focus``: keep only samples whose stack contains a matching frame, cut so that the stack
      starts at the outermost match (drops pytest's and the harness's frames above it);
    * profiles left without samples are dropped; if none is left, :class:`SpeedscopeError`
      (speedscope cannot show an empty file, and the caller should say why it is empty);
    * ``name``, ``exporter``, ``activeProfileIndex=0`` and ``$schema`` set.
    """
    parsed = _parse(doc)
    table = _FrameTable()
    profiles: list[_Profile] = []
    focused = [focus(f) for f in parsed.frames] if focus is not None else None
    rewritten: dict[tuple[int, ...], tuple[int, ...]] = {}  # per distinct input stack
    added: dict[int, int] = {}  # input frame index -> output frame index

    def rewrite(stack: tuple[int, ...]) -> tuple[int, ...]:
        if focused is not None:
            start = next((i for i, f in enumerate(stack) if focused[f]), None)
            if start is None:
                return ()
            stack = stack[start:]
        return tuple(
            added[f] if f in added else added.setdefault(f, table.add(parsed.frames[f]))
            for f in stack
        )

    for profile in parsed.profiles:
        stacks: list[tuple[int, ...]] = []
        weights: list[float] = []
        for stack, weight in zip(profile.stacks, profile.weights, strict=True):
            if not (math.isfinite(weight) and weight > 0):
                continue
            new_stack = rewritten.get(stack)
            if new_stack is None:
                new_stack = rewritten[stack] = rewrite(stack)
            if new_stack:
                _append_sample(stacks, weights, new_stack, weight)
        if stacks:
            profiles.append(_Profile(profile.name, profile.unit, stacks, weights))
    if not profiles:
        why = "no sample matched the focus" if focus is not None else "the input has no samples"
        raise SpeedscopeError(f"nothing to write: {why}")
    return _document(name=name, exporter=exporter, frames=table.frames, profiles=profiles)


def merge(docs: Sequence[Mapping[str, Any]], *, name: str, exporter: str) -> dict[str, Any]:
    """Threads and runs in one file.

    Profile 0 is ``"all threads"``, the concatenation of every input profile (always present, so
    the app opens on the whole picture and the file's total is profile 0's total); every input
    profile follows, named ``"<run> / <profile>"`` when there is more than one input. Frames are
    de-duplicated by function_key; time units are converted to a common one. Total weight is
    preserved (non-positive weights are dropped). An input that is itself a merge contributes
    its own threads, not its "all threads" copy, so nothing is counted twice.
    """
    if not docs:
        raise SpeedscopeError("merge: no documents given")
    parsed = [_parse(d) for d in docs]
    unit = _common_unit(p.unit for doc in parsed for p in doc.profiles)
    names = [doc.name for doc in parsed]
    distinct_names = len(set(names)) == len(names) and all(names)
    table = _FrameTable()
    everything = _Profile(ALL_THREADS, unit, [], [])
    kept: list[_Profile] = []
    for run, doc in enumerate(parsed):
        label = doc.name if distinct_names else f"run {run + 1}"
        rewritten: dict[tuple[int, ...], tuple[int, ...]] = {}  # per distinct input stack
        added: dict[int, int] = {}  # input frame index -> output frame index
        parts = [p for p in doc.profiles if p.name != ALL_THREADS] or doc.profiles
        for profile in parts:
            factor = _scale(profile.unit, unit)
            out = _Profile(
                f"{label} / {profile.name}" if len(parsed) > 1 else profile.name, unit, [], []
            )
            for stack in dict.fromkeys(profile.stacks):  # distinct, in first-seen order
                if stack not in rewritten:
                    rewritten[stack] = tuple(
                        added[f] if f in added else added.setdefault(f, table.add(doc.frames[f]))
                        for f in stack
                    )
            if _all_usable(profile):  # the common case, without a Python loop per sample
                out.stacks = [rewritten[st] for st in profile.stacks]
                out.weights = (
                    list(profile.weights)
                    if factor == 1.0
                    else [w * factor for w in profile.weights]
                )
            else:
                for stack, weight in zip(profile.stacks, profile.weights, strict=True):
                    if stack and math.isfinite(weight) and weight > 0:
                        _append_sample(out.stacks, out.weights, rewritten[stack], weight * factor)
            if out.stacks:
                kept.append(out)
                everything.stacks.extend(out.stacks)
                everything.weights.extend(out.weights)
    if not kept:
        raise SpeedscopeError("merge: the inputs have no samples")
    return _document(
        name=name, exporter=exporter, frames=table.frames, profiles=[everything, *kept]
    )


# --------------------------------------------------------------------------------------------
# aggregation


@dataclass
class _Aggregate:
    """Samples of one document as (function-key stack, weight), in one unit."""

    unit: str
    samples: list[tuple[tuple[FunctionKey, ...], float]]  # one entry per distinct stack
    frames: dict[FunctionKey, Frame]
    count: int = 0  # samples in the input

    @property
    def total(self) -> float:
        return math.fsum(w for _, w in self.samples)


def _aggregate(doc: Mapping[str, Any], unit: str | None = None) -> _Aggregate:
    parsed = _parse(doc)
    # A merged file repeats every sample in "all threads"; count them once.
    chosen = [p for p in parsed.profiles if p.name == ALL_THREADS] or parsed.profiles
    target = unit or _common_unit(p.unit for p in chosen)
    keys = [function_key(f) for f in parsed.frames]
    frames: dict[FunctionKey, Frame] = {}
    for key, frame in zip(keys, parsed.frames, strict=True):
        frames.setdefault(key, frame)
    sums: dict[tuple[int, ...], float] = {}
    count = 0
    for profile in chosen:
        factor = _scale(profile.unit, target)
        for stack, weight in zip(profile.stacks, profile.weights, strict=True):
            if stack and math.isfinite(weight) and weight > 0:
                sums[stack] = sums.get(stack, 0.0) + weight * factor
                count += 1
    by_keys: dict[tuple[FunctionKey, ...], float] = {}
    for stack, weight in sums.items():
        key_stack = tuple(keys[f] for f in stack)
        by_keys[key_stack] = by_keys.get(key_stack, 0.0) + weight
    return _Aggregate(target, list(by_keys.items()), frames, count)


def _self_and_total(
    samples: Iterable[tuple[tuple[FunctionKey, ...], float]],
) -> tuple[dict[FunctionKey, float], dict[FunctionKey, float]]:
    own: dict[FunctionKey, float] = {}
    total: dict[FunctionKey, float] = {}
    for stack, weight in samples:
        own[stack[-1]] = own.get(stack[-1], 0.0) + weight
        for key in set(stack):  # once per sample, even under recursion
            total[key] = total.get(key, 0.0) + weight
    return own, total


def format_weight(value: float, unit: str) -> str:
    """Human-readable weight: ``12.3 ms``, ``4.00 KiB``, ``17``."""
    if unit in _TIME_SCALE:
        seconds = value * _TIME_SCALE[unit]
        magnitude = abs(seconds)
        for limit, suffix, scale in ((1.0, "s", 1.0), (1e-3, "ms", 1e3), (1e-6, "µs", 1e6)):
            if magnitude >= limit:
                return f"{seconds * scale:.3g} {suffix}"
        return f"{seconds * 1e9:.3g} ns"
    if unit == "bytes":
        for limit, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(value) >= limit:
                return f"{value / limit:.3g} {suffix}"
        return f"{value:.0f} B"
    return f"{value:.4g}"


@dataclass(frozen=True)
class SummaryRow:
    function: str
    module: str
    self_weight: float
    total_weight: float
    self_share: float
    total_share: float

    @property
    def display(self) -> str:
        return _display((self.module, self.function))


@dataclass(frozen=True)
class Summary:
    """Where the time goes. Shares are fractions of ``total`` (0..1)."""

    total: float
    unit: str
    samples: int
    rows: list[SummaryRow]  # every function, ranked by self share
    by_self: list[SummaryRow]  # top N by self share
    by_total: list[SummaryRow]  # top N by total share (callers included)
    user_share: float  # self time in user code
    library_share: float  # self time in installed packages, the stdlib, native or unknown code
    flatness: float  # top self share; low means no single function dominates

    @property
    def is_flat(self) -> bool:
        return self.flatness < FLAT_THRESHOLD

    def headline(self) -> str:
        return (
            f"{format_weight(self.total, self.unit)} sampled; user code {self.user_share:.0%}, "
            f"libraries {self.library_share:.0%}; top self share {self.flatness:.1%}"
            + (" (flat: no single function dominates)" if self.is_flat else "")
        )

    def table(self, *, by_total: bool = False) -> list[str]:
        """One ranking (by self time unless ``by_total``), with both shares per function."""
        rows = self.by_total if by_total else self.by_self
        out = [f"  {'self':>6} {'total':>6}  function (by {'total' if by_total else 'self'} time)"]
        out += [f"  {r.self_share:>6.1%} {r.total_share:>6.1%}  {r.display}" for r in rows]
        return out

    def lines(self, *, by_total: bool = False) -> list[str]:
        """Headline and the self-time ranking; ``by_total`` adds the total-time ranking."""
        out = [f"profile: {self.headline()}", *self.table()]
        if by_total:
            out += self.table(by_total=True)
        return out


def summarize(
    doc: Mapping[str, Any],
    *,
    top: int = 5,
    is_user_code: Callable[[Frame], bool] | None = None,
) -> Summary:
    """Top functions by self and total time, user vs library share, and flatness.

    Uses every profile, or only ``"all threads"`` in a :func:`merge` output (which repeats the
    others). ``is_user_code`` defaults to "not :func:`is_library_frame`".
    """
    agg = _aggregate(doc)
    if not agg.samples:
        raise SpeedscopeError("summarize: the profile has no samples")
    user = is_user_code or (lambda frame: not is_library_frame(frame))
    own, total = _self_and_total(agg.samples)
    grand = agg.total
    rows = sorted(
        (
            SummaryRow(
                function=key[1],
                module=key[0],
                self_weight=own.get(key, 0.0),
                total_weight=total[key],
                self_share=own.get(key, 0.0) / grand,
                total_share=total[key] / grand,
            )
            for key in total
        ),
        key=lambda r: (-r.self_weight, -r.total_weight, r.display),
    )
    user_weight = math.fsum(w for key, w in own.items() if user(agg.frames[key]))
    library_weight = math.fsum(w for key, w in own.items() if not user(agg.frames[key]))
    # Each share from its own sum (1 - user would print "-0%"), clamped against float dust.
    user_share = min(1.0, user_weight / grand)
    library_share = min(1.0, max(0.0, library_weight / grand))
    return Summary(
        total=grand,
        unit=agg.unit,
        samples=agg.count,
        rows=rows,
        by_self=rows[:top],
        by_total=sorted(rows, key=lambda r: (-r.total_weight, -r.self_weight, r.display))[:top],
        user_share=user_share,
        library_share=library_share,
        flatness=rows[0].self_share if rows else 0.0,
    )


# --------------------------------------------------------------------------------------------
# diff


@dataclass(frozen=True)
class DiffRow:
    """Self weight of one function per replayed call, before and after."""

    function: str
    module: str
    old_per_call: float
    new_per_call: float
    delta: float  # new - old
    ratio: float | None  # new / old; None when the function is new
    moved: bool  # |delta| above the noise floor

    @property
    def display(self) -> str:
        return _display((self.module, self.function))


@dataclass(frozen=True)
class Diff:
    """Per-call profile comparison. ``document`` holds profiles "before", "after" (per call),
    "grew" and "shrank" (the per-stack increases/decreases of the functions that moved, as
    positive weights). An empty "grew" or "shrank" holds one placeholder sample named
    "(nothing grew beyond the noise floor)" / "(nothing shrank ...)" whose weight is the noise
    floor, because the speedscope app cannot show a profile with no samples."""

    unit: str
    old_calls: int
    new_calls: int
    old_total_per_call: float
    new_total_per_call: float
    threshold: float
    noise: float  # absolute per-call noise floor = threshold * max(old, new total per call)
    rows: list[DiffRow]  # every function, ranked by |delta|
    grew: list[DiffRow]
    shrank: list[DiffRow]
    document: dict[str, Any] = field(repr=False)
    scaled: bool = False  # totals per call rescaled to the timed medians

    @property
    def speedup(self) -> float | None:
        """Old total per call / new total per call (> 1 means faster)."""
        return (
            self.old_total_per_call / self.new_total_per_call if self.new_total_per_call else None
        )

    def _fmt(self, value: float) -> str:
        return format_weight(value, self.unit)

    def headline(self) -> str:
        """``before 10.1 ms (100 calls), after 3.38 ms (400 calls) (2.99x faster); noise floor
        202 µs (2%)``, all per replayed call."""
        fmt = self._fmt
        speed = self.speedup
        verdict = "" if speed is None else f" ({speed:.2f}x {'faster' if speed >= 1 else 'slower'})"
        scale = "; profile shares at the timed medians" if self.scaled else ""
        return (
            f"before {fmt(self.old_total_per_call)} ({self.old_calls} calls), after "
            f"{fmt(self.new_total_per_call)} ({self.new_calls} calls){verdict}; noise floor "
            f"{fmt(self.noise)} ({self.threshold:.0%}){scale}"
        )

    def mover_lines(self, top: int = 5) -> list[str]:
        """The ``top`` functions that moved beyond the noise floor, biggest change first."""
        movers = [r for r in self.rows if r.moved][:top]
        if not movers:
            return ["  no function moved beyond the noise floor"]
        out = [f"  {'change':>9}  {'before':>9} -> {'after':<9} {'ratio':>6}  function"]
        for row in movers:
            ratio = "new" if row.ratio is None else f"{row.ratio:.2f}x"
            sign = "+" if row.delta > 0 else "-"
            out.append(
                f"  {sign + self._fmt(abs(row.delta)):>9}  {self._fmt(row.old_per_call):>9} -> "
                f"{self._fmt(row.new_per_call):<9} {ratio:>6}  {row.display}"
            )
        return out

    def lines(self, top: int = 5) -> list[str]:
        fmt = self._fmt
        out = [f"per call: {self.headline()}"]
        for title, rows in (("shrank", self.shrank), ("grew", self.grew)):
            if not rows:
                out.append(f"  {title}: nothing beyond the noise floor")
                continue
            out.append(f"  {title}:")
            for row in rows[:top]:
                ratio = "new" if row.ratio is None else f"{row.ratio:.2f}x"
                out.append(
                    f"    {'+' if row.delta > 0 else '-'}{fmt(abs(row.delta))}  "
                    f"{fmt(row.old_per_call)} -> {fmt(row.new_per_call)} ({ratio})  {row.display}"
                )
        unchanged = len(self.rows) - len(self.grew) - len(self.shrank)
        out.append(f"  {unchanged} function(s) unchanged within the noise floor")
        return out


def _divisor(agg: _Aggregate, calls: int, per_call: float | None, unit: str) -> float:
    """What to divide weights by: the call count, or what makes the total match ``per_call``."""
    if per_call is None or per_call <= 0 or unit not in _TIME_SCALE or agg.total <= 0:
        return float(calls)
    return agg.total / (per_call / _TIME_SCALE[unit])


def diff(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    old_calls: int,
    new_calls: int,
    threshold: float = 0.02,
    name: str,
    exporter: str,
    old_per_call: float | None = None,
    new_per_call: float | None = None,
) -> Diff:
    """Compare two profiles of the same target per replayed call.

    Functions are matched by :func:`function_key`. Weights are divided by the number of replayed
    calls, so a loop that ran for a fixed time (more calls once the code got faster) cannot make
    an unchanged function look slower. A function moves only if its |self delta per call| exceeds
    ``threshold * max(old total per call, new total per call)``.

    ``old_per_call``/``new_per_call`` (seconds; the *timed* medians) rescale each profile so its
    total per call equals that figure: a sampling profiler's own overhead varies from run to
    run, so the profile is trusted for shares and the timing for scale.
    """
    if old_calls <= 0 or new_calls <= 0:
        raise SpeedscopeError("diff: old_calls and new_calls must be positive")
    before, after = _aggregate(old), _aggregate(new)
    unit = _common_unit((before.unit, after.unit))
    if before.unit != unit:
        before = _aggregate(old, unit)
    if after.unit != unit:
        after = _aggregate(new, unit)
    if not before.samples or not after.samples:
        raise SpeedscopeError("diff: both profiles need samples")
    old_div = _divisor(before, old_calls, old_per_call, unit)
    new_div = _divisor(after, new_calls, new_per_call, unit)
    old_own, _ = _self_and_total((s, w / old_div) for s, w in before.samples)
    new_own, _ = _self_and_total((s, w / new_div) for s, w in after.samples)
    old_total, new_total = before.total / old_div, after.total / new_div
    noise = threshold * max(old_total, new_total)

    rows: list[DiffRow] = []
    for key in dict.fromkeys([*old_own, *new_own]):
        o, n = old_own.get(key, 0.0), new_own.get(key, 0.0)
        rows.append(DiffRow(key[1], key[0], o, n, n - o, n / o if o else None, abs(n - o) > noise))
    rows.sort(key=lambda r: (-abs(r.delta), r.display))
    grew = [r for r in rows if r.moved and r.delta > 0]
    shrank = [r for r in rows if r.moved and r.delta < 0]

    frames = {**before.frames, **after.frames}  # newest file/line wins for display
    table = _FrameTable()
    index = {key: table.add(frame) for key, frame in frames.items()}

    def per_stack(agg: _Aggregate, calls: float) -> dict[tuple[FunctionKey, ...], float]:
        out: dict[tuple[FunctionKey, ...], float] = {}
        for stack, weight in agg.samples:
            out[stack] = out.get(stack, 0.0) + weight / calls
        return out

    def as_profile(
        label: str, samples: Iterable[tuple[tuple[FunctionKey, ...], float]]
    ) -> _Profile:
        profile = _Profile(label, unit, [], [])
        for stack, weight in samples:
            if weight > 0:
                _append_sample(
                    profile.stacks, profile.weights, tuple(index[k] for k in stack), weight
                )
        return profile

    old_stacks, new_stacks = per_stack(before, old_div), per_stack(after, new_div)
    deltas = {
        s: new_stacks.get(s, 0.0) - old_stacks.get(s, 0.0)
        for s in dict.fromkeys([*old_stacks, *new_stacks])
    }
    grew_keys = {(r.module, r.function) for r in grew}
    shrank_keys = {(r.module, r.function) for r in shrank}
    profiles = [
        as_profile("before", ((s, w / old_div) for s, w in before.samples)),
        as_profile("after", ((s, w / new_div) for s, w in after.samples)),
        as_profile("grew", ((s, d) for s, d in deltas.items() if d > 0 and s[-1] in grew_keys)),
        as_profile(
            "shrank", ((s, -d) for s, d in deltas.items() if d < 0 and s[-1] in shrank_keys)
        ),
    ]
    for profile, verb in ((profiles[2], "grew"), (profiles[3], "shrank")):
        if not profile.stacks:
            placeholder = table.add({"name": f"(nothing {verb} beyond the noise floor)"})
            profile.stacks.append((placeholder,))
            profile.weights.append(noise if noise > 0 else 1.0)
    document = _document(name=name, exporter=exporter, frames=table.frames, profiles=profiles)
    return Diff(
        unit=unit,
        old_calls=old_calls,
        new_calls=new_calls,
        old_total_per_call=old_total,
        new_total_per_call=new_total,
        scaled=old_per_call is not None and new_per_call is not None,
        threshold=threshold,
        noise=noise,
        rows=rows,
        grew=grew,
        shrank=shrank,
        document=document,
    )
