"""Snapshot items behave like any pytest item: -k, -x, --lf, -m, --collect-only, xdist."""

from __future__ import annotations

import pytest

from tests.test_replay import capture_traffic, run


def test_help_lists_options_with_their_defaults(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(
        [
            "*--perf-replay *turn every captured snapshot into a benchmark item*",
            "*--perf-replay-processes*",
            "*--perf-replay-strict*",
            "*--perf-replay-result-rtol*",
        ]
    )


def test_bad_option_value_says_what_is_accepted(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--perf-replay", "--perf-replay-precision=abc")
    result.stderr.fnmatch_lines(["*--perf-replay-precision: 'abc' is not a number*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_collect_only_k_and_marker(pytester: pytest.Pytester) -> None:
    capture_traffic(pytester)
    result = run(pytester, "--collect-only", "-q")
    result.stdout.fnmatch_lines(["perfreplay::svc:checksum[[]*]", "*5 tests collected*"])
    result = run(pytester, "--collect-only", "-q", "-k", "fetch or parse")
    result.stdout.fnmatch_lines(["*2/5 tests collected (3 deselected)*"])
    run(pytester, "-m", "perfreplay", "-k", "parse").assert_outcomes(passed=1)
    result = run(pytester, "-m", "not perfreplay")
    result.assert_outcomes()
    result.stdout.fnmatch_lines(["*5 deselected*"])


def test_x_stops_after_the_first_failure_and_lf_reruns_only_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_traffic(pytester)
    monkeypatch.setenv("SVC_DRIFT", "1")  # checksum, parse and stats_of now fail
    cache = ["-p", "cacheprovider"]
    first = pytester.runpytest_subprocess("--perf-replay", "--perf-replay-max-time=0.5", "-x")
    first.assert_outcomes(failed=1)
    monkeypatch.delenv("SVC_DRIFT")
    again = pytester.runpytest_subprocess(
        "--perf-replay", "--perf-replay-max-time=0.5", "--lf", *cache
    )
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines(["*run-last-failure: rerun previous 1 failure*"])


def test_tests_alongside_snapshots_only_when_paths_are_given(pytester: pytest.Pytester) -> None:
    capture_traffic(pytester)
    pytester.makepyfile(test_plain="def test_ok():\n    assert True\n")
    only_snapshots = run(pytester, "-k", "fetch or test_ok")
    only_snapshots.assert_outcomes(passed=1)  # no path args: the snapshots, not the suite
    both = run(pytester, "test_plain.py", "-k", "fetch or test_ok")
    both.assert_outcomes(passed=2)


def test_xdist_is_refused_with_a_clear_message(pytester: pytest.Pytester) -> None:
    capture_traffic(pytester)
    result = run(pytester, "-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*pytest-xdist (-n) would run the timings in parallel*-n 0*"])


def test_without_xdist_plugin_and_with_n0_it_runs(pytester: pytest.Pytester) -> None:
    capture_traffic(pytester)
    run(pytester, "-p", "no:xdist", "-k", "fetch").assert_outcomes(passed=1)
    run(pytester, "-n", "0", "-k", "fetch").assert_outcomes(passed=1)


def test_normal_suite_under_xdist_is_untouched(pytester: pytest.Pytester) -> None:
    capture_traffic(pytester)
    pytester.makepyfile(test_plain="def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("*perfreplay: store*")


def test_fixture_under_xdist_checks_the_result_but_does_not_time(
    pytester: pytest.Pytester,
) -> None:
    ids = capture_traffic(pytester)
    pytester.makepyfile(
        test_fx=f"""
import svc

def test_fx(perf_replay):
    perf_replay(svc.fetch_and_merge, snapshot="{ids["svc:fetch_and_merge"]}")
"""
    )
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*timing skipped under pytest-xdist*"])


def test_live_progress_for_long_items(pytester: pytest.Pytester) -> None:
    capture_traffic(pytester)
    result = run(
        pytester,
        "-k",
        "sort_in_place",
        "--perf-replay-max-time=4",
        "--perf-replay-precision=0.0001",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["perfreplay svc:sort_in_place: * rounds*after * s"])
