"""Where the instructions go: callgrind's output of the replayed calls, as a speedscope file.

The counting process runs under ``valgrind --tool=callgrind`` and collects only the counted
calls: zeroed and dumped by client requests on x86-64 Linux, elsewhere at two markers
(``--zero-before`` and ``--dump-before``, see ``replay/counting.py``); the first dump
holds exactly those calls. callgrind records a call *graph*: per function its
own (self) instructions, and per call edge the inclusive instructions of the callee. A
flame graph needs a call *tree*, so :func:`to_speedscope` expands the graph from its roots,
splitting each function's weight between its own code and its callees in the proportions
the graph gives; a callee already on the stack (recursion) is left out and the rest
renormalized, which is the fixed point of expanding it forever. The weights are
instructions (unit ``none``) and add up to the instructions of the dump.

On Python 3.11 every Python function runs inside the same C function
(``_PyEval_EvalFrameDefault``), and valgrind sees only machine-code symbols, so the
frames are C-level: the interpreter's own work (attribute lookups, calls, allocation,
dict and list operations) and the C code of extensions. Python-level names need the
perf trampoline of 3.12+, which valgrind cannot read either.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .speedscope import SCHEMA_URL, validate

#: Not expanded below this share of the total: it stays the parent's own weight.
MIN_SHARE = 1e-4
MAX_DEPTH = 160
#: A function may recur this often on one stack before its calls stop being expanded.
MAX_REPEAT = 4

WHY_C_FRAMES = (
    "C-level frames: on Python 3.11 every Python function runs inside "
    "_PyEval_EvalFrameDefault and valgrind sees only machine-code symbols"
)

_RECURSION = re.compile(r"'\d+$")
_NAMED = re.compile(r"^\((\d+)\)(?: (.*))?$")


class CallgrindError(ValueError):
    """The callgrind file cannot be read."""


FnKey = tuple[str, str]  # (function name, object file): what callgrind calls a function


@dataclass
class CallGraph:
    """Self instructions per function, inclusive instructions per call edge."""

    own: dict[FnKey, int] = field(default_factory=dict)
    edges: dict[FnKey, dict[FnKey, int]] = field(default_factory=dict)
    calls: dict[tuple[FnKey, FnKey], int] = field(default_factory=dict)
    total: int = 0
    events: list[str] = field(default_factory=list)
    files: dict[FnKey, str] = field(default_factory=dict)  # source file, for display

    def callers(self) -> dict[FnKey, set[FnKey]]:
        out: dict[FnKey, set[FnKey]] = {}
        for caller, callees in self.edges.items():
            for callee in callees:
                if callee != caller:
                    out.setdefault(callee, set()).add(caller)
        return out


def _display(fn: str, ob: str) -> str:
    if fn.startswith("0x") or fn == "???":  # no symbol: name the object it lives in
        return f"??? [{os.path.basename(ob) or '?'}]"
    return _RECURSION.sub("", fn)  # callgrind's "'2": a recursion level, same function


def parse_callgrind(text: str) -> CallGraph:
    """Parse one callgrind dump (name compression, one position column)."""
    names: dict[str, dict[str, str]] = {k: {} for k in ("fl", "fn", "ob")}
    graph = CallGraph()
    positions = 1
    ob = fl = fn = ""
    cob = cfn = ""
    pending_calls: int | None = None

    def name(kind: str, value: str) -> str:
        m = _NAMED.match(value)
        if not m:
            return value
        ident, text_ = m.group(1), m.group(2)
        table = names[kind]
        if text_ is not None:
            table[ident] = text_
        return table.get(ident, f"({ident})")

    def key(fn_: str, ob_: str) -> FnKey:
        return (fn_, ob_)  # raw: unnamed code at different addresses stays apart

    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        c = line[0]
        if c.isdigit() or c in "+-*":
            parts = line.split()
            costs = [int(x) for x in parts[positions:]]
            ir = costs[0] if costs else 0
            here = key(fn, ob)
            if pending_calls is not None:
                callee = key(cfn, cob or ob)
                row = graph.edges.setdefault(here, {})
                row[callee] = row.get(callee, 0) + ir
                pair = (here, callee)
                graph.calls[pair] = graph.calls.get(pair, 0) + pending_calls
                pending_calls = None
                cob = ""
            else:
                graph.own[here] = graph.own.get(here, 0) + ir
            continue
        head, sep, value = line.partition("=")
        if sep and head in ("ob", "fl", "fi", "fe", "fn", "cob", "cfi", "cfl", "cfn", "calls"):
            if head == "ob":
                ob = name("ob", value)
            elif head == "fl":
                fl = name("fl", value)
            elif head in ("fi", "fe"):
                name("fl", value)  # inlined code keeps its function; only learn the name
            elif head == "fn":
                fn = name("fn", value)
                graph.own.setdefault(key(fn, ob), 0)
                if fl not in ("", "???"):
                    graph.files.setdefault(key(fn, ob), fl)
            elif head == "cob":
                cob = name("ob", value)
            elif head in ("cfi", "cfl"):
                name("fl", value)  # only learn the name: functions are keyed by object
            elif head == "cfn":
                cfn = name("fn", value)
            else:
                pending_calls = int(value.split()[0])
            continue
        head, sep, value = line.partition(":")
        if sep:
            if head == "positions":
                positions = len(value.split())
            elif head == "events":
                graph.events = value.split()
            elif head in ("summary", "totals"):
                graph.total = int(value.split()[0])
    if not graph.events:
        raise CallgrindError("not a callgrind file: no 'events:' line")
    if positions != 1:
        raise CallgrindError(
            f"{positions} position columns; run callgrind without --dump-instr=yes "
            "(speedscope reads exactly one)"
        )
    return graph


def _expand(graph: CallGraph, total: float) -> Iterable[tuple[tuple[FnKey, ...], float]]:
    """(stack, self weight) pairs of the tree expansion described in the module doc."""
    inclusive = {
        f: graph.own.get(f, 0) + sum(graph.edges.get(f, {}).values())
        for f in {*graph.own, *graph.edges}
    }
    callers = graph.callers()
    roots = [f for f in inclusive if f not in callers and inclusive[f] > 0]
    root_sum = sum(inclusive[f] for f in roots)
    if root_sum <= 0:
        return
    scale = total / root_sum  # roots can double count recursion: scale them to the total
    floor = total * MIN_SHARE
    stack: list[tuple[tuple[FnKey, ...], float]] = [
        ((f,), inclusive[f] * scale) for f in sorted(roots)
    ]
    while stack:
        path, weight = stack.pop()
        f = path[-1]
        own = float(graph.own.get(f, 0))
        out = {
            g: float(c)
            for g, c in graph.edges.get(f, {}).items()
            if c > 0 and path.count(g) < MAX_REPEAT
        }
        whole = own + sum(out.values())
        if whole <= 0 or weight < floor or len(path) >= MAX_DEPTH:
            yield path, weight
            continue
        own_weight = weight * own / whole
        kept = 0.0
        for g, c in sorted(out.items()):
            share = weight * c / whole
            if share < floor:
                own_weight += share  # too small to draw apart: it stays here
                continue
            kept += share
            stack.append(((*path, g), share))
        if own_weight > 0:
            yield path, own_weight


def to_speedscope(graph: CallGraph, *, name: str, exporter: str) -> dict[str, Any]:
    """A sampled speedscope document, weights in instructions, passing our validation."""
    total = float(graph.total or sum(graph.own.values()))
    frames: list[dict[str, Any]] = []
    index: dict[FnKey, int] = {}
    samples: list[list[int]] = []
    weights: list[float] = []
    merged: dict[tuple[int, ...], int] = {}
    for path, weight in _expand(graph, total):
        ids = []
        for f in path:
            if f not in index:
                index[f] = len(frames)
                frame: dict[str, Any] = {"name": _display(*f)}
                where = graph.files.get(f) or f[1]
                if where and where != "???":
                    frame["file"] = where
                frames.append(frame)
            ids.append(index[f])
        stack = tuple(ids)
        if stack in merged:
            weights[merged[stack]] += weight
        else:
            merged[stack] = len(samples)
            samples.append(list(stack))
            weights.append(weight)
    if not samples:
        raise CallgrindError("the callgrind dump holds no instructions")
    # Whole instructions: round, then give the rounding dust to the heaviest stack.
    rounded = [max(1, round(w)) for w in weights]
    heaviest = max(range(len(rounded)), key=rounded.__getitem__)
    rounded[heaviest] = max(1, rounded[heaviest] + round(total) - sum(rounded))
    doc: dict[str, Any] = {
        "$schema": SCHEMA_URL,
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "sampled",
                "name": name,
                "unit": "none",
                "startValue": 0,
                "endValue": sum(rounded),
                "samples": samples,
                "weights": rounded,
            }
        ],
        "name": name,
        "activeProfileIndex": 0,
        "exporter": exporter,
    }
    problems = validate(doc)
    if problems:
        raise CallgrindError("converted profile is invalid: " + "; ".join(problems))
    return doc


def first_dump(out_file: Path) -> Path:
    """The first dump, of the counted calls (``<out>.1``)."""
    part = out_file.with_name(out_file.name + ".1")
    if not part.exists():
        raise CallgrindError(
            f"callgrind wrote no dump at the marker ({part.name}): the counted calls did not run"
        )
    return part


# -- running callgrind over the replayed calls ----------------------------------------------


@dataclass(frozen=True)
class InstructionProfile:
    path: Path
    calls: int
    lines: list[str]
    notes: list[str]


def callgrind_args(out_file: Path, bracket: bool = False) -> list[str]:
    """Bracketed (x86-64 Linux): collection starts off and client requests switch it on
    around each call only, as in the count. Otherwise two libc markers zero and dump.
    Instrumentation stays on from the start either way: callgrind needs the whole call
    stack to find the graph's roots."""
    from ..replay.counting import DUMP_MARKER, ZERO_MARKER

    where = (
        ["--collect-atstart=no"]
        if bracket
        else [f"--zero-before={ZERO_MARKER}", f"--dump-before={DUMP_MARKER}"]
    )
    return [
        "--tool=callgrind",
        f"--callgrind-out-file={out_file}",
        *where,
        "--dump-instr=no",  # speedscope's importer reads exactly one position column
    ]


