"""The profiling pass: in-process logic (pyinstrument, fallback, growth, diff against the previous
iteration) and real pytest sessions through ``pytester`` (py-spy, fallback, two iterations).
Every file the pass writes is checked against the official schema, and in the real app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_perfreplay.profile import speedscope as S
from pytest_perfreplay.profile.passes import (
    DIFF_SUFFIX,
    PassSettings,
    ProfileRequest,
    profile,
    run_profile_pass,
    sibling,
)
from pytest_perfreplay.profile.passes import _growth as growth
from pytest_perfreplay.profile.pyspy import PySpyError, PySpyOptions

Validator = Callable[[Mapping[str, Any]], None]


# ------------------------------------------------------------------------------------------
# in-process


def _inner(n: int) -> int:
    return sum(i * i for i in range(n))


def replayed(n: int) -> int:
    return _inner(n) + _inner(n // 10)


def request(profiler: str, *, min_samples: int = 100, exe: str | None = None) -> ProfileRequest:
    return ProfileRequest(
        profiler=profiler,
        rate=500,
        min_samples=min_samples,
        name="tests.test_profiling:replayed [abc]",
        exporter="pytest-perfreplay@test",
        focus=S.focus_on("replayed", __name__),
        is_async=False,
        pyspy=PySpyOptions(rate=500, executable=exe),
    )


def all_start_at(doc: Mapping[str, Any], name: str) -> bool:
    frames = doc["shared"]["frames"]
    return all(frames[s[0]]["name"] == name for p in doc["profiles"] for s in p["samples"])


def test_sibling_names() -> None:
    p = Path("/x/0002-abc.speedscope.json")
    assert sibling(p, DIFF_SUFFIX) == Path("/x/0002-abc.diff.speedscope.json")
    assert sibling(p, ".pyisession") == Path("/x/0002-abc.pyisession")


def test_growth_aims_past_the_target_within_bounds() -> None:
    assert growth(500, 1000) == 3  # 1.25 * 1000 / 500, rounded up
    assert growth(990, 1000) == 2  # always at least doubles
    assert growth(1, 1000) == 16  # never more than 16x at once
    assert growth(0, 1000) == 8


def test_pyinstrument_pass_grows_calls_until_enough_samples(
    tmp_path: Path, assert_valid_speedscope: Validator
) -> None:
    out = tmp_path / "t" / "0001-abc.speedscope.json"
    # A median of 1 s per call asks for 1 call; the real call takes ~1 ms, so it must grow.
    result = profile(lambda: replayed(20_000), 1.0, out, request("pyinstrument"))
    assert result.profiler == "pyinstrument" and result.attempts > 1 and result.calls > 1
    assert result.samples >= 100 and result.notes == ()
    doc = json.loads(out.read_text())
    assert doc == result.document
    assert (
        doc["name"] == f"tests.test_profiling:replayed [abc] ({result.calls} calls, pyinstrument)"
    )
    assert S.calls_in_name(doc) == result.calls
    assert_valid_speedscope(doc)
    assert all_start_at(doc, "replayed")
    assert {"_inner", "_inner.<locals>.<genexpr>"} <= {f["name"] for f in doc["shared"]["frames"]}
    assert sibling(out, ".pyisession").is_file()  # for pyinstrument's HTML view


def test_auto_falls_back_to_pyinstrument_when_pyspy_fails(tmp_path: Path) -> None:
    out = tmp_path / "0001-abc.speedscope.json"
    result = profile(lambda: replayed(20_000), 1e-3, out, request("auto", exe="/bin/false"))
    assert result.profiler == "pyinstrument"
    assert result.fallback_reason is not None
    assert result.fallback_reason.startswith(
        "py-spy unavailable, used pyinstrument instead: py-spy exited with 1 before sampling"
    )
    assert result.notes == (result.fallback_reason,)
    assert out.is_file()


def test_explicit_pyspy_does_not_fall_back(tmp_path: Path) -> None:
    with pytest.raises(PySpyError):
        profile(lambda: None, 1e-3, tmp_path / "p.json", request("py-spy", exe="/bin/false"))


def test_focus_that_matches_nothing_is_an_error_not_a_hang(tmp_path: Path) -> None:
    req = request("pyinstrument")
    req = ProfileRequest(**{**req.__dict__, "focus": S.focus_on("not_called", __name__)})
    with pytest.raises(RuntimeError, match="none under the replayed function"):
        profile(lambda: replayed(20_000), 1e-3, tmp_path / "p.json", req)


@dataclass
class FakeReplayer:
    n: int
    is_async: bool = False

    def fresh_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.n,), {}

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return replayed(*args, **kwargs)


def run_pass(tmp_path: Path, n: int, iteration: int, previous: Any = None, **settings: Any) -> Any:
    snapshot = SimpleNamespace(id="abc123", header=SimpleNamespace(target=f"{__name__}:replayed"))
    return run_profile_pass(
        FakeReplayer(n),
        replayed,
        snapshot,
        iteration=iteration,
        median=1e-3,
        settings=PassSettings(
            profiler="pyinstrument",
            rate=500,
            min_samples=200,
            profiles_dir=tmp_path / "profiles",
            **settings,
        ),
        previous=previous,
    )


def test_pass_summary_then_diff_against_the_previous_iteration(
    tmp_path: Path, assert_valid_speedscope: Validator
) -> None:
    first = run_pass(tmp_path, 40_000, 1)
    assert first.path == tmp_path / "profiles" / "tests.test_profiling-replayed" / (
        "0001-abc123.speedscope.json"
    )
    head, ranking_title, *rows = first.lines
    assert head.startswith(f"pyinstrument: {first.calls} calls, ")
    assert " per call; user code " in head and "top self share" in head
    assert "-0%" not in head
    assert ranking_title.split() == ["self", "total", "function", "(by", "self", "time)"]
    assert 1 <= len(rows) <= 5  # top five, one ranking
    assert first.diff_path is None

    # "Optimized": the same target doing a tenth of the work. previous = the ledger entry.
    entry = SimpleNamespace(iteration=1, profile=str(first.path), profile_calls=first.calls)
    second = run_pass(tmp_path, 4_000, 2, previous=entry)
    text = "\n".join(second.lines)
    assert "vs iteration 1, per call: before " in text and "faster" in text
    assert f"({first.calls} calls)" in text and f"({second.calls} calls)" in text
    assert second.diff_path == sibling(second.path, DIFF_SUFFIX)
    assert second.diff_path.is_file()
    assert f"diff: {second.diff_path}" in text or "diff: " in second.lines[-1]
    movers = [ln for ln in second.lines if ln.strip().startswith("-")]
    assert movers and "_inner" in movers[0]  # the function that got cheaper tops the list
    diff_doc = json.loads(second.diff_path.read_text())
    assert [p["name"] for p in diff_doc["profiles"]] == ["before", "after", "grew", "shrank"]
    for path in (first.path, second.path, second.diff_path):
        assert_valid_speedscope(json.loads(path.read_text()))

    # calls from the profile's name when the ledger entry has none
    no_calls = SimpleNamespace(iteration=1, profile=str(first.path), profile_calls=None)
    third = run_pass(tmp_path, 4_000, 3, previous=no_calls)
    assert third.diff_path is not None and third.notes == []


def test_pass_notes_a_missing_previous_profile_and_never_raises(tmp_path: Path) -> None:
    gone = SimpleNamespace(iteration=1, profile=str(tmp_path / "gone.json"), profile_calls=3)
    outcome = run_pass(tmp_path, 4_000, 2, previous=gone)
    assert outcome.path is not None and outcome.diff_path is None
    assert outcome.notes == [f"no diff: the iteration 1 profile {tmp_path / 'gone.json'} is gone"]

    failing = run_pass(tmp_path, 4_000, 3, pyspy_executable="/bin/false")
    assert failing.path is not None  # profiler="pyinstrument": py-spy is not even tried

    broken = run_profile_pass(
        SimpleNamespace(is_async=False, fresh_args=lambda: ((), {}), call=lambda a, k: None),
        replayed,
        SimpleNamespace(id="x", header=SimpleNamespace(target="m:replayed")),
        iteration=1,
        median=1e-3,
        settings=PassSettings("py-spy", 500, 100, tmp_path, pyspy_executable="/bin/false"),
    )
    assert broken.path is None and broken.notes[0].startswith("profiling failed: py-spy exited")


def test_settings_pass_pyspy_options_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERFREPLAY_PYSPY", "/opt/py-spy")
    monkeypatch.setenv("PERFREPLAY_PROFILE_RAW", "1")
    settings = PassSettings("auto", 250, 10, Path("."), native=True, idle=True, nonblocking=True)
    opts = settings.pyspy_options()
    assert (opts.rate, opts.native, opts.gil, opts.idle, opts.nonblocking) == (
        250,
        True,
        False,
        True,
        True,
    )
    assert opts.executable == "/opt/py-spy" and settings.keep_raw_output
    explicit = PassSettings("auto", 1, 1, Path("."), pyspy_executable="/x", keep_raw=False)
    assert explicit.pyspy_options().executable == "/x" and not explicit.keep_raw_output


# ------------------------------------------------------------------------------------------
# real pytest sessions

SERVICE = """
from pytest_perfreplay import capture


