"""The ledger and `perfreplay history TARGET` (table and plot)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

from pytest_perfreplay.cli import history as cli_history
from pytest_perfreplay.replay.history import MAX_SAMPLES, Entry, Ledger, bounded


def entry(iteration: int, level: float, *, seed: int) -> Entry:
    samples = list(level * (1 + 0.01 * np.random.default_rng(seed).standard_normal(200)))
    return Entry(
        iteration=iteration,
        time=1_700_000_000.0 + iteration,
        commit="abc123",
        dirty=iteration == 3,
        target="svc:f",
        snapshot="snap1",
        estimator="median",
        estimate=float(np.median(samples)),
        low=level * 0.99,
        high=level * 1.01,
        precision=0.01,
        rounds=200,
        target_met=iteration != 2,
        samples=samples,
        stop_reason="target met",
        # What the run reported (the table shows it, never recomputes it).
        vs_previous=(
            {"against": 2, "ratio": 1.98, "significant": True, "verdict": "faster"}
            if iteration == 3
            else None
        ),
    )


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / ".perfreplay"
    ledger = Ledger.for_snapshot(root / "history", "svc:f", "snap1")
    for i, level in enumerate([0.010, 0.0099, 0.005], start=1):
        ledger.append(entry(i, level, seed=i))
    return root


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli_history.register(parser.add_subparsers())
    return parser.parse_args(["history", *argv])


def test_ledger_round_trip_and_bounded_samples(store: Path) -> None:
    entries = Ledger.for_snapshot(store / "history", "svc:f", "snap1").entries()
    assert [e.iteration for e in entries] == [1, 2, 3]
    assert entries[0].stop_reason == "target met"
    assert len(bounded(list(range(10 * MAX_SAMPLES)))) == MAX_SAMPLES


def test_history_table(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("svc:f", "--store", str(store))
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "svc:f [snapshot snap1]"
    assert "vs previous" in out[1] and "vs first" in out[1]
    assert "MISSED" in out[3]
    assert "abc123*" in out[4]
    assert "1.98x faster" in out[4]
    assert out[3].rstrip().endswith("-")  # nothing recorded: nothing shown


def test_history_by_snapshot_id_and_unknown(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse("snap1", "--store", str(store))
    assert args.func(args) == 0
    args = parse("svc:nothing", "--store", str(store))
    assert args.func(args) == 1
    assert "no history" in capsys.readouterr().out


def test_history_plot(store: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots" / "h.png"
    args = parse("svc:f", "--store", str(store), "--plot", str(out))
    assert args.func(args) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_get_it(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    args = parse("svc:f", "--store", str(store), "--plot", str(tmp_path / "h.png"))
    with pytest.raises(Exception, match=r"pip install 'pytest-perfreplay\[plot\]'"):
        args.func(args)


def test_aa_pairs_are_consecutive_runs_of_identical_code() -> None:
    from pytest_perfreplay.replay.history import Entry, aa_pairs

    def entry(i: int, est: float, code: str | None, processes: int = 1) -> Entry:
        return Entry(
            iteration=i,
            time=0.0,
            commit=None,
            dirty=False,
            target="m:f",
            snapshot="s",
            estimator="median",
            estimate=est,
            low=est,
            high=est,
            precision=0.0,
            rounds=10,
            target_met=True,
            processes=processes,
            code_hash=code,
            source=code,  # identical runs: same tree, interpreter and packages
            interpreter="py",
            packages="pkgs",
        )

    ledger = [
        entry(1, 1.0, "a"),
        entry(2, 1.02, "a"),
        entry(3, 0.5, "b"),
        entry(4, 0.51, "b"),
        entry(5, 0.52, "b", processes=3),
        entry(6, 0.5, None),
    ]
    assert aa_pairs(ledger) == [(1.0, 1.02), (0.5, 0.51)]
