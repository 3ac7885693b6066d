"""Our speedscope output against the official schema and the real speedscope app.

Uses the fixtures of ``tests/speedscope_app.py``. Raw profiler output comes from real runs:
``py-spy record --format speedscope`` of a small script, and an in-process pyinstrument session.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_perfreplay.profile import speedscope as S

Validator = Callable[[Mapping[str, Any]], None]

SCRIPT = textwrap.dedent(
    """
    import threading, time

    def leaf(n):
        total = 0
        for i in range(n):
            total += i * i
        return total

    class Basket:
        def price(self):
            return sum(leaf(3000) for _ in range(20))

    def replayed_call():
        return Basket().price() + leaf(20000)

    def background():
        deadline = time.perf_counter() + 0.4
        while time.perf_counter() < deadline:
            leaf(5000)

    def main():
        worker = threading.Thread(target=background, name="background")
        worker.start()
        deadline = time.perf_counter() + 0.6
        while time.perf_counter() < deadline:
            replayed_call()
        worker.join()

    main()
    """
)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: failing instead of skipping)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def pyspy_raw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real `py-spy record -f speedscope` file of SCRIPT (two threads)."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        _unavailable("py-spy is not installed")
    assert py_spy is not None
    folder = tmp_path_factory.mktemp("pyspy")
    script = folder / "shop_script.py"
    script.write_text(SCRIPT, encoding="utf-8")
    out = folder / "raw.json"
    run = subprocess.run(
        [py_spy, "record", "-r", "200", "-f", "speedscope", "-o", str(out), "--"]
        + [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RUST_BACKTRACE": "0"},
    )
    # py-spy exits 0 on some failures and may leave nothing behind: check the file itself
    if run.returncode != 0 or not out.is_file():
        _unavailable(f"py-spy could not profile (ptrace not permitted?): {run.stderr[-500:]}")
    raw: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    assert raw["profiles"], "py-spy wrote no profiles"
    return raw


def _work_slow() -> int:
    return sum(i * i for i in range(60_000))


def _work_fast() -> int:
    return sum(i * i for i in range(6_000))


def _steady() -> int:
    return sum(i for i in range(10_000))


def replay_target(fast: bool) -> int:
    return (_work_fast() if fast else _work_slow()) + _steady()


def _pyinstrument_session(fast: bool, calls: int) -> dict[str, Any]:
    pyinstrument = pytest.importorskip("pyinstrument")
    profiler = pyinstrument.Profiler(interval=0.001)
    with profiler:
        for _ in range(calls):
            replay_target(fast)
    session: dict[str, Any] = json.loads(json.dumps(profiler.last_session.to_json()))
    return session


@pytest.fixture(scope="module")
def pyinstrument_sessions() -> tuple[dict[str, Any], dict[str, Any]]:
    """Real pyinstrument sessions: before (slow) and after (10x less work in one function)."""
    return _pyinstrument_session(False, 40), _pyinstrument_session(True, 40)


def schema_errors(schema: Mapping[str, Any], doc: Mapping[str, Any]) -> list[str]:
    import jsonschema  # type: ignore[import-untyped, unused-ignore]

    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def parse_app_weight(text: str) -> float:
    """The app's picker shows totals like '170.00ms', '1.20s', '850.00µs'; -> seconds."""
    m = re.fullmatch(r"([\d.]+)\s*(ns|µs|us|ms|s|min)", text.strip())
    assert m is not None, text
    scale = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0}[m.group(2)]
    return float(m.group(1)) * scale


