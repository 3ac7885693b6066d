"""Paired A/B against a git baseline, through real pytest sessions over real git repositories.

Each test builds a repository with two revisions, captures real snapshots with
PERFREPLAY_CAPTURE=1 in a subprocess, then runs ``pytest --perf-replay
--perf-replay-baseline=REV``. Verdicts are checked for their direction on a 2x change, never
for a timing figure.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

MODELS = """
class Order:
    def __init__(self, n):
        self.n = n
"""

WORK = """
from pytest_perfreplay import capture


def _spin(n):
    total = 0
    for i in range(n):
        total = (total * 31 + i) % 1_000_003
    return total


@capture
def work(order):
    return _spin(order.n)
"""

WORK_2X = WORK.replace("return _spin(order.n)", "_spin(order.n)\n    return _spin(order.n)")

TRAFFIC = """
from shop.models import Order
from shop.work import work

for n in NS:
    work(Order(n))
"""


def git(cwd: Path, *args: str) -> str:
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
    )
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def commit(root: Path, message: str) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD")


def make_repo(
    root: Path,
    first: dict[str, str],
    second: dict[str, str] | None = None,
    *,
    package: str = "shop",
    ns: tuple[int, ...] = (20_000,),
    python: str = sys.executable,
) -> None:
    """Commit ``first``, then ``second`` on top (if given), then capture the traffic."""
    git(root, "init", "-q")
    write(root, {".gitignore": ".perfreplay/\n*.json\n*.xml\n__pycache__/\n", **first})
    commit(root, "first")
    if second is not None:
        write(root, second)
        commit(root, "second")
    capture(root, package, ns, python)


def capture(root: Path, package: str, ns: tuple[int, ...], python: str) -> None:
    traffic = TRAFFIC.replace("NS", repr(list(ns))).replace("shop.", f"{package}.")
    (root / "traffic_run.py").write_text(traffic)
    env = dict(os.environ, PERFREPLAY_CAPTURE="1", PERFREPLAY_STORE=str(root / ".perfreplay"))
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "src")])
    subprocess.run([python, "traffic_run.py"], cwd=root, env=env, check=True, timeout=120)
    (root / "traffic_run.py").unlink()


def shop(work: str = WORK, models: str = MODELS, prefix: str = "") -> dict[str, str]:
    return {
        f"{prefix}shop/__init__.py": "",
        f"{prefix}shop/models.py": models,
        f"{prefix}shop/work.py": work,
    }


def flat_repo(pytester: pytest.Pytester, first: dict[str, str], second: dict[str, str]) -> None:
    make_repo(pytester.path, first, second)
    pytester.makeini("[pytest]\npythonpath = .\n")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--perf-replay", "--perf-replay-max-time=6", "-p", "no:cacheprovider", *args
    )


def bench(pytester: pytest.Pytester, name: str = "b.json") -> list[dict[str, Any]]:
    return list(json.loads((pytester.path / name).read_text())["benchmarks"])


def test_a_real_2x_slowdown_is_called_slower_and_the_gate_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    flat_repo(pytester, shop(), shop(WORK_2X))
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = run(
        pytester,
        "--perf-replay-max-time=10",
        "--perf-replay-baseline=HEAD~1",
        "--perf-replay-fail-slower=20",
        "--benchmark-json=b.json",
        "--junitxml=j.xml",
    )
    result.assert_outcomes(failed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*change: *x slower [[]*] vs HEAD~1 (paired, same session, * process pairs, "
            "* pairs), significant*",
            "*perf gate (--perf-replay-fail-slower=20%)*",
        ]
    )
    assert "Traceback" not in result.stdout.str()
    sha = git(pytester.path, "rev-parse", "HEAD~1")
    (item,) = bench(pytester)
    paired = item["extra_info"]["paired"]
    assert paired["direction"] == "slower" and paired["significant"] is True
    assert 1.3 < paired["ratio"] < 4, paired  # a 2x change, on a shared, loaded machine
    assert paired["low"] <= paired["ratio"] <= paired["high"]
    assert (paired["rev"], paired["sha"], paired["unit"]) == ("HEAD~1", sha, "seconds")
    assert paired["deterministic"] is False
    # Waves of 4 pairs, at least two before the first look.
    assert paired["process_pairs"] >= 8 and paired["process_pairs"] % 4 == 0
    # JUnit properties for CI dashboards.
    props = {
        p.get("name"): p.get("value") for p in ET.parse(pytester.path / "j.xml").iter("property")
    }
    assert props["perfreplay_baseline"] == f"HEAD~1 {sha}"
    assert float(props["perfreplay_ratio"]) == pytest.approx(paired["ratio"], rel=1e-5)
    # The Markdown table for the GitHub job summary.
    text = summary.read_text()
    assert "| snapshot | ratio (candidate / baseline)" in text and "| FAIL |" in text
    # The ledger keeps the verdict with the revision and its sha.
    (ledger,) = (pytester.path / ".perfreplay" / "history").rglob("*.jsonl")
    entry = json.loads(ledger.read_text().splitlines()[-1])
    assert entry["paired"]["sha"] == sha and entry["paired"]["direction"] == "slower"
    # The baseline tree is extracted once, private, and reused by the next session.
    tree = pytester.path / ".perfreplay" / "baselines" / sha
    assert stat.S_IMODE(tree.stat().st_mode) == 0o700
    assert (tree / "shop" / "work.py").read_text() == WORK
    # A gate above the change passes the same comparison.
    again = run(
        pytester,
        "--perf-replay-max-time=10",
        "--perf-replay-baseline=HEAD~1",
        "--perf-replay-fail-slower=200",
    )
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines(["*x slower*vs HEAD~1*significant*"])


def test_identical_code_shows_no_significant_change(pytester: pytest.Pytester) -> None:
    flat_repo(pytester, shop(), shop(WORK_2X))
    # The working tree equals HEAD: an A/A comparison. A 3% band keeps a shared, loaded
    # machine from turning noise into a call; the verdict must not be "significant".
    result = run(
        pytester,
        "--perf-replay-baseline=HEAD",
        "--perf-replay-min-effect=3",
        "--perf-replay-fail-slower=5",
        "--perf-replay-processes=3",
        "--benchmark-json=b.json",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*no significant change vs HEAD (paired, same session, * process pairs, * pairs;*"]
    )
    paired = bench(pytester)[0]["extra_info"]["paired"]
    assert paired["process_pairs"] >= 6 and paired["process_pairs"] % 3 == 0  # waves of 3
    assert paired["significant"] is False and paired["direction"] == "same"
    assert 0.5 < paired["ratio"] < 2, paired  # a sanity bound; the call is what matters


def test_both_sides_read_their_bytecode_from_one_cache(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A working tree with a __pycache__ against a fresh baseline tree without one: both
    sides' modules are compiled once into the shared cache and read from there, so neither
    side runs code compiled from source while the other runs unmarshalled code."""
    cache = pytester.path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    make_repo(pytester.path, shop())
    pytester.makeini("[pytest]\npythonpath = .\n")
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run(
        [sys.executable, "-c", "import shop.work"], cwd=pytester.path, env=env, check=True
    )
    (stale,) = (pytester.path / "shop" / "__pycache__").glob("work.*.pyc")
    stamp = stale.stat().st_mtime_ns
    result = run(pytester, "--perf-replay-baseline=HEAD", "--perf-replay-min-effect=3")
    result.assert_outcomes(passed=1)
    sha = git(pytester.path, "rev-parse", "HEAD")
    prefix = cache / "perfreplay" / "pycache"
    for tree in (pytester.path, pytester.path / ".perfreplay" / "baselines" / sha):
        # PYTHONPYCACHEPREFIX mirrors the source's absolute folder, without __pycache__.
        mirrored = prefix / tree.resolve().relative_to("/") / "shop"
        assert list(mirrored.glob("work.*.pyc")), f"no cached bytecode for {tree}"
    assert stale.stat().st_mtime_ns == stamp  # the tree's own __pycache__ is left alone


