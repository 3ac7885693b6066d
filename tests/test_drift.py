"""Cross-session drift: what it learns from, the reference workload's widening, resets.

Unit tests over synthetic ledgers and synthetic sessions (no timing is asserted), and one
real git repository for the source identity.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pytest_perfreplay.cli import history as cli_history
from pytest_perfreplay.replay.history import (
    Entry,
    Ledger,
    aa_pairs,
    first_met,
    packages_identity,
    same_environment,
    source_identity,
)
from pytest_perfreplay.replay.reference import ReferenceClock, reference_work
from pytest_perfreplay.replay.stats import compare, compare_groups, session_drift

SAME = {"source": "tree1", "interpreter": "py1", "packages": "pkgs1"}


def entry(i: int, estimate: float, **fields: Any) -> Entry:
    base: dict[str, Any] = {
        "iteration": i,
        "time": 1_700_000_000.0 + i,
        "commit": "abc",
        "dirty": False,
        "target": "svc:f",
        "snapshot": "s1",
        "estimator": "median",
        "estimate": estimate,
        "low": estimate * 0.99,
        "high": estimate * 1.01,
        "precision": 0.01,
        "rounds": 100,
        "target_met": True,
        "code_hash": "same-bytecode",
        **SAME,
    }
    base.update(fields)
    return Entry(**base)


# -- what drift is learned from ---------------------------------------------------------


def test_drift_learns_only_from_identical_source_interpreter_and_packages() -> None:
    # The target's bytecode never changed; everything around it did, one thing at a time.
    ledger = [
        entry(1, 1.00),
        entry(2, 1.01),  # identical: an A/A pair
        entry(3, 2.00, source="tree2"),  # a callee or config changed
        entry(4, 2.02, source="tree2", interpreter="py2"),  # another Python
        entry(5, 2.04, source="tree2", interpreter="py2", packages="pkgs2"),  # pip upgrade
        entry(6, 2.05, source="tree2", interpreter="py2", packages="pkgs2"),  # identical
    ]
    assert aa_pairs(ledger) == [(1.00, 1.01), (2.04, 2.05)]


def test_unknown_source_teaches_nothing() -> None:
    # Outside git the source identity is unknown: never assume two runs were identical.
    ledger = [entry(1, 1.0, source=None), entry(2, 3.0, source=None)]
    assert not same_environment(ledger[0], ledger[1])
    assert aa_pairs(ledger) == []


def test_a_changed_tree_does_not_inflate_the_drift() -> None:
    # The failure: one real change read as drift made later intervals huge.
    ledger = [entry(1, 1.0), entry(2, 1.01), entry(3, 1.6, source="tree2"), entry(4, 1.61)]
    drift = session_drift(aa_pairs(ledger), prior=0.02)
    assert drift < 0.02  # quiet reruns only; the 1.6x step is not drift


def test_reset_drift_forgets_earlier_pairs(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "svc_f" / "s1.jsonl")
    for e in (entry(1, 1.0), entry(2, 1.5), entry(3, 1.0)):
        ledger.append(e)
    assert ledger.drift_reset_after() == 0
    assert len(aa_pairs(ledger.entries())) == 2
    assert ledger.reset_drift() == 3
    ledger.append(entry(4, 1.0))
    ledger.append(entry(5, 1.01))
    after = ledger.drift_reset_after()
    assert after == 3
    assert [e.iteration for e in ledger.entries()] == [1, 2, 3, 4, 5]  # the event is no row
    assert aa_pairs(ledger.entries(), after=after) == [(1.0, 1.01)]


def test_vs_first_is_the_first_iteration_that_met_its_target() -> None:
    ledger = [entry(1, 9.0, target_met=False), entry(2, 1.0), entry(3, 1.0)]
    found = first_met(ledger)
    assert found is not None and found.iteration == 2
    assert first_met([entry(1, 1.0, target_met=False)]) is None


# -- the source identity, in a real git repository ----------------------------------------


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_source_identity_sees_commits_diffs_and_untracked_files(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    repo.mkdir()
    assert source_identity(str(repo)) is None  # not a git repository
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    (repo / "svc.py").write_text("def f():\n    return 1\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    store = repo / ".perfreplay"
    clean = source_identity(str(repo), str(store))
    assert clean is not None and clean == source_identity(str(repo), str(store))

    # Outputs (the store and its ledger, caches) are not source.
    (store / "history").mkdir(parents=True)
    (store / "history" / "x.jsonl").write_text("{}\n")
    (repo / "__pycache__").mkdir()
    (repo / "__pycache__" / "svc.cpython-311.pyc").write_bytes(b"\0")
    assert source_identity(str(repo), str(store)) == clean

    # An uncommitted edit, and an untracked module beside it, are.
    (repo / "svc.py").write_text("def f():\n    return 2\n")
    edited = source_identity(str(repo), str(store))
    assert edited not in (None, clean)
    (repo / "helper.py").write_text("X = 1\n")
    with_new = source_identity(str(repo), str(store))
    assert with_new not in (None, clean, edited)
    (repo / "helper.py").write_text("X = 2\n")  # its content counts, not just its name
    assert source_identity(str(repo), str(store)) not in (clean, edited, with_new)


def test_packages_identity_changes_with_an_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    (site / "lib-1.0.dist-info").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(site))
    packages_identity.cache_clear()
    before = packages_identity()
    packages_identity.cache_clear()
    assert packages_identity() == before
    (site / "lib-1.0.dist-info").rename(site / "lib-1.1.dist-info")  # pip install -U lib
    packages_identity.cache_clear()
    try:
        assert packages_identity() != before
    finally:
        packages_identity.cache_clear()


# -- the reference workload and the widening -----------------------------------------------


def test_reference_clock_takes_its_share_between_rounds() -> None:
    t = [0.0]

    def reference() -> float:
        t[0] += 0.001  # a 1 ms reference sample on the fake clock
        return 0.001

    def measure() -> float:
        t[0] += 0.01  # a 10 ms round
        return 0.01

    ref = ReferenceClock(share=0.1, clock=lambda: t[0], timer=reference)
    timed = ref.wrap(measure)
    per_round = []
    for _ in range(200):
        before = len(ref.samples)
        timed()
        per_round.append(len(ref.samples) - before)
    spent = 0.001 * len(ref.samples)
    assert spent / t[0] == pytest.approx(0.1, abs=0.01)
    # Spread over the session, not taken in a burst: every stretch of 20 rounds has some.
    assert all(sum(per_round[i : i + 20]) >= 15 for i in range(0, 200, 20))
    assert ref.estimate() == pytest.approx(0.001)
    assert len(ref.kept()) <= 400
    assert reference_work() == reference_work()  # fixed work


def test_reference_clock_brackets_worker_rounds() -> None:
    ref = ReferenceClock()
    ref.bracket(5)
    assert len(ref.samples) == 5 and all(s > 0 for s in ref.samples)


def _session(rng: np.random.Generator, machine: float, n: int = 150) -> list[float]:
    return list(machine * (1 + 0.01 * rng.standard_normal(n)))


def test_machine_move_keeps_aa_honest_when_the_machine_moves() -> None:
    # Identical code; between sessions the machine moves by ~8% (log-normal). The target and
    # the reference both see the move, each with its own share of it.
    rng = np.random.default_rng(3)
    plain = widened = 0
    runs = 120
    for _ in range(runs):
        a_machine, b_machine = np.exp(rng.normal(0, 0.08, size=2))
        a = _session(rng, a_machine * math.exp(rng.normal(0, 0.01)))
        b = _session(rng, b_machine * math.exp(rng.normal(0, 0.01)))
        move = float(b_machine / a_machine * math.exp(rng.normal(0, 0.02)) - 1)
        plain += compare(a, b, resamples=300, drift=0.02).significant
        widened += compare(a, b, resamples=300, drift=0.02, machine_move=move).significant
    assert plain / runs > 0.2  # the old comparison cries wolf
    assert widened / runs <= 0.05


def test_widened_comparison_reports_what_it_cannot_see() -> None:
    rng = np.random.default_rng(5)
    a, b = _session(rng, 1.0), _session(rng, 1.0)
    quiet = compare(a, b, drift=0.005)
    moved = compare(a, b, drift=0.005, machine_move=0.10)
    assert quiet.detectable < moved.detectable
    assert moved.detectable > 0.10
    assert "machine" in moved.method and "+10.0%" in moved.method
    assert math.isnan(compare(a, b).detectable)  # in-session: not the limit
    with pytest.raises(ValueError, match="machine_move"):
        compare(a, b, machine_move=-1.5)


def test_still_detects_a_big_change_beside_a_small_move() -> None:
    rng = np.random.default_rng(7)
    a, b = _session(rng, 1.0), _session(rng, 1.5)
    c = compare(a, b, drift=0.02, machine_move=0.01)
    assert c.significant and c.verdict == "slower"


# -- `perfreplay history` shows what the runs printed ---------------------------------------


def _record(significant: bool, ratio: float, against: int) -> dict[str, Any]:
    verdict = ("faster" if ratio > 1 else "slower") if significant else "no change"
    return {"against": against, "ratio": ratio, "significant": significant, "verdict": verdict}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli_history.register(parser.add_subparsers())
    return parser.parse_args(["history", *argv])


def test_history_reads_the_comparison_from_the_ledger_never_recomputes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / ".perfreplay"
    ledger = Ledger.for_snapshot(root / "history", "svc:f", "s1")
    rng = np.random.default_rng(1)
    # The samples alone would read "2x faster": the run, allowing for drift, said no change.
    ledger.append(entry(1, 2.0, samples=_session(rng, 2.0), target_met=False))
    ledger.append(entry(2, 2.0, samples=_session(rng, 2.0)))
    ledger.append(
        entry(
            3,
            1.0,
            samples=_session(rng, 1.0),
            vs_previous=_record(False, 2.0, 2),
            vs_first=_record(True, 2.0, 2),
            change="no significant change vs previous (2x [0.9-4.4], p=0.2) (allowing 40% ...)",
        )
    )
    args = parse("svc:f", "--store", str(root), "-v")
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.strip()[:1].isdigit()]
    assert len(rows) == 3
    assert rows[1].rstrip().endswith("-")  # recorded nothing: shows nothing
    assert "~ (2x)" in rows[2]
    assert "2x faster (#2)" in rows[2]  # vs the first run that met its target, not #1
    assert out[-1].strip() == (
        "change: no significant change vs previous (2x [0.9-4.4], p=0.2) (allowing 40% ...)"
    )


def test_history_reset_drift_writes_an_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / ".perfreplay"
    ledger = Ledger.for_snapshot(root / "history", "svc:f", "s1")
    ledger.append(entry(1, 1.0))
    ledger.append(entry(2, 1.0))
    args = parse("svc:f", "--store", str(root), "--reset-drift")
    assert args.func(args) == 0
    assert "after iteration 2" in capsys.readouterr().out
    last = json.loads(ledger.path.read_text().splitlines()[-1])
    assert last["event"] == "reset-drift" and last["after"] == 2
    assert ledger.drift_reset_after() == 2


def test_per_process_comparisons_are_widened_by_the_machine_move_too() -> None:
    a, b = [1.00, 1.01, 0.99, 1.00], [1.06, 1.07, 1.05, 1.06]
    plain = compare_groups(a, b)
    moved = compare_groups(a, b, machine_move=0.06)
    assert plain.significant and plain.verdict == "slower"
    assert not moved.significant  # the machine moved as much as the target did
    assert moved.detectable > 0.06 and math.isnan(plain.detectable)
    assert "+6.0% move" in moved.method
    with pytest.raises(ValueError, match="machine_move"):
        compare_groups(a, b, machine_move=math.nan)


def test_history_shows_a_recorded_paired_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / ".perfreplay"
    ledger = Ledger.for_snapshot(root / "history", "svc:f", "s1")
    ledger.append(entry(1, 1.0))
    paired = {"ratio": 1.073, "significant": True, "direction": "slower", "rev": "HEAD"}
    ledger.append(entry(2, 1.07, paired=paired))
    ledger.append(entry(3, 1.0, paired={**paired, "ratio": 1.001, "significant": False}))
    args = parse("svc:f", "--store", str(root))
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].rstrip().endswith("paired")
    assert out[3].rstrip().endswith("1.07x slower vs HEAD")
    assert out[4].rstrip().endswith("~ vs HEAD")
