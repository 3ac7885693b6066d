"""Cross-session comparisons through real pytest sessions in a real git repository.

The comparison a run prints is the one `perfreplay history` shows; drift is learned only
from runs of an identical tree; `--reset-drift` forgets it; "vs first" is the first run
that met its precision target. No timing is asserted: only what was recorded and printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SERVICE = """
from pytest_perfreplay import capture


@capture
def checksum(values):
    total = 0
    for v in values:
        total = (total * 31 + v) % 1_000_003
    return total
"""

TRAFFIC = """
import svc

svc.checksum(list(range(3_000)))
"""

LOOSE = ("--perf-replay-precision=0.5", "--perf-replay-max-time=1")


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A git repository with one committed service and one captured snapshot."""
    pytester.makepyfile(svc=SERVICE, traffic=TRAFFIC)
    pytester.makeini("[pytest]\npythonpath = .\n")
    (pytester.path / ".gitignore").write_text(".perfreplay/\n")
    _git(pytester.path, "init", "-q")
    _git(pytester.path, "config", "user.email", "t@example.com")
    _git(pytester.path, "config", "user.name", "t")
    _git(pytester.path, "add", ".")
    _git(pytester.path, "commit", "-qm", "service")
    env = dict(os.environ, PERFREPLAY_CAPTURE="1", PERFREPLAY_STORE=".perfreplay")
    subprocess.run(
        [sys.executable, "traffic.py"], cwd=pytester.path, env=env, check=True, timeout=120
    )
    return pytester


def replay(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    result = pytester.runpytest_subprocess("--perf-replay", "-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=1)
    return result


def entries(pytester: pytest.Pytester) -> list[dict[str, Any]]:
    (ledger,) = (pytester.path / ".perfreplay" / "history").glob("*/*.jsonl")
    rows = [json.loads(line) for line in ledger.read_text().splitlines()]
    return [r for r in rows if "event" not in r]


def history(pytester: pytest.Pytester, *args: str) -> str:
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("perfreplay")), "history", "svc:checksum", *args],
        cwd=pytester.path,
        env=dict(os.environ, PERFREPLAY_STORE=".perfreplay"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def change_line(result: pytest.RunResult) -> str:
    (line,) = [ln.strip() for ln in result.outlines if ln.strip().startswith("change: ")]
    return line


def test_history_shows_exactly_what_the_run_printed_vs_the_first_met_iteration(
    project: pytest.Pytester,
) -> None:
    # A first session that misses its target must not be the "vs first" reference forever.
    missed = replay(project, "--perf-replay-precision=0.00001", "--perf-replay-max-time=0.3")
    missed.stdout.fnmatch_lines(["*TARGET MISSED*"])
    replay(project, *LOOSE)
    third = replay(project, *LOOSE)
    rows = entries(project)
    assert [r["target_met"] for r in rows] == [False, True, True]
    assert rows[2]["vs_previous"]["against"] == 2
    assert rows[2]["vs_first"] is None  # the first met run *is* the previous one
    fourth = replay(project, *LOOSE)
    rows = entries(project)
    assert rows[3]["vs_first"]["against"] == 2

    printed = change_line(fourth)
    assert printed == "change: " + rows[3]["change"]
    assert "machine's" in printed  # the reference workload's move is in the allowance
    assert rows[3]["reference"] > 0 and rows[3]["reference_samples"]
    shown = history(project, "-v")
    assert printed in [line.strip() for line in shown.splitlines()]
    assert change_line(third) in [line.strip() for line in shown.splitlines()]
    assert "(#2)" in shown


def test_drift_is_not_learned_across_a_changed_tree(project: pytest.Pytester) -> None:
    # Sessions 1 and 2 differ outside the target's bytecode (an untracked module, then a
    # committed edit): nothing to learn from, so session 3 allows exactly the prior.
    replay(project, *LOOSE)
    (project.path / "settings.py").write_text("LEVEL = 1\n")
    replay(project, *LOOSE)
    _git(project.path, "add", "settings.py")
    _git(project.path, "commit", "-qm", "settings")
    third = replay(project, *LOOSE)
    rows = entries(project)
    assert len({r["source"] for r in rows}) == 3
    assert rows[2]["code_hash"] == rows[0]["code_hash"]  # the target itself never changed
    assert rows[2]["drift"] == pytest.approx(0.02, abs=1e-12)
    assert "allowing 2.0% drift between sessions" in change_line(third)


def test_reset_drift_forgets_and_the_next_runs_learn_again(project: pytest.Pytester) -> None:
    for _ in range(3):
        replay(project, *LOOSE)
    learned = entries(project)[-1]["drift"]
    assert learned != pytest.approx(0.02, abs=1e-12)  # two A/A pairs moved it off the prior

    out = history(project, "--reset-drift")
    assert "drift reset for snapshot" in out and "after iteration 3" in out
    replay(project, *LOOSE)
    replay(project, *LOOSE)
    assert [r["drift"] for r in entries(project)[3:]] == pytest.approx([0.02, 0.02], abs=1e-12)
    replay(project, *LOOSE)  # pair (4, 5) is after the reset: learning resumes
    assert entries(project)[-1]["drift"] != pytest.approx(0.02, abs=1e-12)

    table = history(project)
    assert "iter" in table and "vs previous" in table
