"""Profile diffs rank movers by inclusive (total) time too, and the CLI's ratios come from
the ledger's timed medians when it knows them, else they are labelled as profiler time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_perfreplay.cli import main
from pytest_perfreplay.profile import speedscope as S
from tests.test_speedscope import APP, frame, sampled_doc


def nested(
    calls: int, outer_self: float, inner: float, leaf: float, name: str = "run"
) -> dict[str, Any]:
    """target -> setup (its own time: outer_self) -> parse (inner) ; target -> leaf."""
    frames = [frame("target", APP, 1), frame("setup", APP, 2), frame("parse", APP, 3),
              frame("render", APP, 4)]  # fmt: skip
    samples = [[0, 1], [0, 1, 2], [0, 3]]
    weights = [outer_self * calls, inner * calls, leaf * calls]
    return sampled_doc(frames, samples, weights, name=name)


def test_a_caller_whose_callees_got_faster_moves_by_total_time() -> None:
    # setup's own time is unchanged, but what it calls (parse, spread over many small
    # helpers in real code) shrank: by self time setup never moves; by total it tops.
    old = nested(10, outer_self=1e-3, inner=4e-3, leaf=5e-3)
    new = nested(10, outer_self=1e-3, inner=1e-3, leaf=5e-3)
    d = S.diff(old, new, old_calls=10, new_calls=10, name="d", exporter="e")
    setup = next(r for r in d.rows if r.function == "setup")
    assert not setup.moved  # self time: the old ranking cannot see it
    assert setup.old_total == pytest.approx(5e-3) and setup.new_total == pytest.approx(2e-3)
    names = [r.function for r in d.total_movers]
    assert "setup" in names  # -3 ms per call, like parse and the target itself
    assert "render" not in names  # unchanged inclusive time
    text = "\n".join(d.mover_lines())
    assert "function (by total)" in text
    assert "shop.orders:setup" in text.split("(by total)")[1]


def write(path: Path, doc: dict[str, Any]) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def test_cli_diff_takes_scale_from_the_ledger_medians_or_says_profiler_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("")
    profiles = tmp_path / ".perfreplay" / "profiles" / "m-f"
    profiles.mkdir(parents=True)
    # The profiler saw 20 ms -> 11 ms per call (its overhead inflates both)...
    old = write(
        profiles / "0001-s.speedscope.json",
        nested(10, 2e-3, 10e-3, 8e-3, "m:f [s] (10 calls, py-spy)"),
    )
    new = write(profiles / "0002-s.speedscope.json",
                nested(10, 2e-3, 1e-3, 8e-3, "m:f [s] (10 calls, py-spy)"))  # fmt: skip
    assert main(["profile", "diff", old, new]) == 0
    out = capsys.readouterr().out
    assert "(1.82x faster)" in out and "profiler time" in out

    # ...while the timed medians in the ledger say 10 ms -> 9.17 ms: that is the ratio.
    ledger = tmp_path / ".perfreplay" / "history" / "m-f" / "s.jsonl"
    ledger.parent.mkdir(parents=True)
    rows = [{"iteration": 1, "estimate": 10e-3, "profile": old},
            {"iteration": 2, "estimate": 9.17e-3, "profile": new}]  # fmt: skip
    ledger.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["profile", "diff", old, new]) == 0
    out = capsys.readouterr().out
    assert "(1.09x faster)" in out and "at the timed medians" in out
