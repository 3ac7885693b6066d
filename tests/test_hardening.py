"""Regression tests for the hardening pass: each reproduces an attack or a fault for real."""

from __future__ import annotations

import contextlib
import gc
import importlib
import io
import os
import stat
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import pytest

from pytest_perfreplay.capture.decorator import capture, stats
from pytest_perfreplay.cli import main as cli_main
from pytest_perfreplay.errors import SnapshotError
from pytest_perfreplay.snapshot import format as fmt
from pytest_perfreplay.snapshot.format import Keyring, dumps, encode, new_snapshot_id, read_header
from pytest_perfreplay.snapshot.store import Store, target_slug
from tests.capture_helpers import fixtures, hostile, targets
from tests.capture_helpers.fixtures import KEY, Cap

capmod = importlib.import_module("pytest_perfreplay.capture.decorator")
cap = fixtures.cap
capture_log = fixtures.capture_log


def cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(argv)
    return code, out.getvalue(), err.getvalue()


def snapshot_bytes(keyring: Keyring | None, **fields: Any) -> bytes:
    base: dict[str, Any] = {"id": new_snapshot_id(), "target": "svc:f", "duration": 0.5}
    base.update(fields)
    return encode(base, {"args": dumps(((1,), {})).data}, keyring=keyring)


# -- unsigned snapshots: command line or environment only, and loud ---------------------


@pytest.fixture
def unsigned_project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(svc="def f(x):\n    return x\n")
    folder = pytester.path / ".perfreplay" / "snapshots" / "svc-f"
    folder.mkdir(parents=True)
    (folder / "slot-000.prsnap").write_bytes(snapshot_bytes(None))
    return pytester


def replay(p: pytest.Pytester, *args: str, **env: str) -> pytest.RunResult:
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        return p.runpytest_subprocess(
            "--perf-replay", "--perf-replay-max-time=0.2", "-p", "no:cacheprovider", "-v", *args
        )


def test_allow_unsigned_in_ini_is_refused(unsigned_project: pytest.Pytester) -> None:
    unsigned_project.makeini("[pytest]\npythonpath = .\nperf_replay_allow_unsigned = true\n")
    result = replay(unsigned_project)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*perf_replay_allow_unsigned is refused*"])


@pytest.mark.parametrize("how", ["flag", "env"])
def test_unsigned_items_are_marked_loudly(unsigned_project: pytest.Pytester, how: str) -> None:
    unsigned_project.makeini("[pytest]\npythonpath = .\n")
    refused = replay(unsigned_project)
    refused.assert_outcomes(failed=1)
    refused.stdout.fnmatch_lines(["*unsigned snapshot refused*"])
    if how == "flag":
        result = replay(unsigned_project, "--perf-replay-allow-unsigned")
    else:
        result = replay(unsigned_project, PERFREPLAY_ALLOW_UNSIGNED="1")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*svc:f*[[]UNSIGNED[]] PASSED*",
            "*note: UNSIGNED: *slot-000.prsnap was loaded without a verified signature*",
            "!! 1 UNSIGNED snapshot(s) were unpickled without a verified signature*",
        ]
    )


# -- paths and junk from headers --------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [("id", "../../x"), ("id", "/tmp/x"), ("id", "a\x00b"), ("target", "../../x:f"),
     ("target", "svc:f/../../x"), ("target", "svc:\x1b[2Jf"), ("captured_at", 1e300),
     ("duration", 1e308), ("duration", -1.0)],
)  # fmt: skip
def test_header_fields_that_would_build_bad_paths_or_crash_are_refused(
    field: str, value: Any
) -> None:
    data = snapshot_bytes(Keyring.from_secrets(KEY), **{field: value})
    with pytest.raises(SnapshotError, match="corrupt header"):
        read_header(data)


def test_list_survives_junk_headers_and_pull_cannot_escape(tmp_path: Path) -> None:
    keyring = Keyring.from_secrets(KEY)
    store = tmp_path / "store"
    folder = store / "snapshots" / "svc-f"
    folder.mkdir(parents=True)
    (folder / "slot-000.prsnap").write_bytes(snapshot_bytes(keyring, captured_at=1e300))
    (folder / "slot-001.prsnap").write_bytes(snapshot_bytes(keyring, id="../../escape"))
    (folder / "slot-002.prsnap").write_bytes(snapshot_bytes(keyring))
    code, out, err = cli(["list", "--store", str(store)])
    assert code == 0, err
    assert "1 snapshot(s)" in out and "2 unreadable file(s)" in out
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PERFREPLAY_KEY", KEY.decode())
        code, out, _ = cli(["prune", "--invalid", "--store", str(store)])
    assert code == 0 and "deleted 2 snapshot(s)" in out
    assert not (tmp_path / "escape").exists()