def profile_instructions(
    *,
    valgrind: Any,
    snapshot_path: str | Path,
    target: str,
    store: str | Path,
    allow_unsigned: bool,
    warmup: int,
    calls: int,
    gc: str,
    out: Path,
    name: str,
    exporter: str,
    timeout: float,
    previous: Any | None = None,
    threshold: float = 0.02,
    top: int = 5,
    quicken: bool = False,
) -> InstructionProfile:
    """Profile ``calls`` replayed calls under callgrind into ``out`` (a speedscope file).

    ``previous`` is the last ledger entry in the same unit (``.profile``,
    ``.profile_calls``, ``.iteration``); its profile is diffed per call, exactly.
    ``quicken``: warmed up as the count was (:mod:`..replay.quicken`).
    """
    import json
    import tempfile
    from dataclasses import replace

    from ..replay.valgrind import (
        CountJob,
        bracket_available,
        bytecode_cache,
        parse_cachegrind,
        prewarm,
        run_under,
    )
    from ..snapshot.store import write_atomic
    from . import speedscope
    from .passes import DIFF_SUFFIX, sibling

    job = CountJob(
        snapshot_path=str(snapshot_path),
        store=str(store),
        allow_unsigned=allow_unsigned,
        target=target,
        import_roots=(),
        warmup=warmup,
        calls=calls,
        gc=gc,
        marker=True,
        children=1,
        method="bracket" if bracket_available() else "difference",
        pycache=bytecode_cache(),  # set up as the count's processes are: same heap state
        quicken=quicken and warmup > 0,
    )
    with tempfile.TemporaryDirectory(prefix="perfreplay-callgrind-") as tmp:
        job = replace(job, manifest=str(Path(tmp) / "children.json"))
        prewarm(job, pycache=job.pycache, workdir=Path(tmp), timeout=timeout)
        raw = Path(tmp) / "callgrind.out"
        args = callgrind_args(raw, bracket=job.method == "bracket")
        run_under(valgrind, args, job, workdir=Path(tmp), timeout=timeout, name="profile")
        graph = parse_callgrind(first_dump(raw).read_text(errors="replace"))
        noop = raw.with_name(raw.name + ".2")  # bracketed: the no-op loop, the overhead
        overhead = parse_cachegrind(noop).get("Ir", 0) if noop.exists() else 0
    doc = to_speedscope(graph, name=f"{name} ({calls} calls, callgrind)", exporter=exporter)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(doc, separators=(",", ":")).encode(), mode=0o644)
    summary = speedscope.summarize(doc, top=top)
    lines = [
        f"callgrind: {calls} calls, {(summary.total - overhead) / calls:,.0f} instructions "
        f"per call{' (less the no-op bracket)' if overhead else ''}; "
        f"{WHY_C_FRAMES}",
        *(line.replace("time)", "instructions)") for line in summary.table()),
    ]
    notes: list[str] = []
    old = Path(previous.profile) if previous is not None and previous.profile else None
    if previous is not None and old is not None and old.is_file() and previous.profile_calls:
        try:
            d = speedscope.diff(
                json.loads(old.read_text(encoding="utf-8")),
                doc,
                old_calls=int(previous.profile_calls),
                new_calls=calls,
                threshold=threshold,
                name=f"{name}: iteration {previous.iteration} -> now, instructions per call",
                exporter=exporter,
            )
        except (OSError, ValueError) as exc:
            notes.append(f"no profile diff against {old}: {exc}")
        else:
            diff_out = sibling(out, DIFF_SUFFIX)
            write_atomic(diff_out, json.dumps(d.document).encode(), mode=0o644)
            lines.append(
                f"vs iteration {previous.iteration}, instructions per call (exact): {d.headline()}"
            )
            lines += d.mover_lines(top)
            lines.append(f"diff: {diff_out} (before / after / grew / shrank)")
    return InstructionProfile(out, calls, lines, notes)
