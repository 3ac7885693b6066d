"""`pytest --perf-replay --perf-replay-store s3://...`: replay straight from a real S3 server."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

SERVICE = """
from pytest_perfreplay import capture


@capture(keep_result=True)
def total(values):
    return sum(v * v for v in values)
"""

KEY = "remote-replay-test-key-0123456789"


@pytest.mark.s3
def test_replay_pulls_from_s3_then_times(
    pytester: pytest.Pytester, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERFREPLAY_KEY", KEY)
    url = s3_bucket.url("fleet")
    pytester.makepyfile(svc=SERVICE, traffic="import svc\nsvc.total(list(range(5000)))\n")
    pytester.makeini("[pytest]\npythonpath = .\n")
    env = dict(os.environ, PERFREPLAY_CAPTURE="1", PERFREPLAY_STORE=url)
    subprocess.run([sys.executable, "traffic.py"], cwd=pytester.path, env=env, check=True)
    assert len(s3_bucket.keys("fleet/snapshots/")) == 1  # flushed at exit

    result = pytester.runpytest_subprocess(
        "--perf-replay",
        f"--perf-replay-store={url}",
        "--perf-replay-max-time=2",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [f"pulled {url} into *: 1 new, 0 already present, 0 refused*", "*svc:total*"]
    )


@pytest.mark.s3
def test_replay_from_a_missing_bucket_is_one_clear_line(
    pytester: pytest.Pytester, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERFREPLAY_KEY", KEY)
    result = pytester.runpytest_subprocess(
        "--perf-replay",
        "--perf-replay-store=s3://no-such-bucket-replay/x",
        "-p",
        "no:cacheprovider",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --perf-replay-store: *no-such-bucket-replay*does not exist*"]
    )
    assert "Traceback" not in result.stderr.str()