def test_control_characters_are_escaped_in_cli_output(tmp_path: Path) -> None:
    folder = tmp_path / "store" / "snapshots" / "svc-f"
    folder.mkdir(parents=True)
    (folder / "\x1b[2Jevil.prsnap").write_bytes(b"junk")
    code, out, _ = cli(["verify", "--store", str(tmp_path / "store")])
    assert code == 1
    assert "\x1b" not in out and "\\x1b[2Jevil.prsnap" in out


# -- slots cannot be squatted by unsigned claims ------------------------------------------


def test_a_planted_slot_claiming_a_huge_duration_is_replaced(cap: Cap) -> None:
    f = capture(max_snapshots=1)(targets.varied)
    folder = cap.store.target_dir(capmod.target_name(targets.varied))
    folder.mkdir(parents=True)
    planted = snapshot_bytes(None, target=capmod.target_name(targets.varied), duration=1e308)
    (folder / "slot-000.prsnap").write_bytes(planted)
    f(3, b"x")
    [snap] = cap.snapshots()  # verified: the planted file is gone
    assert snap.signed and snap.header.duration is not None and snap.header.duration < 1.0


# -- memory: the pickler's type verdicts are bounded --------------------------------------


def test_per_call_classes_are_not_kept_alive() -> None:
    fmt._RESOURCE_VERDICTS.clear()
    first = type("PerCall0", (), {})
    probe = weakref.ref(first)
    dumps(first())
    del first
    for i in range(1, 6000):
        dumps(type(f"PerCall{i}", (), {})())
    gc.collect()
    assert len(fmt._RESOURCE_VERDICTS) <= fmt._MAX_VERDICTS
    assert probe() is None


# -- containment --------------------------------------------------------------------------


def test_system_exit_from_a_reducer_never_reaches_the_caller(cap: Cap) -> None:
    f = capture(hostile.body)
    assert f(hostile.ExitOnPickle()) == "body ran"
    assert stats()["skipped"] == {"unpicklable": 1}


def test_interrupt_while_pickling_the_result_keeps_the_return_value(cap: Cap) -> None:
    value = hostile.InterruptOnPickle()
    f = capture(keep_result=True)(hostile.make_returner(value))
    assert f(1) is value  # the argument pickles; the result raises KeyboardInterrupt
    [snap] = cap.snapshots()
    assert snap.header["result_skipped"] == "unpicklable: KeyboardInterrupt"


def test_an_interrupt_of_the_function_itself_passes_unchanged(cap: Cap) -> None:
    f = capture(hostile.interrupted)
    with pytest.raises(KeyboardInterrupt):
        f(1)


def test_failures_turn_off_one_target_not_all(cap: Cap, capture_log: Any) -> None:
    broken = capture(targets.login)
    good = capture(targets.echo)
    # A file where the target's folder should be: every write fails with ENOTDIR.
    blocker = cap.store.target_dir(capmod.target_name(targets.login))
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"")
    for i in range(25):
        assert broken(f"u{i}", "pw") == f"u{i}:2"
    assert good(1) == ((1,), {})
    s = stats()
    assert s["active"] and s["captured"] == 1 and s["failures"] == 20
    assert any("turned off for tests.capture_helpers.targets:login" in r.getMessage()
               for r in capture_log.records)  # fmt: skip


def test_a_very_long_qualname_is_captured(cap: Cap) -> None:
    def f(x: int) -> int:
        return x

    f.__qualname__ = "Outer." + "very_long_name_" * 30 + "f"
    wrapped = capture(f)
    assert wrapped(1) == 1
    assert stats()["captured"] == 1 and stats()["failures"] == 0
    assert len(target_slug(capmod.target_name(f))) <= 200
    assert target_slug("a:" + "b" * 300) != target_slug("a:" + "b" * 299)