def test_a_speedup_reads_faster(pytester: pytest.Pytester) -> None:
    flat_repo(pytester, shop(WORK_2X), shop())
    result = run(pytester, "--perf-replay-baseline=HEAD~1", "--perf-replay-fail-slower=1")
    result.assert_outcomes(passed=1)  # faster never fails the gate
    result.stdout.fnmatch_lines(["*change: *x faster [[]*] vs HEAD~1 (paired*), significant*"])


def test_not_a_git_repository_and_unknown_revision(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x(): pass")
    result = run(pytester, "--perf-replay-baseline=HEAD")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--perf-replay-baseline: * is not in a git repository*"])
    git(pytester.path, "init", "-q")
    write(pytester.path, {"a.py": "x = 1\n"})
    commit(pytester.path, "one")
    result = run(pytester, "--perf-replay-baseline=no-such-branch")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown revision 'no-such-branch'*"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_target_new_at_the_revision_is_timed_alone(pytester: pytest.Pytester) -> None:
    # The second revision adds the module (and so the target) that was captured.
    extra = {"shop/extra.py": WORK.replace("def work", "def fresh")}
    make_repo(pytester.path, shop(), {**shop(), **extra})
    pytester.makeini("[pytest]\npythonpath = .\n")
    env = dict(os.environ, PERFREPLAY_CAPTURE="1", PERFREPLAY_STORE=".perfreplay")
    code = "from shop.models import Order\nfrom shop.extra import fresh\nfresh(Order(5000))\n"
    subprocess.run([sys.executable, "-c", code], cwd=pytester.path, env=env, check=True)
    # ... and a function added to a module that exists at both revisions.
    write(pytester.path, {"shop/work.py": WORK + "\n\n@capture\ndef added(order):\n    return 1\n"})
    commit(pytester.path, "third")
    code = "from shop.models import Order\nfrom shop.work import added\nadded(Order(1))\n"
    subprocess.run([sys.executable, "-c", code], cwd=pytester.path, env=env, check=True)
    result = run(pytester, "--perf-replay-baseline=HEAD~2", "-k", "fresh or added")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["*new at HEAD~2 (*): shop.extra does not exist there; timed the candidate alone*"]
    )
    result.stdout.fnmatch_lines(["*new at HEAD~2 (*)*'added' no longer exists*"])


