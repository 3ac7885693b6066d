"""`perfreplay run`: capture by dotted name in a program whose code is not edited."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_perfreplay.snapshot.format import read_header_file

SVC = """
def work(values):
    return sorted(values)[:3]


class Pricing:
    def quote(self, qty):
        return qty * 3
"""

APP = """
from svc import Pricing, work

print(work([5, 3, 9, 1]), Pricing().quote(7))
"""


def perfreplay() -> str:
    return str(Path(sys.executable).with_name("perfreplay"))


def test_run_captures_named_targets_without_editing_code(tmp_path: Path) -> None:
    (tmp_path / "svc.py").write_text(SVC)
    (tmp_path / "app.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERFREPLAY_")}
    env["PERFREPLAY_STORE"] = str(tmp_path / "store")
    env["PYTHONPATH"] = str(tmp_path)
    out = subprocess.run(
        [
            perfreplay(),
            "run",
            "--targets",
            "svc:work,svc:Pricing.quote",
            "--",
            sys.executable,
            "app.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1, 3, 5] 21"  # the program behaves exactly as before
    headers = [read_header_file(p) for p in (tmp_path / "store").glob("snapshots/*/*.prsnap")]
    assert sorted(h.target for h in headers) == ["svc:Pricing.quote", "svc:work"]


def test_run_without_targets_is_a_clear_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERFREPLAY_")}
    out = subprocess.run(
        [perfreplay(), "run", "--", sys.executable, "-c", "pass"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "no targets" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("code", [0, 3])
def test_run_passes_the_exit_code_through(tmp_path: Path, code: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERFREPLAY_")}
    env["PERFREPLAY_STORE"] = str(tmp_path / "store")
    out = subprocess.run(
        [
            perfreplay(),
            "run",
            "--targets",
            "json:dumps",
            "--",
            sys.executable,
            "-c",
            f"import json, sys; json.dumps([1]); sys.exit({code})",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == code, out.stderr