def _mix(value):
    return (value * 2654435761) % 4294967296


@capture
def crunch(values):
    total = 0
    for v in values:
        total = (total + _mix(v)) % 1_000_003
    return total
"""

TRAFFIC = "import svc\nsvc.crunch(list(range(30_000)))\n"


def capture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(svc=SERVICE, traffic=TRAFFIC)
    pytester.makeini("[pytest]\npythonpath = .\n")
    env = dict(os.environ, PERFREPLAY_CAPTURE="1", PERFREPLAY_STORE=".perfreplay")
    subprocess.run(
        [sys.executable, "traffic.py"], cwd=pytester.path, env=env, check=True, timeout=120
    )


def replay(pytester: pytest.Pytester, profiler: str, *extra: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--perf-replay",
        f"--perf-replay-profile={profiler}",
        "--perf-replay-max-time=1",
        "--perf-replay-profile-samples=300",
        "-p",
        "no:cacheprovider",
        *extra,
    )


def profiles(pytester: pytest.Pytester, pattern: str) -> list[Path]:
    return sorted((pytester.path / ".perfreplay" / "profiles").glob(f"svc-crunch/{pattern}"))


def stack_names(doc: Mapping[str, Any], stack: list[int]) -> list[str]:
    return [doc["shared"]["frames"][i]["name"] for i in stack]


@pytest.mark.pyspy
@pytest.mark.browser
def test_real_pyspy_pass_in_a_real_session(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    real_pyspy: str,
    assert_valid_speedscope: Validator,
    speedscope_app: Any,
) -> None:
    capture(pytester)
    monkeypatch.setenv("PERFREPLAY_PROFILE_RAW", "1")  # keep py-spy's own output to check it
    result = replay(pytester, "py-spy")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*profile: .perfreplay/profiles/svc-crunch/0001-*.speedscope.json",
            "*py-spy: * calls, * samples at 500 Hz, * per call; user code *",
            "*self  total  function (by self time)",
            "*svc:crunch",
        ]
    )
    result.stdout.no_fnmatch_line("*py-spy unavailable*")
    (path,) = profiles(pytester, "0001-*.speedscope.json")
    doc = json.loads(path.read_text())
    assert_valid_speedscope(doc)
    assert doc["name"].endswith(" calls, py-spy)")
    # focused: every sample starts at the replayed function, and the helper sits below it
    assert all_start_at(doc, "crunch")
    names = {f["name"] for f in doc["shared"]["frames"]}
    files = [f.get("file", "") for f in doc["shared"]["frames"]]
    assert "_mix" in names and not any("/_pytest/" in f or "/pluggy/" in f for f in files)

    (raw_path,) = profiles(pytester, "0001-*.pyspy-raw.json")
    raw = json.loads(raw_path.read_text())
    assert S.validate(raw) != []  # py-spy's own output fails the schema; ours does not
    # In py-spy's raw output: the thread that ran the calls spent >= 95% of its samples under
    # the replayed frame (the pass attaches only around the calls), and pytest was running
    # the test item, never collecting.
    stacks = [
        (stack_names(raw, s), w)
        for p in raw["profiles"]
        for s, w in zip(p["samples"], p["weights"], strict=True)
    ]
    thread = [(names, w) for names, w in stacks if "pytest_runtest_call" in names]
    assert thread, "the replay ran inside pytest's runtest hook"
    under = sum(w for names, w in thread if "crunch" in names)
    assert under / sum(w for _, w in thread) >= 0.95
    assert not any(
        name in ("pytest_collection", "perform_collect", "pytest_collect_file")
        for names, _ in stacks
        for name in names
    )

    # Iteration 2: a diff against iteration 1, written next to the profile.
    second = replay(pytester, "py-spy")
    second.assert_outcomes(passed=1)
    second.stdout.fnmatch_lines(
        [
            "*vs iteration 1, per call: before * calls), after * calls)*noise floor*",
            "*diff: .perfreplay/profiles/svc-crunch/0002-*.diff.speedscope.json*",
        ]
    )
    (profile2,) = [
        p for p in profiles(pytester, "0002-*.speedscope.json") if ".diff." not in p.name
    ]
    (diff_path,) = profiles(pytester, "0002-*.diff.speedscope.json")
    for written in (path, profile2, diff_path):
        assert_valid_speedscope(json.loads(written.read_text()))
        speedscope_app.load(written).assert_ok()


@pytest.mark.browser
def test_fallback_when_pyspy_fails_for_real(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    assert_valid_speedscope: Validator,
    speedscope_app: Any,
) -> None:
    capture(pytester)
    monkeypatch.setenv("PERFREPLAY_PYSPY", "/bin/false")  # exits 1 before the ready line
    result = replay(pytester, "auto")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*note: py-spy unavailable, used pyinstrument instead: py-spy exited with 1 before "
            "sampling*",
            "*profile: .perfreplay/profiles/svc-crunch/0001-*.speedscope.json",
            "*pyinstrument: * calls, * samples at 500 Hz*",
        ]
    )
    (path,) = profiles(pytester, "0001-*.speedscope.json")
    doc = json.loads(path.read_text())
    assert_valid_speedscope(doc)
    assert all_start_at(doc, "crunch")
    speedscope_app.load(path).assert_ok()
    assert profiles(pytester, "0001-*.pyisession")  # pyinstrument's HTML view is on offer


def test_explicit_pyspy_failure_is_reported_not_raised(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture(pytester)
    monkeypatch.setenv("PERFREPLAY_PYSPY", "/bin/false")
    result = replay(pytester, "py-spy")
    result.assert_outcomes(passed=1)  # the timing stands; only the profile is missing
    result.stdout.fnmatch_lines(["*note: profiling failed: py-spy exited with 1 before sampling*"])
    assert profiles(pytester, "*.speedscope.json") == []


@pytest.mark.browser
def test_pyinstrument_pass_and_diff_in_real_sessions(
    pytester: pytest.Pytester, assert_valid_speedscope: Validator, speedscope_app: Any
) -> None:
    capture(pytester)
    replay(pytester, "pyinstrument").assert_outcomes(passed=1)
    second = replay(pytester, "pyinstrument")
    second.assert_outcomes(passed=1)
    second.stdout.fnmatch_lines(["*pyinstrument: * calls*", "*vs iteration 1, per call:*"])
    written = profiles(pytester, "*.speedscope.json")
    assert [p.name.split("-", 1)[0] for p in written] == ["0001", "0002", "0002"]
    for path in written:
        assert_valid_speedscope(json.loads(path.read_text()))
        speedscope_app.load(path).assert_ok()


def test_pyspy_flags_reach_pyspy(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture(pytester)
    log = pytester.path / "argv.txt"
    fake = pytester.path / "fake-py-spy"
    fake.write_text(f'#!/bin/sh\necho "$@" > {log}\nexit 3\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PERFREPLAY_PYSPY", str(fake))
    result = replay(
        pytester,
        "auto",
        "--perf-replay-profile-rate=250",
        "--perf-replay-profile-native",
        "--perf-replay-profile-gil",
        "--perf-replay-profile-idle",
        "--perf-replay-profile-nonblocking",
    )
    result.assert_outcomes(passed=1)
    argv = log.read_text().split()
    assert argv[:3] == ["record", "--pid", argv[2]] and argv[2].isdigit()
    for flag in ("--native", "--gil", "--idle", "--nonblocking"):
        assert flag in argv
    assert argv[argv.index("--rate") + 1] == "250"
    result.stdout.fnmatch_lines(["*py-spy unavailable, used pyinstrument instead*exited with 3*"])
