"""Real libraries, captured by name and replayed, as a new user would.

* sqlparse's own test suite (the pinned sdist from PyPI, unpacked here) runs under
  ``perfreplay run --targets sqlparse:format,sqlparse:split -- pytest -W error``: its
  outcome counts must be those of a plain run, and every snapshot, including the calls
  that raised ``SQLParseError`` by design, must replay with exit 0.
* pygments and Markdown method targets replay through the documented set-up: a
  ``perf_replay_setup`` fixture for the lexer's lazily built token tables.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

sqlparse = pytest.importorskip("sqlparse")  # installed by the `test` extra, pinned
pytest.importorskip("pygments")
pytest.importorskip("markdown")

pytestmark = pytest.mark.slow

SQLPARSE_VERSION = "0.5.3"  # the sdist whose tests run; must equal the installed package


def env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PERFREPLAY_")}
    clean.update(extra)
    return clean


def exe(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def sh(args: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env(**extra), capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def sqlparse_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sqlparse's sdist, downloaded with pip and unpacked: its tests/ and pyproject.toml."""
    assert sqlparse.__version__ == SQLPARSE_VERSION, "the test extra pins this version"
    where = tmp_path_factory.mktemp("sqlparse")
    got = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         f"sqlparse=={SQLPARSE_VERSION}", "-d", str(where)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert got.returncode == 0, f"cannot download the sqlparse sdist: {got.stderr[-1000:]}"
    (archive,) = where.glob("sqlparse-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(where, filter="data")
    tree = where / f"sqlparse-{SQLPARSE_VERSION}"
    # Test the installed package (the one the pin installed), not the sdist's source copy.
    for name in ("sqlparse",):
        (tree / name).rename(tree / f"_{name}_source")
    return tree


COUNTS = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|warnings?)")


def counts(output: str) -> dict[str, int]:
    last = [line for line in output.splitlines() if " in " in line and COUNTS.search(line)]
    assert last, output[-2000:]
    return {kind.rstrip("s"): int(n) for n, kind in COUNTS.findall(last[-1])}


def test_sqlparse_suite_is_unchanged_under_run_and_its_snapshots_replay(
    sqlparse_tree: Path,
) -> None:
    suite = [exe("pytest"), "-W", "error", "-p", "no:cacheprovider", "tests"]
    plain = sh(suite, sqlparse_tree)
    assert plain.returncode == 0, plain.stdout[-3000:]
    under = sh(
        [exe("perfreplay"), "run", "--targets", "sqlparse:format,sqlparse:split",
         "--max-snapshots", "1000", "--", *suite],
        sqlparse_tree,
    )  # fmt: skip
    assert under.returncode == plain.returncode, under.stdout[-3000:] + under.stderr[-3000:]
    assert counts(under.stdout) == counts(plain.stdout)
    assert "PytestAssertRewriteWarning" not in under.stdout + under.stderr

    from pytest_perfreplay.snapshot.format import read_header_file

    heads = [read_header_file(p) for p in sqlparse_tree.glob(".perfreplay/snapshots/*/*")]
    raised = [h for h in heads if h.get("outcome") == "raise"]
    assert {h.target for h in heads} == {"sqlparse:format", "sqlparse:split"}
    kinds = {h.get("raised") for h in raised}
    assert "sqlparse.exceptions.SQLParseError" in kinds, kinds  # the DoS guards, by design
    raised = [h for h in raised if h.get("raised") == "sqlparse.exceptions.SQLParseError"]

    # Every snapshot, checked once (outcome and kind of exception).
    checked = sh(
        [exe("pytest"), "--perf-replay", "--benchmark-disable", "-p", "no:cacheprovider",
         "-W", "error"],
        sqlparse_tree,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout[-3000:]
    assert counts(checked.stdout) == {"passed": len(heads)}

    # Timed, a few raised and a few returned ones: the raising path is what gets timed.
    chosen = [h.id for h in raised[:2]] + [h.id for h in heads if h.get("outcome") == "return"][:2]
    timed = sh(
        [exe("pytest"), "--perf-replay", "--perf-replay-max-time=0.5", "-p",
         "no:cacheprovider", "-k", " or ".join(chosen)],
        sqlparse_tree,
    )  # fmt: skip
    assert timed.returncode == 0, timed.stdout[-3000:]
    assert counts(timed.stdout) == {"passed": 4}
    assert timed.stdout.count("raised sqlparse.exceptions.SQLParseError, as captured") == 2


HIGHLIGHT = """
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer


class Highlighter:
    def __init__(self):
        self.lexer = PythonLexer()
        self.formatter = HtmlFormatter()

    def render(self, code):
        return highlight(code, self.lexer, self.formatter)
"""
TRAFFIC = """
import inspect

import markdown

import docs_site

source = inspect.getsource(markdown.core) * 2
docs_site.Highlighter().render(source)
md = markdown.Markdown(extensions=["toc", "tables", "fenced_code"])
md.convert(inspect.getdoc(markdown.core.Markdown) * 20)
"""
SETUP = """
import pytest
from pygments.lexers import PythonLexer


@pytest.fixture
def perf_replay_setup():
    PythonLexer()  # builds the class's token tables, which unpickling skips
"""


def test_pygments_and_markdown_method_targets_replay_with_the_documented_setup(
    tmp_path: Path,
) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "docs-site"\nversion = "0"\n')
    (tmp_path / "docs_site.py").write_text(HIGHLIGHT)
    (tmp_path / "traffic.py").write_text(TRAFFIC)
    captured = sh(
        [exe("perfreplay"), "run", "--targets",
         "docs_site:Highlighter.render,markdown.core:Markdown.convert", "--no-redact", "--",
         sys.executable, "traffic.py"],
        tmp_path,
        PYTHONPATH=str(tmp_path),
    )  # fmt: skip
    assert captured.returncode == 0, captured.stderr
    replay = [exe("pytest"), "--perf-replay", "--perf-replay-max-time=0.5", "-p",
              "no:cacheprovider"]  # fmt: skip

    without = sh(replay, tmp_path)
    assert without.returncode == 1
    assert "'PythonLexer' object has no attribute '_tokens'" in without.stdout
    assert "perf_replay_setup" in without.stdout  # the message points to the way out
    assert "Traceback" not in without.stdout

    (tmp_path / "conftest.py").write_text(SETUP)
    with_setup = sh(replay, tmp_path)
    assert with_setup.returncode == 0, with_setup.stdout[-3000:]
    assert counts(with_setup.stdout) == {"passed": 2}
    assert "markdown.core:Markdown.convert" in with_setup.stdout
    assert with_setup.stdout.count("returned, as captured") == 2
