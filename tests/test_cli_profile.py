"""``perfreplay profile summary|diff|merge`` and ``perfreplay open`` on constructed profiles;
what they write is checked against the official schema and in the real app."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_perfreplay.cli import main
from pytest_perfreplay.profile import speedscope as S

Validator = Callable[[Mapping[str, Any]], None]
APP = "/srv/app/shop/orders.py"


def profile_doc(name: str, calls: int, per_call: dict[str, float]) -> dict[str, Any]:
    """What the profiling pass writes for ``calls`` calls: target -> {compute_a, compute_b}."""
    frames = [
        {"name": "target", "file": APP, "line": 10},
        {"name": "compute_a", "file": APP, "line": 20},
        {"name": "compute_b", "file": APP, "line": 30},
        {"name": "Counter.update", "file": "/usr/lib/python3.11/collections/__init__.py"},
    ]
    stacks = {"target": [0], "compute_a": [0, 1], "compute_b": [0, 2], "lib": [0, 2, 3]}
    samples = [stacks[f] for f in per_call]
    weights = [w * calls for w in per_call.values()]
    return {
        "$schema": S.SCHEMA_URL,
        "name": f"{name} ({calls} calls, py-spy)",
        "exporter": "test",
        "activeProfileIndex": 0,
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "sampled",
                "name": "MainThread",
                "unit": "seconds",
                "startValue": 0,
                "endValue": sum(weights),
                "samples": samples,
                "weights": weights,
            }
        ],
    }


@pytest.fixture
def two_iterations(tmp_path: Path) -> tuple[Path, Path]:
    # compute_a 10x faster; compute_b unchanged; the fixed-time loop managed 4x the calls.
    old = profile_doc("shop.orders:target [s1]", 100, {"compute_a": 7.5e-3, "compute_b": 2.5e-3})
    new = profile_doc("shop.orders:target [s1]", 400, {"compute_a": 0.75e-3, "compute_b": 2.5e-3})
    paths = tmp_path / "0001-s1.speedscope.json", tmp_path / "0002-s1.speedscope.json"
    for path, doc in zip(paths, (old, new), strict=True):
        path.write_text(json.dumps(doc))
    return paths


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_summary(capsys: pytest.CaptureFixture[str], two_iterations: tuple[Path, Path]) -> None:
    code, out, _ = run(capsys, "profile", "summary", str(two_iterations[0]), "--top", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[1] == "100 replayed calls, 10 ms per call"
    assert lines[2].startswith("profile: 1 s sampled; user code 100%, libraries 0%;")
    assert "(by self time)" in lines[3] and "shop.orders:compute_a" in lines[4]
    assert "(by total time)" in lines[6] and "shop.orders:target" in lines[7]


def test_summary_focus_and_errors(
    capsys: pytest.CaptureFixture[str], two_iterations: tuple[Path, Path], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "profile", "summary", str(two_iterations[0]), "--focus", "compute_b")
    assert code == 0 and "compute_a" not in out and "100.0% 100.0%" in out
    (tmp_path / "bad.json").write_text("[1]")
    code, _, err = run(capsys, "profile", "summary", str(tmp_path / "bad.json"))
    assert code == 2 and "expected a JSON object, got list" in err
    code, _, err = run(capsys, "profile", "summary", str(tmp_path / "none.json"))
    assert code == 2 and "none.json: no such file" in err


def test_diff_reads_calls_from_names_and_writes_the_document(
    capsys: pytest.CaptureFixture[str],
    two_iterations: tuple[Path, Path],
    tmp_path: Path,
    assert_valid_speedscope: Validator,
) -> None:
    old, new = map(str, two_iterations)
    out_path = tmp_path / "out" / "diff.speedscope.json"
    code, out, _ = run(capsys, "profile", "diff", old, new, "-o", str(out_path))
    assert code == 0
    assert "per call: before 10 ms (100 calls), after 3.25 ms (400 calls) (3.08x faster)" in out
    shrank = out.split("  shrank:", 1)[1].splitlines()[1]
    assert "shop.orders:compute_a" in shrank and "(0.10x)" in shrank  # tops "shrank"
    assert "grew: nothing beyond the noise floor" in out  # compute_b did not move per call
    doc = json.loads(out_path.read_text())
    assert_valid_speedscope(doc)
    assert [p["name"] for p in doc["profiles"]] == ["before", "after", "grew", "shrank"]

    # flags win over the names: claiming equal call counts makes compute_b look 4x slower
    code, out, _ = run(capsys, "profile", "diff", old, new, "--old-calls", "1", "--new-calls", "1")
    assert code == 0 and "compute_b" in out.split("  grew:", 1)[1]


def test_diff_without_call_counts_says_what_to_pass(
    capsys: pytest.CaptureFixture[str], two_iterations: tuple[Path, Path], tmp_path: Path
) -> None:
    doc = json.loads(two_iterations[0].read_text())
    doc["name"] = "someone else's profile"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(doc))
    code, _, err = run(capsys, "profile", "diff", str(other), str(two_iterations[1]))
    assert code == 2
    assert "its name does not say how many calls it profiled" in err and "--old-calls N" in err
    with pytest.raises(SystemExit):
        main(["profile", "diff", "a", "b", "--old-calls", "0"])
    assert "'0' is not a positive integer" in capsys.readouterr().err


def test_merge_round_trip(
    capsys: pytest.CaptureFixture[str],
    two_iterations: tuple[Path, Path],
    tmp_path: Path,
    assert_valid_speedscope: Validator,
) -> None:
    out_path = tmp_path / "merged.speedscope.json"
    code, out, _ = run(capsys, "profile", "merge", *map(str, two_iterations), "-o", str(out_path))
    assert code == 0 and out.startswith(f"wrote {out_path}: 2 file(s), 2 profile(s)")
    merged = json.loads(out_path.read_text())
    assert_valid_speedscope(merged)
    inputs = [json.loads(p.read_text()) for p in two_iterations]
    total_in = sum(sum(p["weights"]) for d in inputs for p in d["profiles"])
    assert sum(merged["profiles"][0]["weights"]) == pytest.approx(total_in)
    keys = [S.function_key(f) for f in merged["shared"]["frames"]]
    assert len(keys) == len(set(keys))
    assert merged["profiles"][0]["name"] == "all threads"


def test_open_prints_a_url_that_loads_in_the_app(
    capsys: pytest.CaptureFixture[str],
    two_iterations: tuple[Path, Path],
    speedscope_app: Any,
) -> None:
    code, out, _ = run(capsys, "open", "--print-url", str(two_iterations[1]))
    assert code == 0
    url = out.strip()
    assert url.startswith("file://") and "/dist/release/index.html#localProfilePath=" in url
    speedscope_app.load_url(url).assert_ok()


def test_open_without_the_app_explains(
    capsys: pytest.CaptureFixture[str],
    two_iterations: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("PERFREPLAY_SPEEDSCOPE_DIR", str(tmp_path / "no-speedscope"))
    code, out, _ = run(capsys, "open", str(two_iterations[1]))
    assert code == 0
    assert "npm install -g speedscope" in out and "https://www.speedscope.app" in out
    assert "pyinstrument" not in out  # no session next to this profile
    code, _, _ = run(capsys, "open", "--print-url", str(two_iterations[1]))
    assert code == 1  # nothing to print


def test_open_offers_pyinstrument_html(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.001)
    with profiler:
        sum(i * i for i in range(200_000))
    assert profiler.last_session is not None
    profiler.last_session.save(str(tmp_path / "0001-s.pyisession"))
    path = tmp_path / "0001-s.speedscope.json"
    path.write_text(json.dumps(S.load(profiler.last_session.to_json())))
    monkeypatch.setenv("PERFREPLAY_SPEEDSCOPE_DIR", str(tmp_path / "no-speedscope"))
    code, out, _ = run(capsys, "open", str(path))
    assert code == 0 and f"perfreplay open --html {path}" in out
    code, out, _ = run(capsys, "open", "--html", "--print-url", str(path))
    assert code == 0 and out.strip() == (tmp_path / "0001-s.html").as_uri()
    assert "<html" in (tmp_path / "0001-s.html").read_text().lower()


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["profile", "--help"])
    out = capsys.readouterr().out
    assert "summary" in out and "diff" in out and "merge" in out
    with pytest.raises(SystemExit):
        main(["profile", "diff", "--help"])
    out = capsys.readouterr().out
    assert "--old-calls" in out and "(N calls, py-spy)" in out