def write(tmp_path: Path, name: str, doc: Mapping[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def focus_replayed_call(frame: Mapping[str, Any]) -> bool:
    return S.function_key(frame)[1] == "replayed_call"


# --------------------------------------------------------------------------- schema only


@pytest.mark.pyspy
def test_raw_pyspy_fails_schema_and_validate(
    pyspy_raw: dict[str, Any], speedscope_schema: dict[str, Any], assert_valid_speedscope: Validator
) -> None:
    errors = schema_errors(speedscope_schema, pyspy_raw)
    assert any(e.startswith("activeProfileIndex:") and "None" in e for e in errors), errors
    assert any(re.match(r"shared/frames/\d+/col: None", e) for e in errors), errors
    ours = S.validate(pyspy_raw)
    assert any("activeProfileIndex" in p for p in ours)
    assert any(".col: must be a number, got null" in p for p in ours)
    with pytest.raises(AssertionError, match="activeProfileIndex"):
        assert_valid_speedscope(pyspy_raw)


@pytest.mark.pyspy
def test_normalized_pyspy_passes_schema(
    pyspy_raw: dict[str, Any], assert_valid_speedscope: Validator
) -> None:
    doc = S.normalize(pyspy_raw, name="replay", exporter="pytest-perfreplay")
    assert_valid_speedscope(doc)
    keys = [S.function_key(f) for f in doc["shared"]["frames"]]
    assert len(keys) == len(set(keys))
    # py-spy split functions by line; normalized, each function is one frame
    raw_leaf = [f for f in pyspy_raw["shared"]["frames"] if f["name"] == "leaf"]
    assert len(raw_leaf) > 1
    assert [f["name"] for f in doc["shared"]["frames"]].count("leaf") == 1
    assert len(doc["profiles"]) == len(pyspy_raw["profiles"]) >= 2  # threads kept, no focus


def test_schema_fixture_is_the_official_one(speedscope_schema: dict[str, Any]) -> None:
    file_format = speedscope_schema["definitions"]["FileFormat.File"]
    assert file_format["properties"]["$schema"]["const"] == S.SCHEMA_URL
    assert speedscope_schema["$ref"] == "#/definitions/FileFormat.File"


def test_pyinstrument_renderer_output_needs_normalize(assert_valid_speedscope: Validator) -> None:
    pyinstrument = pytest.importorskip("pyinstrument")
    from pyinstrument.renderers import SpeedscopeRenderer

    profiler = pyinstrument.Profiler(interval=0.001)
    with profiler:
        for _ in range(20):
            replay_target(False)
    raw = json.loads(profiler.output(SpeedscopeRenderer()))
    assert raw["activeProfileIndex"] is None  # pyinstrument writes the same invalid nulls
    with pytest.raises(AssertionError):
        assert_valid_speedscope(raw)
    doc = S.normalize(raw, name="pyi", exporter="e", focus=S.focus_on("replay_target"))
    assert_valid_speedscope(doc)
    assert doc["profiles"][0]["type"] == "sampled"


# --------------------------------------------------------------------------- real app


@pytest.mark.browser
@pytest.mark.pyspy
def test_normalized_pyspy_loads_in_app(
    pyspy_raw: dict[str, Any],
    assert_valid_speedscope: Validator,
    speedscope_app: Any,
    tmp_path: Path,
) -> None:
    doc = S.normalize(
        pyspy_raw,
        name="shop_script replay",
        exporter="pytest-perfreplay",
        focus=focus_replayed_call,
    )
    assert_valid_speedscope(doc)
    # focus: a single profile (the main thread) whose stacks all start at replayed_call
    assert len(doc["profiles"]) == 1
    frames = doc["shared"]["frames"]
    assert {frames[s[0]]["name"] for s in doc["profiles"][0]["samples"]} == {"replayed_call"}
    assert not any(f["name"] in ("main", "<module>", "background") for f in frames)

    result = speedscope_app.load(write(tmp_path, "replay.speedscope.json", doc))
    result.assert_ok()
    assert result.title == "shop_script replay - speedscope"
    assert result.current_profile == (doc["profiles"][0]["name"], 1, 1)
    assert result.canvases >= 2  # flame chart drawn


@pytest.mark.browser
@pytest.mark.pyspy
def test_app_reads_our_weights_like_we_do(
    pyspy_raw: dict[str, Any], speedscope_app: Any, tmp_path: Path
) -> None:
    doc = S.normalize(pyspy_raw, name="threads", exporter="e")
    result = speedscope_app.load(write(tmp_path, "threads.json", doc))
    result.assert_ok()
    assert [name for name, _ in result.profiles] == [p["name"] for p in doc["profiles"]]
    for (_, shown), profile in zip(result.profiles, doc["profiles"], strict=True):
        assert parse_app_weight(shown) == pytest.approx(sum(profile["weights"]), rel=0.01)


@pytest.mark.browser
def test_pyinstrument_session_loads_in_app(
    pyinstrument_sessions: tuple[dict[str, Any], dict[str, Any]],
    assert_valid_speedscope: Validator,
    speedscope_app: Any,
    tmp_path: Path,
) -> None:
    session = pyinstrument_sessions[0]
    loaded = S.load(session)
    assert_valid_speedscope(loaded)
    doc = S.normalize(
        session, name="pyinstrument replay", exporter="e", focus=S.focus_on("replay_target")
    )
    assert_valid_speedscope(doc)
    names = {f["name"] for f in doc["shared"]["frames"]}
    assert {"replay_target", "_work_slow", "_steady"} <= names
    for candidate in (loaded, doc):
        result = speedscope_app.load(write(tmp_path, "pyi.json", candidate))
        result.assert_ok()
        assert result.title == f"{candidate['name']} - speedscope"


@pytest.mark.browser
@pytest.mark.pyspy
def test_merge_output_loads_in_app(
    pyspy_raw: dict[str, Any],
    pyinstrument_sessions: tuple[dict[str, Any], dict[str, Any]],
    assert_valid_speedscope: Validator,
    speedscope_app: Any,
    tmp_path: Path,
) -> None:
    merged = S.merge(
        [pyspy_raw, pyinstrument_sessions[0]], name="merged runs", exporter="pytest-perfreplay"
    )
    assert_valid_speedscope(merged)
    result = speedscope_app.load(write(tmp_path, "merged.json", merged))
    result.assert_ok()
    assert result.profile_count == len(merged["profiles"]) == 4
    assert result.current_profile == ("all threads", 1, 4)
    shown = parse_app_weight(result.profiles[0][1])
    assert shown == pytest.approx(sum(merged["profiles"][0]["weights"]), rel=0.01)


@pytest.mark.browser
def test_diff_document_loads_in_app(
    pyinstrument_sessions: tuple[dict[str, Any], dict[str, Any]],
    assert_valid_speedscope: Validator,
    speedscope_app: Any,
    tmp_path: Path,
) -> None:
    before, after = (
        S.normalize(s, name=n, exporter="e", focus=S.focus_on("replay_target"))
        for s, n in zip(pyinstrument_sessions, ("before", "after"), strict=True)
    )
    d = S.diff(before, after, old_calls=40, new_calls=40, name="diff", exporter="e")
    assert d.shrank and d.shrank[0].function.startswith("_work_slow")
    assert_valid_speedscope(d.document)
    result = speedscope_app.load(write(tmp_path, "diff.json", d.document))
    result.assert_ok()
    assert [name for name, _ in result.profiles] == ["before", "after", "grew", "shrank"]

    # nothing moved: "grew" and "shrank" hold a placeholder, and the app must not alert
    same = S.diff(before, before, old_calls=40, new_calls=40, name="same", exporter="e")
    assert same.grew == [] and same.shrank == []
    assert_valid_speedscope(same.document)
    result = speedscope_app.load(write(tmp_path, "same.json", same.document))
    result.assert_ok()
    assert result.profile_count == 4


@pytest.mark.browser
def test_constructed_outputs_load_in_app(
    assert_valid_speedscope: Validator, speedscope_app: Any, tmp_path: Path
) -> None:
    frames = [
        {"name": "run", "file": "/srv/app/shop/run.py", "line": 1, "col": None},
        {"name": "work", "file": "/srv/app/shop/run.py", "line": 5},
        {"name": "work", "file": "/srv/app/shop/run.py", "line": 9},
    ]
    evented = {
        "$schema": S.SCHEMA_URL,
        "activeProfileIndex": None,
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "evented",
                "name": "evented",
                "unit": "microseconds",
                "startValue": 0,
                "endValue": 10,
                "events": [
                    {"type": "O", "at": 0, "frame": 0},
                    {"type": "O", "at": 2, "frame": 1},
                    {"type": "C", "at": 5, "frame": 1},
                    {"type": "O", "at": 5, "frame": 2},
                    {"type": "C", "at": 8, "frame": 2},
                    {"type": "C", "at": 10, "frame": 0},
                ],
            }
        ],
    }
    doc = S.normalize(evented, name="from evented", exporter="e")
    assert_valid_speedscope(doc)
    result = speedscope_app.load(write(tmp_path, "evented.json", doc))
    result.assert_ok()
    assert result.title == "from evented - speedscope"


