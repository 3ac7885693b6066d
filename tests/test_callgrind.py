"""callgrind -> speedscope: parsing with name compression, the graph-to-tree expansion,
and validity. The real callgrind run and the speedscope app are exercised in
``test_deterministic_valgrind.py``."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from pytest_perfreplay.profile import speedscope
from pytest_perfreplay.profile.callgrind import (
    CallgrindError,
    parse_callgrind,
    to_speedscope,
)

# main (10 own) calls work twice (inclusive 300) and log once (inclusive 40);
# work (100 own) calls hash (200 inclusive; hash's own 200); log is 40 own.
DUMP = """\
# callgrind format
version: 1
positions: line
events: Ir
summary: 350

ob=(1) /usr/bin/python3.11
fl=(1) main.c
fn=(1) main
10 10
cfl=(2) work.c
cfn=(2) work
calls=2 0
12 300
cfn=(3) log
calls=1 0
13 40

fl=(2)
fn=(2)
20 100
cob=(2) /lib/libc.so.6
cfl=(3) hash.c
cfn=(4) hash
calls=5 0
21 200

ob=(2)
fl=(3)
fn=(4)
+1 150
+2 50

ob=(1)
fl=(1)
fn=(3)
30 40
"""


def self_by_name(doc: dict[str, Any]) -> Counter[str]:
    frames = doc["shared"]["frames"]
    profile = doc["profiles"][0]
    out: Counter[str] = Counter()
    for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
        out[frames[stack[-1]]["name"]] += weight
    return out


def test_parse_resolves_compressed_names_objects_and_call_edges() -> None:
    graph = parse_callgrind(DUMP)
    assert graph.total == 350 and graph.events == ["Ir"]
    own = {name: cost for (name, _), cost in graph.own.items()}
    assert own == {"main": 10, "work": 100, "hash": 200, "log": 40}
    main = ("main", "/usr/bin/python3.11")
    work = ("work", "/usr/bin/python3.11")
    hash_ = ("hash", "/lib/libc.so.6")
    assert graph.edges[main] == {work: 300, ("log", "/usr/bin/python3.11"): 40}
    assert graph.edges[work] == {hash_: 200}
    assert graph.calls[(main, work)] == 2
    assert graph.files[hash_] == "hash.c"


def test_tree_keeps_every_instruction_and_the_exact_self_counts() -> None:
    doc = to_speedscope(parse_callgrind(DUMP), name="svc:work (2 calls, callgrind)", exporter="t")
    assert speedscope.validate(doc) == []
    profile = doc["profiles"][0]
    assert profile["unit"] == "none" and sum(profile["weights"]) == 350
    assert self_by_name(doc) == {"main": 10, "work": 100, "hash": 200, "log": 40}
    names = [f["name"] for f in doc["shared"]["frames"]]
    stacks = {tuple(names[i] for i in s) for s in profile["samples"]}
    assert ("main", "work", "hash") in stacks
    assert speedscope.calls_in_name(doc) == 2


def test_recursion_is_expanded_a_bounded_number_of_times() -> None:
    # f calls itself; callgrind names the inner level f'2. Both display as f.
    dump = (
        "events: Ir\nsummary: 100\nob=(1) x\nfl=(1) f.c\nfn=(1) f\n1 10\ncfn=(2) f'2\n"
        "calls=1 0\n2 90\nfn=(2)\n1 60\ncfn=(2)\ncalls=3 0\n2 30\n"
    )
    doc = to_speedscope(parse_callgrind(dump), name="r (1 calls, callgrind)", exporter="t")
    assert speedscope.validate(doc) == []
    assert sum(doc["profiles"][0]["weights"]) == 100
    assert set(self_by_name(doc)) == {"f"}
    depth = max(len(s) for s in doc["profiles"][0]["samples"])
    assert 2 < depth <= 6


def test_unnamed_code_is_shown_by_its_object() -> None:
    dump = "events: Ir\nsummary: 5\nob=(1) /usr/lib/libz.so.1\nfn=(1) 0x0000000000001234\n1 5\n"
    doc = to_speedscope(parse_callgrind(dump), name="z (1 calls, callgrind)", exporter="t")
    assert doc["shared"]["frames"][0]["name"] == "??? [libz.so.1]"


def test_refuses_instruction_level_dumps_and_non_callgrind_files() -> None:
    with pytest.raises(CallgrindError, match="without --dump-instr=yes"):
        parse_callgrind("positions: instr line\nevents: Ir\nfn=f\n0x1 1 5\n")
    with pytest.raises(CallgrindError, match="not a callgrind file"):
        parse_callgrind("hello\n")
    with pytest.raises(CallgrindError, match="no instructions"):
        to_speedscope(parse_callgrind("events: Ir\nsummary: 0\n"), name="e", exporter="t")


def test_instruction_profiles_diff_exactly_per_call() -> None:
    old = to_speedscope(parse_callgrind(DUMP), name="a (2 calls, callgrind)", exporter="t")
    faster = (
        DUMP.replace("+1 150", "+1 50")
        .replace("21 200", "21 100")
        .replace("summary: 350", "summary: 250")
    )
    faster = faster.replace("12 300", "12 200")
    new = to_speedscope(parse_callgrind(faster), name="b (2 calls, callgrind)", exporter="t")
    d = speedscope.diff(old, new, old_calls=2, new_calls=2, threshold=0.01, name="d", exporter="t")
    assert d.old_total_per_call == 175 and d.new_total_per_call == 125
    assert [(r.function, r.delta) for r in d.shrank] == [("hash", -50.0)]
    assert not d.grew
    assert speedscope.validate(d.document) == []
