"""``perfreplay list / show / verify / prune`` against a real store."""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

import pytest

from pytest_perfreplay.capture.decorator import capture
from pytest_perfreplay.cli import store as store_cli
from pytest_perfreplay.errors import PerfReplayError
from tests.capture_helpers import fixtures, targets
from tests.capture_helpers.fixtures import Cap

capture_module = importlib.import_module("pytest_perfreplay.capture.decorator")
cap = fixtures.cap
fake_clock = fixtures.fake_clock


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="perfreplay")
    sub = parser.add_subparsers(dest="command", required=True)
    store_cli.register(sub)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


@pytest.fixture
def filled(cap: Cap, fake_clock: fixtures.FakeClock, monkeypatch: pytest.MonkeyPatch) -> Cap:
    monkeypatch.setenv("PERFREPLAY_KEY", fixtures.KEY.decode())
    monkeypatch.setenv("PERFREPLAY_STORE", str(cap.root))
    f = capture(max_snapshots=10)(targets.takes)
    for seconds in (0.001, 0.003, 0.002):
        f(seconds)
    capture(targets.login)("ann", "pw-CLI-SECRET")
    return cap


def test_list_shows_targets_counts_sizes_and_slowest(
    filled: Cap, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("list") == 0
    out = capsys.readouterr().out
    line = next(
        ln for ln in out.splitlines() if ln.startswith("tests.capture_helpers.targets:takes")
    )
    assert " 3 " in line and "ms" in line
    assert "4 snapshot(s)" in out


def test_show_header_and_args(filled: Cap, capsys: pytest.CaptureFixture[str]) -> None:
    login = next(s for s in filled.snapshots() if s.header.target.endswith("login"))
    assert run("show", login.id) == 0
    out = capsys.readouterr().out
    assert f'"id": "{login.id}"' in out and "args:" not in out
    assert run("show", login.id[:8], "--args") == 0
    out = capsys.readouterr().out
    assert "signature verified" in out and "[0] 'ann'" in out and "[1] '<redacted>'" in out
    assert "pw-CLI-SECRET" not in out


def test_show_args_refuses_a_tampered_file(filled: Cap) -> None:
    path = filled.store.snapshot_paths()[0]
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PerfReplayError, match="does not match its hash"):
        run("show", str(path), "--args")


def test_verify_exits_non_zero_on_any_failure(
    filled: Cap, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("verify") == 0
    assert "4 ok, 0 failed" in capsys.readouterr().out
    bad = filled.store.snapshot_paths()[0]
    bad.write_bytes(bad.read_bytes()[:-5])
    assert run("verify") == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "3 ok, 1 failed" in out


def test_prune_by_count_target_age_and_invalid(
    filled: Cap, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("prune", "--keep", "1", "--dry-run") == 0
    assert "would delete 2 snapshot(s)" in capsys.readouterr().out
    assert len(filled.store.snapshot_paths()) == 4
    assert run("prune", "--keep", "1") == 0
    busy = [s for s in filled.snapshots() if s.header.target.endswith("takes")]
    assert [s.load_call()[0][0] for s in busy] == [0.003]  # the slowest survives
    assert run("prune", "--target", "tests.capture_helpers.targets:login") == 0
    assert len(filled.store.snapshot_paths()) == 1
    assert run("prune", "--older-than", "1h") == 0
    assert len(filled.store.snapshot_paths()) == 1
    time.sleep(0.01)
    assert run("prune", "--older-than", "0") == 0
    assert filled.store.snapshot_paths() == []


def test_prune_invalid_removes_only_broken_files(
    filled: Cap, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = filled.store.snapshot_paths()[0]
    broken.write_bytes(b"\x80\x04not a snapshot")
    assert run("prune", "--invalid") == 0
    assert not broken.exists() and len(filled.store.snapshot_paths()) == 3


def test_prune_needs_a_criterion_and_validates_ages(
    filled: Cap, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(PerfReplayError, match="prune needs at least one of"):
        run("prune")
    with pytest.raises(SystemExit):
        run("prune", "--older-than", "soon")
    assert "'soon' is not an age" in capsys.readouterr().err


def test_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("list", "--store", str(tmp_path / "none")) == 0
    assert "no snapshots" in capsys.readouterr().out
    assert run("verify", "--store", str(tmp_path / "none")) == 0
