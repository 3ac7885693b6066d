"""The baseline tree from git: resolving, extracting once (and concurrently), import roots."""

from __future__ import annotations

import multiprocessing
import stat
import sys
from pathlib import Path

import pytest

from pytest_perfreplay.replay.baseline import (
    Baseline,
    BaselineError,
    differing_extensions,
    git_toplevel,
    materialize,
    resolve_rev,
    roots_for,
    worker_pythonpath,
)
from pytest_perfreplay.replay.items import shard_of
from tests.test_paired import commit, git, write


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    write(root, {"src/pkg_b1/__init__.py": "", "src/pkg_b1/mod.py": "VALUE = 1\n"})
    commit(root, "one")
    write(root, {"src/pkg_b1/mod.py": "VALUE = 2\n"})
    commit(root, "two")
    return root


def test_errors_are_one_line(tmp_path: Path, repo: Path) -> None:
    with pytest.raises(BaselineError, match="is not in a git repository"):
        git_toplevel(tmp_path)
    with pytest.raises(BaselineError, match=r"unknown revision 'nope' in .*repo"):
        resolve_rev(repo, "nope")
    with pytest.raises(BaselineError, match="is not a git revision"):
        resolve_rev(repo, "--all")
    assert resolve_rev(repo, "HEAD~1") == git(repo, "rev-parse", "HEAD~1")


def test_tree_is_extracted_once_private_and_reused(tmp_path: Path, repo: Path) -> None:
    sha = resolve_rev(repo, "HEAD~1")
    cache = tmp_path / "store" / "baselines"
    tree = materialize(repo, sha, cache)
    assert tree == cache / sha
    assert (tree / "src" / "pkg_b1" / "mod.py").read_text() == "VALUE = 1\n"
    assert stat.S_IMODE(tree.stat().st_mode) == 0o700
    marker = next(tree.glob(".perfreplay-complete"))
    before = marker.stat().st_mtime_ns
    assert materialize(repo, sha, cache) == tree
    assert marker.stat().st_mtime_ns == before  # reused, not extracted again
    assert [p.name for p in cache.iterdir()] == [sha]  # no temporary folder left behind


def _extract(args: tuple[str, str, str]) -> str:
    repo, sha, cache = args
    return str(materialize(Path(repo), sha, Path(cache)))


def test_two_sessions_at_once_share_one_tree(tmp_path: Path, repo: Path) -> None:
    sha = resolve_rev(repo, "HEAD")
    cache = tmp_path / "baselines"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        trees = pool.map(_extract, [(str(repo), sha, str(cache))] * 8)
    assert set(trees) == {str(cache / sha)}
    assert (cache / sha / "src" / "pkg_b1" / "mod.py").read_text() == "VALUE = 2\n"
    assert [p.name for p in cache.iterdir()] == [sha]


def test_roots_map_a_src_layout_into_the_tree(
    tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(repo / "src"))
    monkeypatch.delitem(sys.modules, "pkg_b1", raising=False)
    baseline = Baseline.prepare("HEAD~1", repo, tmp_path / "baselines")
    roots = roots_for(baseline, "pkg_b1.mod", sys.path)
    assert roots.candidate_root == (repo / "src").resolve()
    assert roots.baseline_root == baseline.tree / "src"
    assert roots.baseline_file == baseline.tree / "src" / "pkg_b1" / "mod.py"
    assert not roots.new_at_rev
    path = worker_pythonpath(roots).split(":")
    assert path[0] == str(baseline.tree / "src")
    assert str(repo / "src") not in path  # today's copy cannot shadow the baseline


def test_module_outside_the_repository_is_refused(tmp_path: Path, repo: Path) -> None:
    baseline = Baseline.prepare("HEAD", repo, tmp_path / "baselines")
    with pytest.raises(BaselineError, match="outside the git repository.*pip install -e"):
        roots_for(baseline, "pytest", sys.path)


def test_differing_extensions(tmp_path: Path) -> None:
    today, then = tmp_path / "today", tmp_path / "then"
    for root in (today, then):
        (root / "pkg").mkdir(parents=True)
        (root / "pkg" / "same.so").write_bytes(b"same")
    (today / "pkg" / "fast.so").write_bytes(b"built today")
    (then / "pkg" / "fast.so").write_bytes(b"built then")
    (today / "pkg" / "new.pyd").write_bytes(b"only today")
    (today / ".venv" / "lib").mkdir(parents=True)
    (today / ".venv" / "lib" / "ignored.so").write_bytes(b"an environment, not the code")
    assert differing_extensions(today, then) == ["pkg/fast.so", "pkg/new.pyd"]
    assert differing_extensions(then, then) == []


def test_shard_of_is_stable_and_in_range() -> None:
    # SHA-256 of the id, not hash(): the same shard in every process and on every machine.
    assert shard_of("49e8bf918a39", 4) == 1
    assert shard_of("0123456789ab", 7) == 1
    assert shard_of("ffffffffffff", 5) == 4
    assert {shard_of(f"{i:012x}", 3) for i in range(60)} == {1, 2, 3}
    assert all(shard_of(f"{i:012x}", 1) == 1 for i in range(10))
