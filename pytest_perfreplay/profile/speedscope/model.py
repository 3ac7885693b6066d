"""The profile model: function identity, loading (speedscope, pyinstrument), building documents."""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .validation import SCHEMA_URL, _check_document, _is_number, _type_name

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


def _common_unit(units: Iterable[str]) -> str:
    distinct = set(units)
    if len(distinct) <= 1:
        return distinct.pop() if distinct else "none"
    if distinct <= set(_TIME_SCALE):
        return "seconds"
    raise SpeedscopeError(f"cannot combine profiles with units {sorted(distinct)}")


def _scale(unit: str, target: str) -> float:
    return 1.0 if unit == target else _TIME_SCALE[unit] / _TIME_SCALE[target]
