"""Unit tests for pytest_perfreplay.profile.speedscope (pure functions, no browser)."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_perfreplay.profile import speedscope as S

SITE = "/venv/lib/python3.11/site-packages"
APP = "/srv/app/src/shop/orders.py"
LIB = f"{SITE}/requests/sessions.py"


def frame(name: str, file: str | None = APP, line: int | None = 1, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, **extra}
    if file is not None:
        out["file"] = file
    if line is not None:
        out["line"] = line
    return out


def sampled_doc(
    frames: list[dict[str, Any]],
    samples: list[list[int]],
    weights: list[float],
    *,
    unit: str = "seconds",
    name: str = "run",
    profile_name: str = "Thread 1",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "$schema": S.SCHEMA_URL,
        "name": name,
        "activeProfileIndex": 0,
        "exporter": "test",
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "sampled",
                "name": profile_name,
                "unit": unit,
                "startValue": 0,
                "endValue": sum(weights),
                "samples": samples,
                "weights": weights,
            }
        ],
        **extra,
    }


def evented_doc(frames: list[dict[str, Any]], events: list[tuple[str, float, int]], end: float):
    return {
        "$schema": S.SCHEMA_URL,
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "evented",
                "name": "evented",
                "unit": "milliseconds",
                "startValue": 0,
                "endValue": end,
                "events": [{"type": t, "at": at, "frame": f} for t, at, f in events],
            }
        ],
    }


def pyspy_like() -> dict[str, Any]:
    """Shaped like py-spy 0.4 output: per-line frames, col/activeProfileIndex null, 2 threads."""
    frames = [
        {"name": "<module>", "file": "/tmp/job/run.py", "line": 3, "col": None},
        {"name": "test_replay", "file": "/tmp/job/test_x.py", "line": 9, "col": None},
        {"name": "Orders.total", "file": APP, "line": 20, "col": None},
        {"name": "Orders.total", "file": APP, "line": 22, "col": None},  # same function
        {"name": "Session.send", "file": LIB, "line": 600, "col": None},
        {
            "name": "Thread.run",
            "file": "/usr/lib/python3.11/threading.py",
            "line": 975,
            "col": None,
        },
    ]
    doc = {
        "$schema": S.SCHEMA_URL,
        "activeProfileIndex": None,
        "exporter": "py-spy@0.4.3",
        "name": "py-spy profile",
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "sampled",
                "name": 'Thread 1 "MainThread"',
                "unit": "seconds",
                "startValue": 0.0,
                "endValue": 0.035,
                "samples": [[0, 1, 2], [0, 1, 3], [0, 1, 2, 4], [], [0], [0, 1, 3]],
                "weights": [0.005, 0.005, 0.01, 0.005, 0.005, 0.0],
            },
            {
                "type": "sampled",
                "name": 'Thread 2 "worker"',
                "unit": "seconds",
                "startValue": 0.0,
                "endValue": 0.01,
                "samples": [[5], [5, 4]],
                "weights": [0.005, 0.005],
            },
        ],
    }
    return doc


def total_weight(doc: dict[str, Any], profile: int | None = None) -> float:
    profiles = doc["profiles"] if profile is None else [doc["profiles"][profile]]
    return math.fsum(w for p in profiles for w in p["weights"])


def keys_of(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [S.function_key(f) for f in doc["shared"]["frames"]]


# ---------------------------------------------------------------------------------- identity


@pytest.mark.parametrize(
    ("path", "module"),
    [
        (f"{SITE}/requests/sessions.py", "requests.sessions"),
        ("/usr/lib/python3/dist-packages/yaml/__init__.py", "yaml"),
        ("/root/.pyenv/versions/3.11.7/lib/python3.11/collections/__init__.py", "collections"),
        ("/usr/lib/python3.13t/json/decoder.py", "json.decoder"),
        ("<frozen importlib._bootstrap>", "importlib._bootstrap"),
        ("<string>", "<string>"),
        ("/srv/app/src/shop/orders.py", "shop.orders"),
        ("/home/ci/checkout/shop/orders.py", "shop.orders"),  # same key from another checkout
        ("shop/orders.py", "shop.orders"),  # py-spy's short filenames
        ("C:\\venv\\Lib\\site-packages\\pkg\\mod.py", "pkg.mod"),
        ("/x/pkg/ext.pyx", "pkg.ext"),
        ("", ""),
        (None, ""),
    ],
)
def test_module_from_path(path: str | None, module: str) -> None:
    assert S.module_from_path(path) == module


def test_module_from_path_roots_give_full_dotted_name() -> None:
    path = "/work/proj/shop/billing/orders.py"
    assert S.module_from_path(path) == "billing.orders"
    assert S.module_from_path(path, roots=["/work", "/work/proj/"]) == "shop.billing.orders"


def test_function_key_ignores_line_and_checkout_location() -> None:
    a = {"name": "Orders.total", "file": "/a/shop/orders.py", "line": 20, "col": None}
    b = {"name": "Orders.total", "file": "/b/c/shop/orders.py", "line": 31}
    assert S.function_key(a) == S.function_key(b) == ("shop.orders", "Orders.total")


def test_function_key_strips_pyspy_name_suffix() -> None:
    assert S.function_key({"name": "Orders.total (shop/orders.py:22)"}) == (
        "shop.orders",
        "Orders.total",
    )
    suffixed = {"name": "Orders.total (orders.py:22)", "file": "/x/shop/orders.py"}
    assert S.function_key(suffixed) == ("shop.orders", "Orders.total")
    # a parenthesised name that is not a file reference is left alone
    assert S.function_key({"name": "run (idle)"}) == ("", "run (idle)")


def test_focus_on_forms() -> None:
    f = frame("Orders.total", APP)
    assert S.focus_on("Orders.total")(f)
    assert S.focus_on("Orders.total", "shop.orders")(f)
    assert S.focus_on("shop.orders:Orders.total")(f)
    # the derived module lacks the project's package prefix; still the same module
    assert S.focus_on("Orders.total", "company.shop.orders")(f)
    assert not S.focus_on("Orders.total", "shop.invoices")(f)
    assert not S.focus_on("Orders.tot")(f)
    # pyinstrument names nested functions by co_name only
    inner = frame("inner", APP)
    assert S.focus_on("outer.<locals>.inner", "shop.orders")(inner)
    assert not S.focus_on("outer.<locals>.inner")(inner)


# -------------------------------------------------------------------------------------- load


@pytest.mark.parametrize(
    "bad",
    [{"foo": 1}, [], [1, 2], "{}", b"{}", None, 3, {"profiles": []}, {"shared": {}}],
)
def test_load_rejects_foreign_input(bad: Any) -> None:
    with pytest.raises(S.SpeedscopeError):
        S.load(bad)


def test_load_speedscope_returns_independent_copy() -> None:
    doc = pyspy_like()
    before = copy.deepcopy(doc)
    loaded = S.load(doc)
    assert loaded == doc
    loaded["shared"]["frames"][0]["name"] = "changed"
    assert doc == before


def pyinstrument_session() -> dict[str, Any]:
    thread = "MainThread\x00<thread>\x00140"
    module = "<module>\x00/srv/app/src/shop/run.py\x001"
    total = "total\x00/srv/app/src/shop/orders.py\x0010\x01cOrders\x01l12"
    total_l14 = "total\x00/srv/app/src/shop/orders.py\x0010\x01cOrders\x01l14"
    genexpr = "<genexpr>\x00/srv/app/src/shop/orders.py\x0012\x01l12"
    send = f"send\x00{LIB}\x00600\x01cSession\x01l601"
    return {
        "start_time": 1.0,
        "duration": 0.01,
        "sample_count": 6,
        "target_description": "Profile at run.py:1",
        "frame_records": [
            [[thread, module, total], 0.002],
            [[thread, module, total_l14], 0.001],  # same function, other line: same stack
            [[thread, module, total, genexpr], 0.003],
            [[thread, module, total, send], 0.004],
            [[thread, module, total, send, "[self]"], 0.0005],
            [[thread, module, total, "[await]"], 0.0],  # zero time: no sample
        ],
    }


def test_load_pyinstrument_frame_records() -> None:
    doc = S.load(pyinstrument_session())
    assert S.validate(doc) == []
    assert [p["name"] for p in doc["profiles"]] == ["MainThread"]
    names = [f["name"] for f in doc["shared"]["frames"]]
    assert names == ["<module>", "Orders.total", "Orders.total.<locals>.<genexpr>", "Session.send"]
    assert "[self]" not in names
    profile = doc["profiles"][0]
    assert profile["unit"] == "seconds"
    # one sample per distinct stack; "[self]" time belongs to its parent
    assert profile["samples"] == [[0, 1], [0, 1, 2], [0, 1, 3]]
    assert profile["weights"] == pytest.approx([0.003, 0.003, 0.0045])
    assert total_weight(doc) == pytest.approx(0.0105)


def test_load_pyinstrument_frame_tree_matches_records() -> None:
    # pyinstrument's Frame JSON: identifier, time (inclusive), attributes, children
    tree = {
        "identifier": "<module>\x00/srv/app/src/shop/run.py\x001",
        "time": 0.010,
        "attributes": {},
        "children": [
            {
                "identifier": "total\x00/srv/app/src/shop/orders.py\x0010",
                "time": 0.010,
                "attributes": {"cOrders": 0.010, "l12": 0.006},
                "children": [
                    {
                        "identifier": "<genexpr>\x00/srv/app/src/shop/orders.py\x0012",
                        "time": 0.003,
                        "attributes": {},
                        "children": [],
                    },
                    {
                        "identifier": f"send\x00{LIB}\x00600",
                        "time": 0.004,
                        "self_time": 0.004,
                        "attributes": {"cSession": 0.004},
                        "children": [],
                    },
                ],
            }
        ],
    }
    doc = S.load({"root_frame": tree, "target_description": "tree"})
    assert S.validate(doc) == []
    assert total_weight(doc) == pytest.approx(0.010)
    stacks = {
        tuple(doc["shared"]["frames"][i]["name"] for i in s): w
        for s, w in zip(doc["profiles"][0]["samples"], doc["profiles"][0]["weights"], strict=True)
    }
    assert stacks == pytest.approx(
        {
            ("<module>", "Orders.total"): 0.003,
            ("<module>", "Orders.total", "Orders.total.<locals>.<genexpr>"): 0.003,
            ("<module>", "Orders.total", "Session.send"): 0.004,
        }
    )
    # a bare frame tree (no session wrapper) is accepted too
    assert S.load(tree)["profiles"][0]["weights"] == doc["profiles"][0]["weights"]


def test_load_pyinstrument_real_session() -> None:
    pyinstrument = pytest.importorskip("pyinstrument")

    def work() -> int:
        return sum(i * i for i in range(200_000))

    profiler = pyinstrument.Profiler(interval=0.001)
    with profiler:
        work()
    session = profiler.last_session
    assert session is not None
    as_json = json.loads(json.dumps(session.to_json()))
    doc = S.load(as_json)
    assert S.validate(doc) == []
    qualnames = {q for _, q in keys_of(doc)}
    assert any(q.endswith("work") for q in qualnames)
    # weights are seconds and add up to the session's sampled time
    recorded = sum(t for _, t in as_json["frame_records"])
    assert total_weight(doc) == pytest.approx(recorded, rel=1e-6)


@pytest.mark.parametrize(
    "records",
    [{"frame_records": "x"}, {"frame_records": [["a", 1.0]]}, {"frame_records": [[["a"], None]]}],
)
def test_load_rejects_malformed_pyinstrument(records: dict[str, Any]) -> None:
    with pytest.raises(S.SpeedscopeError, match="frame_records"):
        S.load(records)


# ---------------------------------------------------------------------------------- validate


def valid_sampled() -> dict[str, Any]:
    return sampled_doc([frame("a"), frame("b")], [[0], [0, 1]], [1.0, 2.0])


def valid_evented() -> dict[str, Any]:
    return evented_doc(
        [frame("a"), frame("b")], [("O", 0, 0), ("O", 1, 1), ("C", 3, 1), ("C", 4, 0)], 4
    )


def test_validate_accepts_valid_documents() -> None:
    assert S.validate(valid_sampled()) == []
    assert S.validate(valid_evented()) == []


def mutate(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    target: Any = doc
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        target[int(last)] = value
    elif value is KeyError:
        del target[last]
    else:
        target[last] = value
    return doc


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (mutate(valid_sampled(), "profiles.0.weights", [1.0]), "samples has 2 entries but weights"),
        (mutate(valid_sampled(), "profiles.0.weights.1", -2.0), "weights[1]: must be > 0"),
        (mutate(valid_sampled(), "profiles.0.weights.1", 0), "weights[1]: must be > 0"),
        (mutate(valid_sampled(), "profiles", []), "profiles: empty"),
        (mutate(valid_sampled(), "activeProfileIndex", None), "activeProfileIndex: must be an int"),
        (mutate(valid_sampled(), "activeProfileIndex", 1), "activeProfileIndex: 1 out of range"),
        (mutate(valid_sampled(), "$schema", KeyError), "$schema: missing"),
        (mutate(valid_sampled(), "shared.frames.0.col", None), "frames[0].col: must be a number"),
        (mutate(valid_sampled(), "shared.frames.0.file", None), "frames[0].file: must be a string"),
        (mutate(valid_sampled(), "shared.frames.0.name", None), "frames[0].name: must be a string"),
        (mutate(valid_sampled(), "profiles.0.samples.1", [0, 2]), "2 is not a frame index"),
        (mutate(valid_sampled(), "profiles.0.samples.1", [0, -1]), "-1 is not a frame index"),
        (mutate(valid_sampled(), "profiles.0.unit", "ticks"), "unit: must be one of"),
        (mutate(valid_sampled(), "profiles.0.type", "flame"), "type: must be 'sampled'"),
        (mutate(valid_sampled(), "profiles.0.name", None), "name: must be a string"),
        (mutate(valid_sampled(), "profiles.0.startValue", None), "startValue: must be a number"),
        (mutate(valid_sampled(), "profiles.0.startValue", 9), "startValue 9 > endValue"),
        (mutate(valid_sampled(), "shared", None), "shared: must be an object"),
        (mutate(valid_sampled(), "profiles.0.weights.0", True), "weights[0]: must be a number"),
        (mutate(valid_evented(), "profiles.0.events.2.at", 0.5), "events must be in non-decr"),
        (mutate(valid_evented(), "profiles.0.events.3.at", 5), "outside [startValue, endValue]"),
        (mutate(valid_evented(), "profiles.0.events.3.type", "O"), "opened but never closed"),
        (mutate(valid_evented(), "profiles.0.events.2.frame", 0), "events must nest"),
        (
            mutate(valid_evented(), "profiles.0.events", [{"type": "C", "at": 0, "frame": 0}]),
            "no frame is open",
        ),
        (mutate(valid_evented(), "profiles.0.events.0.frame", 7), "7 is not a frame index"),
        ([valid_sampled()], "document: expected a JSON object, got list"),
    ],
)
def test_validate_catches_each_rule(broken: Any, expected: str) -> None:
    problems = S.validate(broken)
    assert any(expected in p for p in problems), problems


def test_validate_caps_repeated_problems() -> None:
    frames = [{"name": f"f{i}", "col": None} for i in range(50)]
    problems = S.validate(sampled_doc(frames, [[0]], [1.0]))
    assert len(problems) == 4
    assert problems[-1] == "... and 47 more like 'frame.col'"


# --------------------------------------------------------------------------------- normalize


def test_normalize_pyspy_output() -> None:
    raw = pyspy_like()
    before = copy.deepcopy(raw)
    doc = S.normalize(raw, name="orders.total", exporter="pytest-perfreplay")
    assert raw == before  # input untouched
    assert S.validate(doc) == []
    assert doc["name"] == "orders.total"
    assert doc["exporter"] == "pytest-perfreplay"
    assert doc["activeProfileIndex"] == 0
    assert doc["$schema"] == S.SCHEMA_URL
    frames = doc["shared"]["frames"]
    # one frame per function: the two Orders.total lines became one, with the lowest line
    assert len(keys_of(doc)) == len(set(keys_of(doc))) == 5
    total = next(f for f in frames if f["name"] == "Orders.total")
    assert total == {"name": "Orders.total", "file": APP, "line": 20}
    assert all(v is not None for f in frames for v in f.values())
    main = doc["profiles"][0]
    # the empty stack and the zero weight are gone; adjacent equal stacks collapse
    assert all(main["samples"]) and all(w > 0 for w in main["weights"])
    assert total_weight(doc) == pytest.approx(0.040 - 0.005)  # minus the empty stack
    assert len(main["samples"]) == 3
    assert main["endValue"] == pytest.approx(sum(main["weights"]))


def test_normalize_focus_cuts_stack_at_outermost_match() -> None:
    frames = [
        frame("pytest_pyfunc_call", f"{SITE}/_pytest/python.py"),
        frame("replay", "/srv/app/src/pytest_perfreplay/replay.py"),
        frame("Orders.total", APP, 20),
        frame("Orders.total", APP, 25),  # recursion, another line
        frame("helper", APP, 40),
        frame("idle", APP, 50),
    ]
    doc = sampled_doc(
        frames,
        [[0, 1, 2, 4], [0, 1, 2, 3, 4], [0, 1, 5], [0, 1, 2]],
        [1.0, 2.0, 4.0, 8.0],
    )
    out = S.normalize(doc, name="n", exporter="e", focus=S.focus_on("shop.orders:Orders.total"))
    assert S.validate(out) == []
    names = [f["name"] for f in out["shared"]["frames"]]
    stacks = [[names[i] for i in s] for s in out["profiles"][0]["samples"]]
    assert stacks == [
        ["Orders.total", "helper"],
        ["Orders.total", "Orders.total", "helper"],  # recursion kept, cut at the OUTERMOST
        ["Orders.total"],
    ]
    assert out["profiles"][0]["weights"] == [1.0, 2.0, 8.0]  # "idle" sample dropped
    assert "pytest_pyfunc_call" not in names and "replay" not in names


def test_normalize_drops_threads_without_focus_and_fails_when_nothing_matches() -> None:
    out = S.normalize(pyspy_like(), name="n", exporter="e", focus=S.focus_on("Orders.total"))
    assert [p["name"] for p in out["profiles"]] == ['Thread 1 "MainThread"']
    with pytest.raises(S.SpeedscopeError, match="no sample matched the focus"):
        S.normalize(pyspy_like(), name="n", exporter="e", focus=S.focus_on("nope"))
    empty = sampled_doc([frame("a")], [[], [0]], [1.0, 0.0])
    with pytest.raises(S.SpeedscopeError, match="no samples"):
        S.normalize(empty, name="n", exporter="e")


def test_normalize_converts_evented_to_sampled() -> None:
    frames = [frame("main", APP, 1), frame("work", APP, 5), frame("work", APP, 7)]
    events = [
        ("O", 0, 0),
        ("O", 1, 1),
        ("C", 4, 1),  # work (line 5) 3 ms
        ("O", 4, 2),
        ("C", 6, 2),  # work (line 7) 2 ms right after: same function, same stack
        ("C", 10, 0),
    ]
    out = S.normalize(evented_doc(frames, events, 10), name="n", exporter="e")
    assert S.validate(out) == []
    profile = out["profiles"][0]
    assert profile["type"] == "sampled" and profile["unit"] == "milliseconds"
    names = [f["name"] for f in out["shared"]["frames"]]
    stacks = [[names[i] for i in s] for s in profile["samples"]]
    assert stacks == [["main"], ["main", "work"], ["main"]]
    assert profile["weights"] == [1.0, 5.0, 4.0]


def test_normalize_rejects_unreadable_documents() -> None:
    broken = mutate(valid_sampled(), "profiles.0.weights", [1.0])
    with pytest.raises(S.SpeedscopeError, match="samples has 2 entries"):
        S.normalize(broken, name="n", exporter="e")
    unbalanced = mutate(valid_evented(), "profiles.0.events.3.type", "O")
    with pytest.raises(S.SpeedscopeError, match="never closed"):
        S.normalize(unbalanced, name="n", exporter="e")


frame_st = st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b", "C.m", "f (x.py:3)"])},
    optional={
        "file": st.none() | st.sampled_from([APP, LIB, "<string>", "x.py"]),
        "line": st.none() | st.integers(0, 500),
        "col": st.none() | st.integers(0, 80),
    },
)


@st.composite
def messy_sampled_docs(draw: st.DrawFn) -> dict[str, Any]:
    frames = draw(st.lists(frame_st, min_size=1, max_size=8))
    n = len(frames)
    profiles = []
    for i in range(draw(st.integers(1, 3))):
        samples = draw(st.lists(st.lists(st.integers(0, n - 1), max_size=6), max_size=12))
        weights = draw(
            st.lists(
                st.floats(-1, 5, allow_nan=False) | st.just(0.0),
                min_size=len(samples),
                max_size=len(samples),
            )
        )
        profiles.append(
            {
                "type": "sampled",
                "name": f"t{i}",
                "unit": "seconds",
                "startValue": 0,
                "endValue": 1,
                "samples": samples,
                "weights": weights,
            }
        )
    return {
        "$schema": S.SCHEMA_URL,
        "activeProfileIndex": draw(st.none() | st.just(0)),
        "shared": {"frames": frames},
        "profiles": profiles,
    }


@settings(max_examples=200, deadline=None)
@given(messy_sampled_docs())
def test_normalize_output_always_valid_and_keeps_positive_weight(doc: dict[str, Any]) -> None:
    expected = math.fsum(
        w for p in doc["profiles"] for s, w in zip(p["samples"], p["weights"], strict=True)
        if s and w > 0
    )  # fmt: skip
    try:
        out = S.normalize(doc, name="n", exporter="e")
    except S.SpeedscopeError:
        assert expected == 0
        return
    assert S.validate(out) == []
    assert total_weight(out) == pytest.approx(expected)
    assert len(set(keys_of(out))) == len(keys_of(out))


# ------------------------------------------------------------------------------------- merge


def test_merge_keeps_total_weight_and_dedupes_frames() -> None:
    run1 = pyspy_like()
    run2 = sampled_doc(
        [frame("Orders.total", "/other/checkout/shop/orders.py", 99), frame("new_fn", APP, 3)],
        [[0], [0, 1]],
        [0.25, 0.5],
        name="second run",
        unit="milliseconds",
    )
    merged = S.merge([run1, run2], name="merged", exporter="e")
    assert S.validate(merged) == []
    names = [p["name"] for p in merged["profiles"]]
    assert names == [
        "all threads",
        'py-spy profile / Thread 1 "MainThread"',
        'py-spy profile / Thread 2 "worker"',
        "second run / Thread 1",
    ]
    assert {p["unit"] for p in merged["profiles"]} == {"seconds"}  # ms converted
    inputs = 0.025 + 0.010 + 0.00075
    assert total_weight(merged, 0) == pytest.approx(inputs)
    assert math.fsum(total_weight(merged, i) for i in range(1, 4)) == pytest.approx(inputs)
    assert total_weight(merged, 3) == pytest.approx(0.00075)
    # frames de-duplicated by function: Orders.total from both runs is one frame
    keys = keys_of(merged)
    assert len(keys) == len(set(keys))
    assert keys.count(("shop.orders", "Orders.total")) == 1
    expected_keys = {S.function_key(f) for f in run1["shared"]["frames"]} | {
        ("shop.orders", "new_fn")
    }
    assert set(keys) == expected_keys


def test_merge_round_trip_through_json() -> None:
    docs = [pyspy_like(), S.load(pyinstrument_session())]
    merged = S.merge(docs, name="m", exporter="e")
    again = S.load(json.loads(json.dumps(merged)))
    assert again == merged
    summary = S.summarize(again)  # counts "all threads" once, not twice
    assert summary.total == pytest.approx(0.025 + 0.010 + 0.0105)
    # merging a normalized copy changes nothing about the weights or frames
    renormalized = S.normalize(again, name="m", exporter="e")
    assert [total_weight(renormalized, i) for i in range(len(docs) + 2)] == pytest.approx(
        [total_weight(merged, i) for i in range(len(docs) + 2)]
    )
    assert keys_of(renormalized) == keys_of(merged)


def test_merge_of_a_merge_does_not_double_count() -> None:
    first = S.merge([pyspy_like(), valid_sampled()], name="first", exporter="e")
    again = S.merge([first, S.load(pyinstrument_session())], name="again", exporter="e")
    assert S.validate(again) == []
    assert total_weight(again, 0) == pytest.approx(total_weight(first, 0) + 0.0105)
    assert [p["name"] for p in again["profiles"]][1:] == [
        'first / py-spy profile / Thread 1 "MainThread"',
        'first / py-spy profile / Thread 2 "worker"',
        "first / run / Thread 1",
        "Profile at run.py:1 / MainThread",
    ]


def test_merge_errors() -> None:
    with pytest.raises(S.SpeedscopeError):
        S.merge([], name="m", exporter="e")
    time_doc = valid_sampled()
    bytes_doc = sampled_doc([frame("a")], [[0]], [100.0], unit="bytes")
    with pytest.raises(S.SpeedscopeError, match="units"):
        S.merge([time_doc, bytes_doc], name="m", exporter="e")


# --------------------------------------------------------------------------------- summarize


def test_summarize_shares_recursion_and_user_code() -> None:
    frames = [
        frame("main", APP),
        frame("walk", APP),
        frame("Session.send", LIB),
        frame("json.loads", "/usr/lib/python3.11/json/__init__.py"),
    ]
    doc = sampled_doc(
        frames,
        [[0, 1, 1, 1], [0, 1, 2], [0, 3], [0]],
        [4.0, 3.0, 2.0, 1.0],
    )
    summary = S.summarize(doc, top=2)
    assert summary.total == 10.0 and summary.unit == "seconds" and summary.samples == 4
    by_name = {r.function: r for r in summary.rows}
    assert by_name["walk"].self_share == pytest.approx(0.4)
    assert by_name["walk"].total_share == pytest.approx(0.7)  # recursion counted once
    assert by_name["main"].total_share == pytest.approx(1.0)
    assert [r.function for r in summary.by_self] == ["walk", "Session.send"]
    assert [r.function for r in summary.by_total] == ["main", "walk"]
    assert summary.flatness == pytest.approx(0.4)
    assert summary.user_share == pytest.approx(0.5)  # walk 4 + main 1
    assert summary.library_share == pytest.approx(0.5)
    assert not summary.is_flat
    text = "\n".join(summary.lines())
    assert "shop.orders:walk" in text and "40.0%" in text and "user code 50%" in text
    only_send = S.summarize(doc, is_user_code=lambda f: f["name"] == "Session.send")
    assert only_send.user_share == pytest.approx(0.3)


def test_summarize_flat_profile() -> None:
    frames = [frame(f"f{i}", APP) for i in range(20)]
    doc = sampled_doc(frames, [[i] for i in range(20)], [1.0] * 20)
    summary = S.summarize(doc)
    assert summary.flatness == pytest.approx(0.05)
    assert summary.is_flat
    assert "flat" in summary.lines()[0]


def test_format_weight() -> None:
    assert S.format_weight(0.0123, "seconds") == "12.3 ms"
    assert S.format_weight(1500, "microseconds") == "1.5 ms"
    assert S.format_weight(2.5, "seconds") == "2.5 s"
    assert S.format_weight(4.2e-8, "seconds") == "42 ns"
    assert S.format_weight(3 * 2**20, "bytes") == "3 MiB"
    assert S.format_weight(17, "none") == "17"


# -------------------------------------------------------------------------------------- diff


def loop_profile(calls: int, per_call: dict[str, float], noise: float = 0.0) -> dict[str, Any]:
    """What a profiler sees for `calls` replayed calls: test -> target -> {A, B} (+ self time)."""
    frames = [
        frame("test_perf", "/srv/app/tests/test_perf.py", 3),
        frame("target", APP, 10),
        frame("compute_a", APP, 20),
        frame("compute_b", APP, 30),
    ]
    stacks = {"target": [0, 1], "compute_a": [0, 1, 2], "compute_b": [0, 1, 3]}
    samples, weights = [], []
    for fn, seconds in per_call.items():
        samples.append(stacks[fn])
        weights.append(seconds * calls * (1 + noise))
    return sampled_doc(frames, samples, weights)


def test_diff_per_call_ignores_fixed_duration_loop() -> None:
    # Old: A 7.5 ms + B 2.5 ms per call, 100 calls in ~1 s. New: A 10x faster, B unchanged
    # (+1% sampling noise); the fixed-time loop now manages 400 calls, so B's RAW weight grows 4x.
    old = loop_profile(100, {"compute_a": 7.5e-3, "compute_b": 2.5e-3, "target": 0.1e-3})
    new = loop_profile(400, {"compute_a": 0.75e-3, "compute_b": 2.5e-3, "target": 0.1e-3}, 0.01)
    raw_b_old, raw_b_new = old["profiles"][0]["weights"][1], new["profiles"][0]["weights"][1]
    assert raw_b_new / raw_b_old > 3.9  # the naive comparison says "B got 4x slower"

    d = S.diff(old, new, old_calls=100, new_calls=400, name="d", exporter="e")
    rows = {r.function: r for r in d.rows}
    a, b = rows["compute_a"], rows["compute_b"]
    assert a.old_per_call == pytest.approx(7.5e-3)
    assert a.new_per_call == pytest.approx(0.75e-3 * 1.01)
    assert a.delta == pytest.approx(0.75e-3 * 1.01 - 7.5e-3)
    assert a.ratio == pytest.approx(0.101)
    # the noise floor is 2% of the larger per-call total, B's per-call move is far below it
    assert d.noise == pytest.approx(0.02 * 10.1e-3)
    assert abs(b.delta) < d.noise
    assert not b.moved and b not in d.grew and b not in d.shrank
    assert d.shrank[0].function == "compute_a" and d.shrank[0].moved
    assert d.grew == []
    assert d.rows[0] is a  # ranked by |delta|
    assert d.speedup == pytest.approx(10.1 / (3.35 * 1.01))
    text = "\n".join(d.lines())
    assert "shop.orders:compute_a" in text and "faster" in text
    assert "grew: nothing beyond the noise floor" in text

    doc = d.document
    assert S.validate(doc) == []
    assert [p["name"] for p in doc["profiles"]] == ["before", "after", "grew", "shrank"]
    before, after, grew, shrank = doc["profiles"]
    assert total_weight(doc, 0) == pytest.approx(10.1e-3)  # per call, not per run
    assert total_weight(doc, 1) == pytest.approx(3.35e-3 * 1.01)
    names = [f["name"] for f in doc["shared"]["frames"]]
    # "grew" is empty -> one placeholder sample so the app does not alert
    assert [[names[i] for i in s] for s in grew["samples"]] == [
        ["(nothing grew beyond the noise floor)"]
    ]
    assert grew["weights"] == [pytest.approx(d.noise)]
    # "shrank" is A's stack with A's per-call saving as a positive weight
    assert [[names[i] for i in s] for s in shrank["samples"]] == [
        ["test_perf", "target", "compute_a"]
    ]
    assert shrank["weights"] == [pytest.approx(-a.delta)]
    assert all(w > 0 for p in doc["profiles"] for w in p["weights"])


def test_diff_grew_and_new_function_and_threshold() -> None:
    old = loop_profile(10, {"compute_a": 1e-3, "target": 1e-3})
    new = loop_profile(10, {"compute_a": 1e-3, "compute_b": 0.5e-3, "target": 1.01e-3})
    d = S.diff(old, new, old_calls=10, new_calls=10, name="d", exporter="e")
    assert [r.function for r in d.grew] == ["compute_b"]
    assert d.grew[0].ratio is None  # new function
    assert rows_named(d, "target").moved is False  # +1% of per-call time < 2% threshold
    assert d.shrank == []
    assert "(nothing shrank beyond the noise floor)" in [
        f["name"] for f in d.document["shared"]["frames"]
    ]
    # a stricter threshold makes the 10 µs move count
    strict = S.diff(old, new, old_calls=10, new_calls=10, threshold=0.001, name="d", exporter="e")
    assert rows_named(strict, "target").moved
    assert S.validate(strict.document) == []


def rows_named(d: S.Diff, function: str) -> S.DiffRow:
    return next(r for r in d.rows if r.function == function)


def test_diff_identical_profiles_move_nothing_and_mixed_units() -> None:
    old = loop_profile(50, {"compute_a": 2e-3, "compute_b": 1e-3})
    new = copy.deepcopy(old)
    for p in new["profiles"]:
        p["unit"] = "milliseconds"
        p["weights"] = [w * 1000 for w in p["weights"]]
        p["endValue"] *= 1000
    d = S.diff(old, new, old_calls=50, new_calls=50, name="d", exporter="e")
    assert d.unit == "seconds"
    assert d.grew == [] and d.shrank == []
    assert all(abs(r.delta) < 1e-12 for r in d.rows)
    assert S.validate(d.document) == []


def test_diff_rejects_bad_call_counts_and_empty_input() -> None:
    doc = loop_profile(1, {"compute_a": 1e-3})
    with pytest.raises(S.SpeedscopeError):
        S.diff(doc, doc, old_calls=0, new_calls=1, name="d", exporter="e")
    with pytest.raises(S.SpeedscopeError):
        S.diff({"foo": 1}, doc, old_calls=1, new_calls=1, name="d", exporter="e")


# --------------------------------------------------------------------------- large-file I/O


@pytest.mark.parametrize(
    "text",
    [
        '{"samples": [[1,2],[3],[1,2]], "weights": [1, 2.5e-3, 0.01]}',
        '{"samples": [], "x": {"weights": [1, true]}}',
        '[{"samples":[[1, 2 ], [ ]], "weights":[0.1,0.2]}]',
        '{"name": "\\"samples\\": [[1]]", "samples": [[0]]}',
        '{"samples": [[1,-2]], "weights": [null]}',
        '{"samples": [[1.0, 2]], "weights": [1e400]}',
    ],
)
def test_parse_json_equals_json_loads(text: str) -> None:
    assert S.parse_json(text) == json.loads(text)


def test_parse_json_shares_repeated_stacks_and_dump_round_trips() -> None:
    frames = [frame(f"f{i}", APP, i) for i in range(3)]
    doc = sampled_doc(frames, [[0, 1], [0, 2], [0, 1]] * 5, [0.01] * 15)
    parsed = S.parse_json(json.dumps(doc))
    samples = parsed["profiles"][0]["samples"]
    assert samples[0] is samples[2]  # one list per distinct stack
    assert parsed == doc
    assert json.loads("".join(S.dump_chunks(parsed, chunk=4))) == doc
    merged = S.merge([parsed, parsed], name="m", exporter="e")
    assert json.loads("".join(S.dump_chunks(merged, chunk=4))) == json.loads(json.dumps(merged))


def test_summary_shares_never_print_minus_zero() -> None:
    # 1 - user share would be -1e-16 here and print "-0%"
    frames = [frame("f", APP, 1), frame("g", APP, 2)]
    doc = sampled_doc(frames, [[0], [0, 1]], [0.1, 0.2])
    summary = S.summarize(doc)
    assert summary.library_share == 0.0 and summary.user_share == pytest.approx(1.0)
    assert "libraries 0%" in summary.lines()[0]
    assert len(summary.lines()) == 2 + len(summary.by_self)  # one ranking by default
    assert len(summary.lines(by_total=True)) == 3 + 2 * len(summary.by_self)


def test_calls_in_name() -> None:
    assert S.calls_in_name({"name": "m:f [abc] (2048 calls, py-spy)"}) == 2048
    assert S.calls_in_name({"name": "m:f [abc] (1 call)"}) == 1
    assert S.calls_in_name({"name": "m:f [abc] (0 calls, py-spy)"}) is None
    assert S.calls_in_name({"name": "py-spy profile"}) is None
    assert S.calls_in_name({}) is None


def test_diff_scaled_to_timed_medians_ignores_profiler_overhead_jitter() -> None:
    # Identical code profiled twice: same shares, but the profiler's own overhead made the
    # second pass 25% slower per call. Timing (outside the profiler) says 10 ms both times.
    shares = {"compute_a": 7.5e-3, "compute_b": 2.5e-3, "target": 0.1e-3}
    old = loop_profile(100, shares)
    new = loop_profile(100, {k: v * 1.25 for k, v in shares.items()})
    raw = S.diff(old, new, old_calls=100, new_calls=100, name="d", exporter="e")
    assert raw.shrank == [] and {r.function for r in raw.grew} >= {"compute_a"}  # misleading

    scaled = S.diff(
        old,
        new,
        old_calls=100,
        new_calls=100,
        name="d",
        exporter="e",
        old_per_call=10e-3,
        new_per_call=10e-3,
    )
    assert scaled.old_total_per_call == pytest.approx(10e-3)
    assert scaled.new_total_per_call == pytest.approx(10e-3)
    assert scaled.grew == [] and scaled.shrank == []
    assert "profile shares at the timed medians" in scaled.headline()

    # A real change still shows: A 10x faster, timed 10.1 ms -> 3.35 ms.
    faster = loop_profile(100, {"compute_a": 0.75e-3, "compute_b": 2.5e-3, "target": 0.1e-3})
    real = S.diff(
        old,
        faster,
        old_calls=100,
        new_calls=100,
        name="d",
        exporter="e",
        old_per_call=10.1e-3,
        new_per_call=3.35e-3,
    )
    assert real.shrank[0].function == "compute_a"
    assert real.speedup == pytest.approx(10.1 / 3.35)
    assert S.validate(real.document) == []