# -- permissions --------------------------------------------------------------------------


def test_history_folders_are_private(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(svc="def f(x):\n    return x\n")
    pytester.makeini("[pytest]\npythonpath = .\n")
    folder = pytester.path / ".perfreplay" / "snapshots" / "svc-f"
    folder.mkdir(parents=True)
    key = "history-test-key-0123456789"
    (folder / "slot-000.prsnap").write_bytes(snapshot_bytes(Keyring.from_secrets(key.encode())))
    os.umask(0o022)
    result = replay(pytester, PERFREPLAY_KEY=key)
    result.assert_outcomes(passed=1)
    history = pytester.path / ".perfreplay" / "history"
    made = [history, *history.rglob("*")]
    assert len(made) > 1
    for p in made:
        want = 0o700 if p.is_dir() else 0o600
        assert stat.S_IMODE(p.stat().st_mode) == want, p


if sys.platform == "win32":  # pragma: no cover
    pytestmark = pytest.mark.skip("POSIX permissions and FIFOs")


# -- capture never hangs or stalls the call -----------------------------------------------


def test_a_getstate_that_takes_a_lock_the_caller_holds_does_not_deadlock(
    tmp_path: Path,
) -> None:
    # In a subprocess with a timeout: before the fix this call never returned.
    code = f"""
import importlib
from pytest_perfreplay.capture.decorator import capture, configure, stats
from tests.capture_helpers import hostile
configure(enabled=True, store={str(tmp_path / "store")!r}, key=b"deadlock-test-key-0123456789")
f = capture(hostile.returns)
state = hostile.LockedState()
assert hostile.with_lock_held(state, f) is state
assert f(state) is state  # not held: captured
print(stats()["skipped"], stats()["captured"])
"""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{'blocked': 1} 1"


def test_slow_reducers_are_cut_off_by_the_time_cap(
    cap: Cap, monkeypatch: pytest.MonkeyPatch, capture_log: Any
) -> None:
    monkeypatch.setattr(capmod, "MAX_PICKLE_SECONDS", 0.2)
    f = capture(hostile.body)
    slow = [hostile.SlowReduce(0.05) for _ in range(100)]  # 5 s of reducers in all
    hostile.SlowReduce.calls = 0
    assert f(slow) == "body ran"
    assert stats()["skipped"] == {"blocked": 1}
    # Stopped at the cap: a 0.2 s cap lets a handful of 50 ms reducers run, not 100.
    assert hostile.SlowReduce.calls < 100
    assert any("in time" in r.getMessage() for r in capture_log.records)


# -- the store budget holds across processes ------------------------------------------------


def test_eight_writers_stay_within_the_budget(tmp_path: Path) -> None:
    root = tmp_path / "store"
    budget = 1 << 20
    env = dict(os.environ, PERFREPLAY_STORE_BUDGET=str(budget))
    repo = Path(__file__).resolve().parents[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.capture_helpers.budget_writer", str(root), "30"],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    captured = sum(int(o[0]) for o in outs)
    refused = sum(int(o[1]) for o in outs)
    used = sum(p.stat().st_size for p in Store(root).snapshot_paths())
    assert used <= budget, (used, captured)  # it was 7.7 MiB with 8 writers before
    assert captured >= 5 and refused > 0  # the budget was filled, then refused


# -- decompression is bounded by the declared size, streamed -----------------------------


def test_a_zstd_bomb_is_refused_without_inflating() -> None:
    import resource

    import zstandard

    # 512 MiB of zeros compress to well under a MiB; the header declares 1000 bytes.
    cobj = zstandard.ZstdCompressor().compressobj()
    bomb = b"".join(cobj.compress(bytes(1 << 20)) for _ in range(512)) + cobj.flush()
    assert len(bomb) < 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    meta: dict[str, Any] = {"name": "args", "size": len(bomb), "raw_size": 1000, "sha256": ""}
    with pytest.raises(SnapshotError, match="decompressed to the wrong size"):
        fmt._decompress(bomb, meta, None)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024  # streamed: it stopped one byte past the declared size
    meta["raw_size"] = 2 << 30  # a header that declares 2 GiB is refused before any work
    with pytest.raises(SnapshotError, match="over the .*PERFREPLAY_MAX_PAYLOAD_BYTES"):
        fmt._decompress(bomb, meta, None)
