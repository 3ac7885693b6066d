"""@capture: the decorator's surface, what it keeps, and what it never does to the call."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import random
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from pytest_perfreplay.capture.decorator import capture, configure, stats
from pytest_perfreplay.snapshot.format import Placeholder
from tests.capture_helpers import fixtures, targets
from tests.capture_helpers.fixtures import KEY, Cap

capture_module = importlib.import_module("pytest_perfreplay.capture.decorator")
cap = fixtures.cap
capture_log = fixtures.capture_log
fake_clock = fixtures.fake_clock

ROOT = Path(__file__).resolve().parents[1]


# -- the decorator's surface ----------------------------------------------------


def test_off_at_decoration_returns_the_function_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    capture_module._reset()
    configure(enabled=False)

    def f(x: int) -> int:
        return x

    assert capture(f) is f
    assert capture(sample_rate=0.5)(f) is f
    assert capture(force=True)(f) is not f


def test_bare_and_with_options_on_every_kind_of_callable(cap: Cap) -> None:
    class Shop:
        @capture
        def total(self, n: int) -> int:
            return n * 2

        @staticmethod
        @capture(keep_result=True)
        def tax(n: int) -> int:
            return n + 1

        @capture
        @classmethod
        def make(cls, n: int) -> int:
            return n - 1

        @capture(sample_rate=1.0)
        @staticmethod
        def outer_static(n: int) -> int:
            return n

    @capture(tags=("a",), name="grp")
    async def fetch(n: int) -> int:
        await asyncio.sleep(0)
        return n * 10

    assert Shop().total(2) == 4
    assert Shop.tax(2) == 3
    assert Shop.make(2) == 1
    assert Shop.outer_static(5) == 5
    assert asyncio.iscoroutinefunction(fetch)
    assert asyncio.run(fetch(3)) == 30
    headers = {s.header.target.rsplit(".", 1)[-1]: s.header for s in cap.snapshots()}
    assert set(headers) == {"total", "tax", "make", "outer_static", "fetch"}
    assert headers["fetch"].is_async
    assert headers["fetch"]["name"] == "grp" and headers["fetch"]["tags"] == ["a"]
    assert headers["tax"].has_result


@pytest.mark.parametrize(
    "bad, what",
    [
        (lambda: (yield 1), "generator"),
        (None, "async generator"),
        (targets.Client, "class"),
        (42, "int object"),
    ],
)
def test_misuse_raises_typeerror_naming_what_is_supported(cap: Cap, bad: Any, what: str) -> None:
    if bad is None:

        async def agen() -> Any:
            yield 1

        bad = agen
    with pytest.raises(TypeError, match=f"cannot decorate .*{what}.*supports plain functions"):
        capture(bad)


def test_option_validation_messages() -> None:
    with pytest.raises(ValueError, match="sample_rate must be between 0 and 1, got 2"):
        capture(sample_rate=2)
    with pytest.raises(ValueError, match="max_snapshots must be >= 1"):
        capture(max_snapshots=0)
    with pytest.raises(TypeError, match="redact= accepts"):
        capture(redact=[3.5], force=True)(targets.echo)


def test_not_sampled_calls_do_nothing(cap: Cap) -> None:
    f = capture(sample_rate=0.0)(targets.echo)
    for i in range(100):
        f(i)
    assert stats()["captured"] == 0
    assert cap.store.snapshot_paths() == []


def test_sample_rate_is_a_fraction(cap: Cap) -> None:
    f = capture(sample_rate=0.3, max_snapshots=10_000)(targets.echo)
    for i in range(600):
        f(i)
    assert 80 < stats()["captured"] < 280  # ~180 expected; the bounds are many sigmas wide


def test_sampling_leaves_the_random_module_alone(cap: Cap) -> None:
    # A service that seeds random for reproducible runs must get the same sequence with
    # the decorator sampling its calls.
    f = capture(sample_rate=0.3, max_snapshots=10_000)(targets.echo)
    random.seed(1234)
    expected = [random.random() for _ in range(5)]
    random.seed(1234)
    for i in range(200):
        f(i)
    assert 0 < stats()["captured"] < 200  # it did sample
    assert [random.random() for _ in range(5)] == expected


def test_sampling_differs_in_a_forked_child(cap: Cap) -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports its first gaps and leaves without pytest's teardown
        try:
            os.write(write, json.dumps([capture_module._gap(0.01) for _ in range(8)]).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = json.loads(os.read(read, 4096))
    os.close(read)
    parent = [capture_module._gap(0.01) for _ in range(8)]
    assert child != parent


def test_slower_than_keeps_only_slow_calls(cap: Cap, fake_clock: fixtures.FakeClock) -> None:
    f = capture(slower_than=0.02)(targets.takes)
    f(0.0)
    f(0.03)
    [snap] = cap.snapshots()
    assert snap.load_call() == ((0.03,), {})
    assert stats()["skipped"]["faster_than_threshold"] == 1


def test_arguments_are_kept_as_they_were_before_the_call(cap: Cap) -> None:
    f = capture(targets.sort_and_truncate)
    data = [3, 1, 2]
    assert f(data) == [1]
    [snap] = cap.snapshots()
    assert snap.load_call() == (([3, 1, 2],), {})


def test_aliasing_between_arguments_survives(cap: Cap) -> None:
    shared = [1, 2]
    capture(targets.echo)(shared, again=shared)
    args, kwargs = cap.snapshots()[0].load_call()
    assert args[0] is kwargs["again"]


def test_keep_result_keeps_return_values_and_exceptions(cap: Cap) -> None:
    @capture(keep_result=True)
    def div(a: int, b: int) -> float:
        return a / b

    assert div(6, 3) == 2
    with pytest.raises(ZeroDivisionError):
        div(1, 0)
    results = sorted((s.load_result() for s in cap.snapshots()), key=repr)
    assert ("return", 2.0) in results
    assert ("raise", ("builtins.ZeroDivisionError", "division by zero")) in results


def test_max_bytes_aborts_pickling_early_and_records_a_skip(cap: Cap) -> None:
    writes: list[int] = []

    class Counting:
        def __reduce__(self) -> Any:
            writes.append(1)
            return (int, (1,))

    f = capture(max_bytes=100_000)(targets.echo)
    big = [bytes(1000) for _ in range(1000)] + [Counting()]  # ~1 MB, the marker at the end
    assert f(big) == ((big,), {})
    assert stats()["skipped"] == {"too_large": 1}
    assert writes == []  # pickling stopped long before it reached the end
    assert cap.store.snapshot_paths() == []


def test_quota_keeps_the_slowest_calls(cap: Cap, fake_clock: fixtures.FakeClock) -> None:
    f = capture(max_snapshots=2)(targets.takes)
    for seconds in (0.001, 0.002, 0.008, 0.0005, 0.006):
        f(seconds)
    kept = sorted(s.load_call()[0][0] for s in cap.snapshots())
    assert kept == [0.006, 0.008]
    assert len(cap.store.snapshot_paths()) == 2


def test_identical_payloads_are_stored_once(cap: Cap) -> None:
    f = capture(targets.echo)
    for _ in range(5):
        f([1, 2, 3], k="v")
    assert len(cap.store.snapshot_paths()) == 1
    assert stats()["skipped"].get("duplicate", 0) + stats()["skipped"].get("not_slower", 0) == 4


def test_header_records_what_replay_and_people_need(
    cap: Cap, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERFREPLAY_GIT_COMMIT", "abc123")
    capture_module._COMMITS.clear()
    capture(targets.echo)(1)
    h = cap.snapshots()[0].header
    for key in (
        "id", "target", "async", "captured_at", "host", "pid", "duration", "trace_id",
        "versions", "git_commit", "code_hash", "payload", "redactions", "placeholders",
        "keep_result", "sig", "format",
    ):  # fmt: skip
        assert key in h.fields, key
    assert h.target == "tests.capture_helpers.targets:echo"
    assert h["git_commit"] == "abc123"
    assert h["pid"] == os.getpid()
    assert set(h["versions"]) >= {"python", "cloudpickle", "perfreplay"}


def test_git_commit_is_read_from_dot_git_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in capture_module.COMMIT_ENVS:
        monkeypatch.delenv(var, raising=False)
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text("deadbeef\n")
    module_file = tmp_path / "repo" / "pkg" / "mod.py"
    module_file.parent.mkdir()
    capture_module._COMMITS.clear()
    assert capture_module.git_commit(str(module_file)) == "deadbeef"
    (git / "refs" / "heads" / "main").write_text("changed\n")
    assert capture_module.git_commit(str(module_file)) == "deadbeef"  # cached


# -- trace ids --------------------------------------------------------------------


def test_trace_id_from_an_active_opentelemetry_span(cap: Cap) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    f = capture(targets.echo)
    with tracer.start_as_current_span("slow-request") as span:
        f("in span")
        expected = f"{span.get_span_context().trace_id:032x}"
    f("outside")
    by_arg = {s.load_call()[0][0]: s.header["trace_id"] for s in cap.snapshots()}
    assert by_arg["in span"] == expected
    assert by_arg["outside"] is None


def test_trace_id_from_an_active_sentry_span(cap: Cap) -> None:
    import sentry_sdk

    sentry_sdk.init(dsn=None, traces_sample_rate=1.0)
    f = capture(targets.echo)
    # sentry-sdk 3 dropped start_transaction: a root span is the transaction there.
    start = getattr(sentry_sdk, "start_transaction", None) or sentry_sdk.start_span
    with start(name="req") as txn:
        f("in txn")
        expected = txn.trace_id
    assert expected
    [snap] = cap.snapshots()
    assert snap.header["trace_id"] == expected


# -- redaction ----------------------------------------------------------------------

SECRETS = [
    "pw-DICT-1a2b",
    "pw-NESTED-3c4d",
    "tok-TUPLE-5e6f",
    "bearer-HEADER-7a8b",
    "key-FROZEN-9c0d",
    "cookie-ATTR-1e2f",
    "pw-NAMEDTUPLE-3a4b",
    "pw-POSITIONAL-5c6d",
    "secret-TYPE-7e8f",
    "custom-CALLABLE-9a0b",
    targets.SECRET_TOKEN,
]


def test_default_redaction_scrubs_secrets_everywhere_and_records_them(cap: Cap) -> None:
    @capture(redact=[targets.Secret, lambda key, value: key == "x_custom"])
    def handler(*args: Any, **kwargs: Any) -> int:
        return len(args) + len(kwargs)

    login = capture(targets.login)
    payload: dict[str, Any] = {
        "user": "ann",
        "password": "pw-DICT-1a2b",
        "items": [{"Password": "pw-NESTED-3c4d", "qty": 1}],
        "pair": ("x", {"api_token": "tok-TUPLE-5e6f"}),
        "max_tokens": 100,  # a number under a denylisted key is kept
        "x_custom": "custom-CALLABLE-9a0b",
    }
    client = targets.Client("https://api", {"Authorization": "bearer-HEADER-7a8b"})
    frozen = targets.FrozenConfig("svc", "key-FROZEN-9c0d")
    holder = targets.Holder("cookie-ATTR-1e2f", [1, 2])
    creds = targets.Creds("ann", "pw-NAMEDTUPLE-3a4b")
    before = repr((payload, client, frozen, holder, creds))

    assert (
        handler(
            payload,
            client,
            frozen,
            holder,
            creds,
            targets.Secret("secret-TYPE-7e8f"),
            fn=targets.make_closure(),
        )
        == 7
    )
    assert login("ann", "pw-POSITIONAL-5c6d") == "ann:18"
    assert repr((payload, client, frozen, holder, creds)) == before  # the caller's objects

    on_disk = cap.raw_bytes()
    for secret in SECRETS:
        assert secret.encode() not in on_disk, secret
    snaps = {s.header.target.split(":")[1]: s for s in cap.snapshots()}
    paths = {
        r["path"]
        for r in snaps[
            "test_default_redaction_scrubs_secrets_everywhere_and_records_them.<locals>.handler"
        ].header["redactions"]
    }
    assert "args[0]['password']" in paths
    assert "args[0]['items'][0]['Password']" in paths
    assert "args[1].headers['Authorization']" in paths
    assert "args[2].api_key" in paths
    assert "args[3].session_cookie" in paths
    assert "args[4].password" in paths
    assert "args[0]['x_custom']" in paths
    assert any(p.startswith("kwargs['fn'].<global SECRET_TOKEN>") for p in paths)
    (args, kwargs) = snaps[
        "test_default_redaction_scrubs_secrets_everywhere_and_records_them.<locals>.handler"
    ].load_call()
    assert args[0]["max_tokens"] == 100 and args[0]["user"] == "ann"
    assert args[1].base_url == "https://api" and args[4].user == "ann"
    assert args[5] == "<redacted>"
    assert kwargs["fn"](1) == 1 + len("<redacted>")
    login_snap = snaps["login"]
    assert login_snap.load_call() == (("ann", "<redacted>"), {})
    assert login_snap.header["redactions"] == [{"path": "args[1] (password)", "by": "parameter"}]


def test_default_redaction_by_name_uses_the_byte_prefilter_and_misses_nothing(cap: Cap) -> None:
    # Only key names decide here, so capture pickles first and walks only on a hit in
    # the bytes; namedtuple fields (not in the stream) are reported by the pickler.
    handler = capture(targets.echo)
    payload = {"password": "pw-DICT-1a2b", "items": [{"API-Token": "tok-TUPLE-5e6f"}]}
    client = targets.Client("https://api", {"Authorization": "bearer-HEADER-7a8b"})
    frozen = targets.FrozenConfig("svc", "key-FROZEN-9c0d")
    holder = targets.Holder("cookie-ATTR-1e2f", [1, 2])
    creds = targets.Creds("ann", "pw-NAMEDTUPLE-3a4b")
    handler(payload, client, frozen, holder, fn=targets.make_closure())
    handler(creds)  # a namedtuple alone: its field names never appear in the pickle
    handler({"user": "ann", "qty": 3})  # clean: nothing to redact
    on_disk = cap.raw_bytes()
    for secret in [*SECRETS[:5], "pw-NAMEDTUPLE-3a4b", targets.SECRET_TOKEN]:
        assert secret.encode() not in on_disk, secret
    snaps = {
        s.load_call()[0][0].__class__.__name__ + str(len(s.load_call()[0])): s
        for s in cap.snapshots()
    }
    assert {r["path"] for r in snaps["Creds1"].header["redactions"]} == {"args[0].password"}
    paths = {r["path"] for r in snaps["dict4"].header["redactions"]}
    assert {
        "args[0]['password']",
        "args[0]['items'][0]['API-Token']",
        "args[1].headers['Authorization']",
        "args[2].api_key",
        "args[3].session_cookie",
    } <= paths
    clean = [s for s in cap.snapshots() if s.load_call()[0][0] == {"user": "ann", "qty": 3}]
    assert len(clean) == 1 and clean[0].header["redactions"] == []


def test_redaction_can_be_turned_off(cap: Cap) -> None:
    capture(redact=False)(targets.echo)(password="plain")
    assert cap.snapshots()[0].load_call() == ((), {"password": "plain"})


def test_clean_arguments_are_not_copied(cap: Cap) -> None:
    from pytest_perfreplay.capture.redact import Redactor, scrub_call

    records = [{"id": i, "tags": ["a", "b"]} for i in range(50)]
    args, kwargs, found = scrub_call(Redactor(), (records,), {}, (), ())
    assert args[0] is records and found == []


def test_secret_in_a_cycle_is_scrubbed_in_a_copy_of_the_cycle(cap: Cap) -> None:
    node: dict[str, Any] = {"password": "pw-CYCLE-0000"}
    node["self"] = node
    f = capture(targets.echo)
    assert f(node) == ((node,), {})
    assert node["password"] == "pw-CYCLE-0000"  # the caller's object is untouched
    assert b"pw-CYCLE-0000" not in cap.raw_bytes()
    (kept,), _ = cap.snapshots()[0].load_call()
    assert kept["self"] is kept and kept["password"] == "<redacted>"


def test_secret_in_a_cycle_is_a_recorded_skip_under_strict(cap: Cap) -> None:
    node: dict[str, Any] = {"password": "pw-CYCLE-0000"}
    node["self"] = node
    f = capture(redact="strict")(targets.echo)
    assert f(node) == ((node,), {})
    assert stats()["skipped"] == {"redaction": 1}
    assert b"pw-CYCLE-0000" not in cap.raw_bytes()


# -- resources and unpicklables -------------------------------------------------------


def test_named_resources_become_placeholders_with_paths(cap: Cap) -> None:
    @capture(resources=("db",))
    def query(db: Any, sql: str) -> str:
        return sql

    conn = sqlite3.connect(":memory:")
    assert query(conn, "select 1") == "select 1"
    [snap] = cap.snapshots()
    assert snap.header.placeholders == [
        {"name": "db", "type": "sqlite3.Connection", "path": "args[0]", "auto": False}
    ]
    args, _ = snap.load_call()
    assert args[0] == Placeholder("db", "sqlite3.Connection")
    assert snap.load_call(bindings={"db": "bound"})[0][0] == "bound"


def test_unpicklables_become_placeholders_or_recorded_skips(cap: Cap, tmp_path: Path) -> None:
    f = capture(max_snapshots=100)(targets.echo)
    sock = socket.socket()
    conn = sqlite3.connect(":memory:")
    handle = open(tmp_path / "f.txt", "w")  # noqa: SIM115
    gen = (i for i in range(3))
    lock = threading.Lock()

    class Weird:
        def __reduce__(self) -> Any:
            raise TypeError("cannot pickle Weird")

    try:
        values: list[Any] = [lock, sock, conn, gen, handle, targets.make_closure(), Weird()]
        for v in values:
            assert f({"inner": [v]}, n=1) == (({"inner": [v]},), {"n": 1})
    finally:
        sock.close()
        conn.close()
        handle.close()
    placeholders = {p["type"]: p for s in cap.snapshots() for p in s.header.placeholders}
    assert set(placeholders) >= {
        "_thread.lock", "socket.socket", "sqlite3.Connection", "builtins.generator",
        "_io.TextIOWrapper",
    }  # fmt: skip
    assert placeholders["socket.socket"]["path"] == "args[0]['inner'][0]"
    assert placeholders["_thread.lock"]["auto"] is True
    assert stats()["skipped"] == {"unpicklable": 1}  # Weird
    assert len(cap.store.snapshot_paths()) == 6
    assert targets.SECRET_TOKEN.encode() not in cap.raw_bytes()
    # A lock comes back as a fresh lock; the others as inert placeholders.
    loaded = {type(s.load_call()[0][0]["inner"][0]).__name__ for s in cap.snapshots()}
    assert {"lock", "Placeholder", "function"} <= loaded


# -- never harm the call ------------------------------------------------------------------


def test_reentrant_calls_from_pickling_are_not_captured(cap: Cap) -> None:
    inner = capture(targets.sort_and_truncate)

    class CallsBack:
        def __reduce__(self) -> Any:
            inner([2, 1])  # user code run by the pickler
            return (str, ("x",))

    outer = capture(max_snapshots=5, redact=False)(targets.echo)
    arg = CallsBack()
    assert outer(arg) == ((arg,), {})
    targets_seen = {s.header.target for s in cap.snapshots()}
    assert targets_seen == {"tests.capture_helpers.targets:echo"}


def test_exceptions_pass_through_unchanged(cap: Cap) -> None:
    class Boom(Exception):
        pass

    @capture
    def f() -> None:
        raise Boom("kept")

    with pytest.raises(Boom, match="kept"):
        f()


def test_repeated_failures_turn_the_target_off_with_one_line(
    cap: Cap, capture_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*a: Any, **k: Any) -> Any:
        raise RuntimeError("store bug")

    monkeypatch.setattr(cap.store.__class__, "put_snapshot", broken)
    f = capture(max_snapshots=1000)(targets.echo)
    for i in range(200):
        assert f(i) == ((i,), {})
    s = stats()
    # The limit is per target: this one is off, capture as a whole is not.
    assert s["active"] is True and s["failures"] == 20
    off = [r for r in capture_log.records if "turned off" in r.getMessage()]
    assert len(off) == 1 and "targets:echo" in off[0].getMessage()
    assert len(capture_log.records) <= 4  # three failures, then the off line


def _store_on_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)  # fmt: skip
    return r.returncode == 0


def _unmount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


@pytest.mark.parametrize("failure", ["disk_full", "read_only"])
def test_disk_full_or_read_only_store_turns_capture_off_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="pytest_perfreplay")
    capture_module._reset()
    root = tmp_path / "mnt"
    mounted = _store_on_tmpfs(root, "256k")
    try:
        configure(enabled=True, store=root, key=KEY)
        f = capture(max_snapshots=1000)(targets.echo)
        if failure == "read_only":
            f(b"first")  # creates the folders while writable
            if mounted:
                subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
            else:
                _patch_os_call(monkeypatch, "open", 30)  # EROFS
        elif not mounted:
            _patch_os_call(monkeypatch, "write", 28)  # ENOSPC
        expected = [((bytes(40_000), i), {}) for i in range(30)]
        got = [f(bytes(40_000), i) for i in range(30)]  # 30 x 40 KB > 256 KB of tmpfs
        assert got == expected
        s = stats()
        assert s["active"] is False
        assert ("ENOSPC" if failure == "disk_full" else "EROFS") in s["disabled_reason"]
        lines = [r for r in caplog.records if r.name.startswith("pytest_perfreplay")]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert "turned off" in lines[0].getMessage()
        assert not any(p.name.startswith(".tmp-") for p in root.rglob("*"))
    finally:
        capture_module._reset()
        if mounted:
            _unmount(root)


def _patch_os_call(monkeypatch: pytest.MonkeyPatch, name: str, code: int) -> None:
    real = getattr(os, name)

    def failing(path_or_fd: Any, *args: Any, **kwargs: Any) -> Any:
        if name == "open" and ".tmp-" not in str(path_or_fd):
            return real(path_or_fd, *args, **kwargs)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, name, failing)


# -- fork safety --------------------------------------------------------------------------


def test_os_fork_child_captures_without_deadlock(cap: Cap) -> None:
    f = capture(max_snapshots=100)(targets.echo)
    f("parent")
    # Hold the capture lock in another thread across the fork: the child must not hang.
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with capture_module._STATE.lock, cap_store_lock():
            held.set()
            release.wait(5)

    def cap_store_lock() -> Any:
        return capture_module._STATE.get_store()._lock

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    pid = os.fork()
    if pid == 0:  # child
        try:
            f("child")
            os._exit(0 if stats()["captured"] >= 2 else 3)
        except BaseException:
            os._exit(4)
    release.set()
    t.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert {s.load_call()[0][0] for s in cap.snapshots()} == {"parent", "child"}


def test_multiprocessing_fork_pool_children_capture(cap: Cap) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(3) as pool:
        results = pool.map(_pool_call, range(12), chunksize=1)
    assert results == [i * 2 for i in range(12)]
    pids = {s.header["pid"] for s in cap.snapshots()}
    assert len(cap.snapshots()) == 12
    assert os.getpid() not in pids and len(pids) >= 2


_pooled = capture(force=True, max_snapshots=100)(targets.echo)


def _pool_call(i: int) -> int:
    _pooled(i)
    return i * 2


# -- capture by dotted name -----------------------------------------------------------------


def test_configure_targets_patches_now_and_on_later_import(cap: Cap) -> None:
    sys.modules.pop("tests.capture_helpers.late_target", None)
    done = capture_module.patch_targets(
        {
            "tests.capture_helpers.targets:login": {"keep_result": True},
            "tests.capture_helpers.late_target:late": {},
            "tests.capture_helpers.late_target:Late.method": {},
            "tests.capture_helpers.late_target:Late.static": {},
        }
    )
    try:
        assert done == ["tests.capture_helpers.targets:login"]
        from tests.capture_helpers import late_target

        assert targets.login("a", "bb") == "a:2"
        assert late_target.late(2) == 6
        assert late_target.Late().method(1) == 2
        assert late_target.Late.static(1) == 0
        found = {s.header.target for s in cap.snapshots()}
        assert found == {
            "tests.capture_helpers.targets:login",
            "tests.capture_helpers.late_target:late",
            "tests.capture_helpers.late_target:Late.method",
            "tests.capture_helpers.late_target:Late.static",
        }
    finally:
        targets.login = capture_module.unwrap_capture(targets.login)
        sys.modules.pop("tests.capture_helpers.late_target", None)


def test_perfreplay_targets_env_patches_at_start_up(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        PERFREPLAY_CAPTURE="1",
        PERFREPLAY_STORE=str(tmp_path / "store"),
        PERFREPLAY_KEY="k" * 32,
        PERFREPLAY_TARGETS="tests.capture_helpers.late_target:late, "
        "tests.capture_helpers.late_target:Late.method,tests.capture_helpers.late_target:Late.static",
    )
    out = subprocess.run(
        [sys.executable, "-m", "tests.capture_helpers.env_targets"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert '"captured": 3' in out.stdout, out.stdout + out.stderr
    assert len(list((tmp_path / "store" / "snapshots").glob("*/*.prsnap"))) == 3


def test_capture_module_imports_no_heavy_dependencies() -> None:
    code = (
        "import sys, pytest_perfreplay.capture.decorator;"
        "bad = [m for m in ('pytest', 'numpy', 'scipy', 'pyinstrument', 'fsspec', 'opentelemetry')"
        " if m in sys.modules]; print(bad);"
        "import threading; print(threading.active_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "1"]