def test_arguments_that_do_not_unpickle_at_the_baseline_name_the_class(
    pytester: pytest.Pytester,
) -> None:
    renamed = MODELS.replace("class Order", "class Ticket")
    flat_repo(pytester, shop(models=renamed, work=WORK), shop())
    result = run(pytester, "--perf-replay-baseline=HEAD~1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*do not unpickle against the classes at HEAD~1*class shop.models.Order is missing*"]
    )
    assert "Traceback" not in result.stdout.str()


def test_differing_compiled_extension_asks_for_the_baseline_build(
    pytester: pytest.Pytester,
) -> None:
    flat_repo(pytester, shop(), shop(WORK_2X))
    # A locally built extension is not in git: the baseline tree cannot have the same one.
    (pytester.path / "shop" / "_speed.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    result = run(pytester, "--perf-replay-baseline=HEAD~1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*compiled extensions differ*shop/_speed.cpython-311-x86_64-linux-gnu.so*"
            "the baseline's build is needed*"
        ]
    )


def test_shards_split_the_snapshots_deterministically(pytester: pytest.Pytester) -> None:
    make_repo(pytester.path, shop(), ns=tuple(range(1000, 1013)))
    pytester.makeini("[pytest]\npythonpath = .\n")

    def ids(*args: str) -> set[str]:
        out = pytester.runpytest_subprocess(
            "--perf-replay", "--collect-only", "-q", "-p", "no:cacheprovider", *args
        )
        return {line for line in out.stdout.lines if line.startswith("perfreplay::")}

    everything = ids()
    assert len(everything) == 13
    shards = [ids(f"--perf-replay-shard={i}/3") for i in (1, 2, 3)]
    assert set().union(*shards) == everything
    assert sum(len(s) for s in shards) == len(everything)  # disjoint
    assert ids("--perf-replay-shard=2/3") == shards[1]  # deterministic
    assert ids("--perf-replay-shard=1/1") == everything
    # The ini twin gives the same split.
    pytester.makeini("[pytest]\npythonpath = .\nperf_replay_shard = 2/3\n")
    assert ids() == shards[1]
    for bad in ("0/3", "4/3", "x/2", "3"):
        result = pytester.runpytest_subprocess("--perf-replay", f"--perf-replay-shard={bad}")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*--perf-replay-shard: *I/N*"])


