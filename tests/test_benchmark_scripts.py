"""The statistics the benchmark scripts print, on inputs whose answers are known."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def verdicts() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "verdicts_script", ROOT / "benchmarks" / "verdicts.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


def test_sign_test_is_the_exact_two_sided_binomial(verdicts: ModuleType) -> None:
    assert verdicts.sign_test(5, 10) == 1.0
    assert verdicts.sign_test(10, 10) == pytest.approx(2 / 1024)
    assert verdicts.sign_test(0, 10) == pytest.approx(2 / 1024)
    # 8 of 10: P(X >= 8) = (45 + 10 + 1) / 1024, doubled
    assert verdicts.sign_test(8, 10) == pytest.approx(2 * 56 / 1024)
    assert verdicts.sign_test(0, 0) == 1.0


def test_trial_summary_reports_lean_by_mean_and_by_sign(verdicts: ModuleType) -> None:
    def line(ratio: float, slow: float = 0.0) -> str:
        trial = {
            "ratio": ratio,
            "low": ratio - 0.02,
            "high": ratio + 0.02,
            "significant": False,
            "process_pairs": 16,
            "pairs": 128,
            "stop_reason": "budget spent (time) before a decision",
            "wall": 50.0,
            "slow": slow,
            "condition": "loaded",
        }
        return "paired trial " + json.dumps(trial)

    lines = [line(r) for r in (1.01, 1.02, 0.99, 1.03)] + ["noise", line(1.05, 0.05)]
    summary = verdicts.summarize_trials(lines)
    aa, slower = [line for line in summary if not line.startswith("  ")]
    # Only 1.03's interval, [1.01-1.05], leaves out 1.0 (1.02's starts at 1.0).
    assert "  interval check: the 95% interval left out 1.0 in 1/4 (25%, [5%-70%])" in summary[1]
    mean = math.exp(sum(math.log(r) for r in (1.01, 1.02, 0.99, 1.03)) / 4)
    assert aa.startswith("loaded, A/A: 4 comparisons, 0 significant")
    assert f"geometric mean {mean:.4f}" in aa
    assert "above 1.0 in 3 of 4 (sign test p 0.62)" in aa
    assert "4 on the budget; 16-16 process pairs; wall median 50.0 s, longest 50.0 s" in aa
    assert slower.startswith("loaded, 5% slower: 1 comparisons")


def test_trials_with_a_paired_budget_count_in_rows_of_their_own(verdicts: ModuleType) -> None:
    def trial(significant: bool, budget: float | None = None) -> dict[str, object]:
        t: dict[str, object] = {
            "ratio": 1.02,
            "low": 1.011 if significant else 0.99,
            "high": 1.03,
            "significant": significant,
            "process_pairs": 28,
            "pairs": 224,
            "stop_reason": "budget spent (time) before a decision",
            "wall": 60.0,
            "slow": 0.02,
            "condition": "quiet",
            "workload": "w100ms",
        }
        if budget is not None:
            t["budget"] = budget
        return t

    trials = [trial(False), trial(True, 120.0), trial(True, 120.0)]
    rows = {(w, c): t for w, c, _arm, t in verdicts.tally_trials(trials)}
    assert set(rows) == {("w100ms", "quiet"), ("w100ms @120 s", "quiet")}
    assert rows[("w100ms", "quiet")].power[0.02] == [False]
    assert rows[("w100ms @120 s", "quiet")].power[0.02] == [True, True]
    lines = verdicts.summarize(trials)
    assert len(lines) == 2
    assert lines[0].startswith("w100ms quiet, 2% slower: 1 comparisons, 0 significant")
    assert lines[1].startswith("w100ms @120 s quiet, 2% slower: 2 comparisons, 2 significant")


def test_first_look_and_whole_comparison_count_aa_pairs_that_all_lean_one_way(
    verdicts: ModuleType,
) -> None:
    def trial(pair_ratios: list[float], slow: float = 0.0) -> dict[str, object]:
        return {
            "ratio": sorted(pair_ratios)[len(pair_ratios) // 2],
            "low": 0.99,
            "high": 1.01,
            "significant": False,
            "process_pairs": len(pair_ratios),
            "pairs": 8 * len(pair_ratios),
            "stop_reason": "decided: the interval sits inside the minimum-effect band",
            "wall": 10.0,
            "slow": slow,
            "condition": "quiet",
            "workload": "w10ms",
            "pair_ratios": pair_ratios,
        }

    up = [1.01] * 8 + [0.98, 0.97]  # the first 8 all slower; later pairs do not count
    down = [0.99] * 8
    mixed = [1.01] * 7 + [0.99]
    short = [1.01] * 6  # never reached the first look
    shifted = [1.02] * 16  # a whole session's shift: 2 in 65536 by chance
    aa = [trial(up), trial(down), trial(mixed), trial(short), trial(shifted)]
    assert verdicts.first_look([t["pair_ratios"] for t in aa]) == [
        "  first look: the first 8 process pairs all on one side of 1.0 in 3 of 4; "
        "chance alone (each pair as likely either side) expects 0.0",
        # up turned mixed after its first look; the chance sums 2/2**n over the four.
        "  whole comparison: every process pair on one side of 1.0 in 2 of 4 "
        "(8 pairs faster, 16 pairs slower); chance alone expects 0.02",
    ]
    lines = verdicts.summarize(aa + [trial(up, slow=0.02)])
    # Only A/A comparisons get the lines: a real slowdown should lean one way.
    assert lines[0].startswith("w10ms quiet, A/A: 5 comparisons")
    assert lines[3].startswith("  interval check:")
    assert lines[4].startswith("  first look:") and lines[5].startswith("  whole comparison:")
    assert lines[6].startswith("w10ms quiet, 2% slower")
    assert sum(line.startswith(("  first look:", "  whole", "  interval")) for line in lines) == 3


def test_interval_check_counts_aa_intervals_that_leave_out_one(verdicts: ModuleType) -> None:
    def trial(low: float, high: float, slow: float = 0.0) -> dict[str, object]:
        return {"low": low, "high": high, "slow": slow}

    aa = [trial(1.002, 1.03), trial(0.97, 0.999), trial(0.98, 1.02), trial(0.99, 1.0)]
    # Touching 1.0 is not leaving it out.
    assert verdicts.coverage(aa) == (
        "  interval check: the 95% interval left out 1.0 in 2/4 (50%, [15%-85%]) "
        "(1 above, 1 below); a calibrated one does about 5% of the time"
    )
    assert verdicts.coverage([trial(0.99, 1.01)] * 20).startswith(
        "  interval check: the 95% interval left out 1.0 in 0/20 (0%, [0%-16%])"
    )


def test_mean_interval_is_students_t_on_the_pairs_log_ratios(verdicts: ModuleType) -> None:
    logs = [-0.01, 0.01, 0.03, -0.03]
    ratio, low, high = verdicts.mean_interval([math.exp(x) for x in logs])
    sd = math.sqrt((0.01**2 * 2 + 0.03**2 * 2) / 3)
    half = 3.182446 * sd / 2  # t(0.975, 3 df)
    assert ratio == pytest.approx(1.0)
    assert (low, high) == (pytest.approx(math.exp(-half)), pytest.approx(math.exp(half)))


def test_trial_summary_sets_the_mean_beside_the_ranks(verdicts: ModuleType) -> None:
    def line(pair_ratios: list[float]) -> str:
        trial = {
            "ratio": 1.02,
            "low": 1.011,
            "high": 1.03,
            "significant": True,
            "process_pairs": len(pair_ratios),
            "pairs": 8 * len(pair_ratios),
            "stop_reason": "decided: the interval clears the minimum-effect band",
            "wall": 30.0,
            "slow": 0.02,
            "condition": "quiet",
            "pair_ratios": pair_ratios,
        }
        return "paired trial " + json.dumps(trial)

    tight = [1.02, 1.021, 1.019, 1.022, 1.018, 1.02, 1.02, 1.021]
    wild = [1.02, 1.021, 1.019, 1.022, 1.018, 1.02, 1.45, 0.7]  # two processes ran slow
    (summary, means, spread) = verdicts.summarize_trials([line(tight), line(wild)])
    assert summary.startswith("quiet, 2% slower: 2 comparisons, 2 significant")
    # The mean clears the band on the tight pairs only; its median half-width is the
    # middle of a narrow and a wide interval.
    halves = []
    for pairs in (tight, wild):
        _, low, high = verdicts.mean_interval(pairs)
        halves.append((high - low) / 2)
    assert means == (
        "  the same process pairs by a mean (t interval, the statistic before ranks), in 2 "
        f"of them: interval half-width median {sum(halves) / 2:.2%}, 1 clear of the 1% band"
    )
    # Two far-off processes barely move the robust spread: the tight pairs' MAD is 0.001.
    assert verdicts.pair_spread(tight) == pytest.approx(1.4826 * math.log(1.021 / 1.02), rel=0.01)
    assert verdicts.pair_spread(wild) < 2 * verdicts.pair_spread(tight)
    middle = (verdicts.pair_spread(tight) + verdicts.pair_spread(wild)) / 2
    assert spread == (
        "  process pairs' spread (robust SD of a comparison's log pair ratios, 1.4826 x MAD): "
        f"median {middle:.2%} over 2"
    )


def test_trial_summary_splits_by_workload_and_reads_older_logs(verdicts: ModuleType) -> None:
    def line(ratio: float, workload: str | None) -> str:
        trial = {
            "ratio": ratio,
            "low": ratio - 0.01,
            "high": ratio + 0.01,
            "significant": False,
            "process_pairs": 20,
            "pairs": 160,
            "stop_reason": "budget spent (time) before a decision",
            "wall": 20.0,
            "slow": 0.0,
            "condition": "loaded",
        }
        if workload:
            trial["workload"] = workload
        return "paired trial " + json.dumps(trial)

    # Older logs name the workload only in the header that closes its cell.
    lines = [line(1.01, None), line(0.99, None), "", "## after w1ms loaded (10 s; load 3)"]
    lines += [line(1.02, "w10ms"), "## after w10ms loaded (10 s; load 3)"]
    first, second = [line for line in verdicts.summarize_trials(lines) if not line.startswith("  ")]
    assert first.startswith("w10ms loaded, A/A: 1 comparisons")
    assert second.startswith("w1ms loaded, A/A: 2 comparisons")


def test_trials_from_several_logs_count_together(
    verdicts: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def line(ratio: float, slow: float, significant: bool, wall: float) -> str:
        trial = {
            "ratio": ratio,
            "low": ratio - 0.01,
            "high": ratio + 0.01,
            "significant": significant,
            "process_pairs": 8,
            "pairs": 64,
            "stop_reason": "decided",
            "wall": wall,
            "slow": slow,
            "condition": "loaded",
            "workload": "w10ms",
        }
        return "paired trial " + json.dumps(trial)

    first = tmp_path / "first.log"
    first.write_text("\n".join([line(1.0, 0.0, False, 10.0), line(1.03, 0.02, True, 8.0)]))
    # An older log: the workload comes from the header closing its cell.
    second = tmp_path / "second.log"
    older = json.loads(line(1.02, 0.0, True, 30.0)[len("paired trial ") :])
    del older["workload"]
    wrong = line(0.95, 0.05, True, 12.0)
    second.write_text(
        "\n".join(["paired trial " + json.dumps(older), wrong, "## after w10ms loaded (1 s)"])
    )
    rows = verdicts.tally_trials(
        verdicts.read_trials(first.read_text().splitlines())
        + verdicts.read_trials(second.read_text().splitlines())
    )
    ((workload, condition, arm, tally),) = rows
    assert (workload, condition, arm) == ("w10ms", "loaded", "paired")
    assert tally.aa == [False, True]
    assert tally.power == {0.02: [True], 0.05: [False]}
    assert tally.wrong == 1
    assert sorted(tally.walls) == [8.0, 10.0, 12.0, 30.0]

    monkeypatch.setattr(sys, "argv", ["verdicts.py", "--trials", str(first), str(second)])
    verdicts.main()
    out = capsys.readouterr().out
    assert f"# 2 paired trials from {first}" in out
    assert "| w10ms | loaded | paired | 1/2 (50%" in out
    assert "| 1/1 (100%" in out and "| 0/1 (0%" in out and "| 1/2 | 11.0 |" in out
    assert "w10ms loaded, A/A: 2 comparisons, 1 significant" in out


def test_the_hog_stops_when_the_benchmark_that_started_it_is_killed(
    verdicts: ModuleType,
) -> None:
    import signal
    import subprocess
    import time

    # A parent that starts the hog, says its pid, and waits to be killed (no cleanup runs).
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "import os\n"
            f"hog = subprocess.Popen([sys.executable, '-c', {verdicts.HOG!r}, str(os.getpid())])\n"
            "print(hog.pid, flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    hog_pid = int(parent.stdout.readline())
    os.kill(hog_pid, 0)  # running
    time.sleep(1.0)  # into its busy spell, past the first look at its parent
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 15  # one busy and one idle spell is 3.3 s
    while time.monotonic() < deadline:
        try:
            os.kill(hog_pid, 0)
        except ProcessLookupError:
            return
        # The hog is our grandchild: once it exits, a zombie can linger until reaped.
        try:
            with open(f"/proc/{hog_pid}/stat") as stat:
                if stat.read().split(") ", 1)[1].startswith("Z"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.2)
    os.kill(hog_pid, signal.SIGKILL)
    raise AssertionError("the hog outlived the benchmark that started it")


def test_pair_noise_quick_times_both_ways_and_prints_their_ratio() -> None:
    import re
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "pair_noise.py"), "--quick", "--pairs", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "1 rounds x 2 process pairs x 3 call pairs per way" in out
    for way in ("free", "pinned"):
        assert re.search(rf"round 1 {way} *: within \d+\.\d+%  across \d+\.\d+%", out), out
    for key in ("within", "across"):
        assert re.search(
            rf"{key}: median robust SD free \d+\.\d+%, pinned \d+\.\d+%, pinned/free \d+\.\d+", out
        ), out