@pytest.mark.browser
@pytest.mark.parametrize(
    ("mutation", "reason"),
    [
        (lambda d: d["profiles"][0]["weights"].__setitem__(0, -1.0), "Something went wrong"),
        (lambda d: d["profiles"][0]["weights"].pop(), "Something went wrong"),
        (lambda d: d.__setitem__("profiles", []), "alert: Successfully imported profile, but"),
        (lambda d: d.__setitem__("$schema", "nope"), "alert: Unrecognized format"),
    ],
    ids=["negative-weight", "length-mismatch", "no-profiles", "not-speedscope"],
)
def test_app_loader_detects_failures(
    mutation: Callable[[dict[str, Any]], None], reason: str, speedscope_app: Any, tmp_path: Path
) -> None:
    """The loader must be able to say no: each of these breaks the real app."""
    frames = [{"name": "a", "file": "/x/a.py", "line": 1}, {"name": "b"}]
    doc = S.normalize(
        {
            "$schema": S.SCHEMA_URL,
            "shared": {"frames": frames},
            "profiles": [
                {
                    "type": "sampled",
                    "name": "p",
                    "unit": "seconds",
                    "startValue": 0,
                    "endValue": 3,
                    "samples": [[0], [0, 1]],
                    "weights": [1.0, 2.0],
                }
            ],
        },
        name="control",
        exporter="e",
    )
    speedscope_app.load(write(tmp_path, "control.json", doc)).assert_ok()
    mutation(doc)
    assert S.validate(doc) != []
    result = speedscope_app.load(write(tmp_path, "broken.json", doc))
    assert not result.ok, result.describe()
    assert reason in result.reason


# --------------------------------------------------------------------------- skip vs fail

MISSING_TOOL_TESTS = """
def test_schema(speedscope_schema):
    pass

def test_app(speedscope_app):
    pass
"""


@pytest.mark.parametrize("ci", ["", "true"])
def test_missing_tools_skip_locally_but_fail_under_ci(
    ci: str, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = str(Path(__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("PERFREPLAY_SPEEDSCOPE_DIR", str(pytester.path / "no-such-package"))
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile(MISSING_TOOL_TESTS)
    result = pytester.runpytest_subprocess("-p", "tests.speedscope_app", "-rsf")
    if ci:
        result.assert_outcomes(failed=0, errors=2)
        result.stdout.fnmatch_lines(["*npm install -g speedscope (CI=true: failing instead*"])
    else:
        result.assert_outcomes(skipped=2)
        result.stdout.fnmatch_lines(["*npm install -g speedscope*"])