def _venv(path: Path) -> Path:
    """A fresh venv that sees this environment's packages (pytest, the plugin) via a .pth."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    py = path / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = [p for p in sys.path if p.endswith("site-packages")]
    # addsitedir, not a bare path: the .pth files there (this plugin's own editable
    # install among them) must be processed too.
    lines = [f"import site; site.addsitedir({p!r})" for p in ours]
    Path(site, "_outer.pth").write_text("\n".join(lines) + "\n")
    return py


PYPROJECT = """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "LAYOUT-shop"
version = "0"
"""


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["src", "flat"])
def test_editable_install_layouts(pytester: pytest.Pytester, tmp_path: Path, layout: str) -> None:
    """``pip install -e`` into a venv: the baseline is still found through the repository."""
    prefix = "src/" if layout == "src" else ""
    project = {"pyproject.toml": PYPROJECT.replace("LAYOUT", layout), **shop(prefix=prefix)}
    if layout == "flat":
        project["setup.cfg"] = "[options]\npackages = shop\n"
    root = pytester.path
    git(root, "init", "-q")
    write(root, {".gitignore": ".perfreplay/\n*.json\n__pycache__/\n*.egg-info/\n", **project})
    commit(root, "first")
    write(root, {f"{prefix}shop/work.py": WORK_2X})
    commit(root, "second")
    py = _venv(tmp_path / "venv")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "-q",
            "--no-deps",
            "-e",
            str(root),
        ],
        check=True,
        timeout=300,
    )
    env = dict(os.environ, PERFREPLAY_CAPTURE="1", PERFREPLAY_STORE=str(root / ".perfreplay"))
    env.pop("PYTHONPATH", None)
    code = "from shop.models import Order\nfrom shop.work import work\nwork(Order(20000))\n"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Imported through the editable install, from outside the repository.
    where = subprocess.run(
        [str(py), "-c", "import shop.work; print(shop.work.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).resolve() == (root / prefix / "shop" / "work.py").resolve()
    subprocess.run([str(py), "-c", code], cwd=elsewhere, env=env, check=True)
    env.pop("PERFREPLAY_CAPTURE")
    done = subprocess.run(
        [
            str(py),
            "-m",
            "pytest",
            "--perf-replay",
            "--perf-replay-max-time=6",
            "--perf-replay-baseline=HEAD~1",
            "-p",
            "no:cacheprovider",
            "--benchmark-json=b.json",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "x slower [" in done.stdout and "vs HEAD~1 (paired" in done.stdout, done.stdout
    paired = json.loads((root / "b.json").read_text())["benchmarks"][0]["extra_info"]["paired"]
    assert paired["direction"] == "slower" and paired["ratio"] > 1.5


@pytest.mark.pyspy
def test_profile_both_sides_scaled_by_the_paired_ratio(pytester: pytest.Pytester) -> None:
    flat_repo(pytester, shop(), shop(WORK_2X))
    slower = run(pytester, "--perf-replay-baseline=HEAD~1", "--perf-replay-profile")
    slower.assert_outcomes(passed=1)
    slower.stdout.fnmatch_lines(
        ["*vs iteration HEAD~1 (*), per call: before *, after * (*x slower)*", "*_spin*"]
    )
    sha = git(pytester.path, "rev-parse", "HEAD~1")[:12]
    assert list((pytester.path / ".perfreplay" / "profiles" / f"baseline-{sha}").rglob("*.json"))
    same = run(pytester, "--perf-replay-baseline=HEAD", "--perf-replay-profile")
    same.assert_outcomes(passed=1)
    out = same.stdout.str()
    if "no significant change vs HEAD" in out:
        same.stdout.fnmatch_lines(
            ["*vs iteration HEAD (*), per call:*", "*no function moved beyond the noise floor*"]
        )
    else:
        # A false alarm on identical code (a CI run: "1.048x faster [1.011-1.087]"; the
        # verdict allows about 5% of A/A comparisons that): the diff's scale must still be
        # the paired ratio, so its movers are the verdict's, not the profiler's noise.
        verdict = re.search(r"change: ([\d.]+)x (faster|slower) \[", out)
        scaled = re.search(r"vs iteration HEAD \(.*per call: .*\(([\d.]+)x (faster|slower)\)", out)
        assert verdict and scaled, out
        assert scaled.group(2) == verdict.group(2), out
        assert abs(float(scaled.group(1)) - float(verdict.group(1))) < 0.006, out


def test_help_lists_the_paired_flags(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "*--perf-replay-baseline=*",
            "*--perf-replay-min-effect=*",
            "*--perf-replay-fail-slower=*",
            "*--perf-replay-shard=*",
            "*perf_replay_baseline*",
        ]
    )


def test_baseline_that_cannot_import_the_target_is_an_error_not_new(
    pytester: pytest.Pytester,
) -> None:
    broken = "import not_installed_anywhere_b1\n" + WORK
    flat_repo(pytester, shop(broken), shop())
    result = run(pytester, "--perf-replay-baseline=HEAD~1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the code at HEAD~1 (*) cannot import the target*"])
    assert "new at" not in result.stdout.str()


def test_a_real_worker_says_where_its_warmup_ended_and_warms_briefly_when_told(
    tmp_path: Path,
) -> None:
    from pytest_perfreplay.replay.paired import (
        LATER_WARMUP_MIN,
        WorkerProcess,
        later_warmup,
        side_env,
    )
    from pytest_perfreplay.replay.warmup import WARMUP_WINDOW
    from pytest_perfreplay.replay.workers import WorkerJob

    make_repo(tmp_path, shop(), ns=(2_000,))
    store = tmp_path / ".perfreplay"
    (snapshot,) = (store / "snapshots").rglob("*.prsnap")
    job = WorkerJob(str(snapshot), str(store), False, None, {"gc": "collect"})
    worker = WorkerProcess(job, env=side_env(str(tmp_path), 1), cwd=tmp_path, label="candidate #1")
    try:
        worker.ready()
        first = worker.warm(50, 30.0)
        # The detector needs two windows before it can settle, and a window past the end.
        assert first["settled"], first
        assert first["calls"] > 2 * WARMUP_WINDOW
        assert first["calls"] >= first["settled_at"] + WARMUP_WINDOW
        later = later_warmup([(first, first)], 50)
        assert later == max(LATER_WARMUP_MIN, first["settled_at"] + 1)
        assert worker.warm(later, 30.0)["calls"] == later
    finally:
        worker.close()


def test_pairs_go_round_the_usable_cpus_and_one_cpu_means_no_pinning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import random

    from pytest_perfreplay.replay import paired

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {5, 2, 9}, raising=False)
    cpus = paired.pair_cpus(7, random.Random(3))
    assert set(cpus) == {2, 5, 9}
    start = [2, 5, 9].index(cpus[0])  # type: ignore[arg-type]
    assert cpus == [[2, 5, 9][(start + i) % 3] for i in range(7)]
    starts = {paired.pair_cpus(1, random.Random(seed))[0] for seed in range(40)}
    assert starts == {2, 5, 9}  # the first pair's CPU is not always the same one
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {4}, raising=False)
    assert paired.pair_cpus(3, random.Random(0)) == [None, None, None]
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert paired.pair_cpus(2, random.Random(0)) == [None, None]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux CPU affinity")
def test_real_workers_of_a_pair_share_one_cpu_within_the_allowed_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import random

    from pytest_perfreplay.replay.paired import close_pairs, start_pairs
    from pytest_perfreplay.replay.workers import WorkerJob

    make_repo(tmp_path, shop(), ns=(2_000,))
    store = tmp_path / ".perfreplay"
    (snapshot,) = (store / "snapshots").rglob("*.prsnap")
    job = WorkerJob(str(snapshot), str(store), False, None, {"gc": "collect"})
    allowed = os.sched_getaffinity(0)
    monkeypatch.chdir(tmp_path)  # the candidate side imports today's tree from the cwd

    def start(pairs: int) -> list[Any]:
        return start_pairs(
            job,
            job,
            process_pairs=pairs,
            baseline_path=str(tmp_path),
            baseline_cwd=tmp_path,
            rng=random.Random(),
        )

    if len(allowed) >= 2:
        pairs = start(2 * len(allowed))
        try:
            seen = []
            for base, cand in pairs:
                assert base.cpu is not None and base.cpu == cand.cpu
                assert os.sched_getaffinity(base.proc.pid) == {base.cpu}
                assert os.sched_getaffinity(cand.proc.pid) == {base.cpu}
                seen.append(base.cpu)
            assert set(seen) == allowed
            assert all(seen.count(c) == 2 for c in allowed)
        finally:
            close_pairs(pairs)
    # Narrowed to one CPU (as by taskset): nothing to spread over, workers inherit the mask.
    one = {min(allowed)}
    os.sched_setaffinity(0, one)
    try:
        pairs = start(2)
        try:
            for base, cand in pairs:
                assert base.cpu is None and cand.cpu is None
                assert os.sched_getaffinity(base.proc.pid) == one
                assert os.sched_getaffinity(cand.proc.pid) == one
        finally:
            close_pairs(pairs)
    finally:
        os.sched_setaffinity(0, allowed)
