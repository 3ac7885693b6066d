"""The fleet store: fsspec URLs, the background uploader, cross-host quotas, ``pull``.

Tests marked ``s3`` talk to a real SeaweedFS started by ``tests/s3_server.py``. The rest use
fsspec's ``memory://`` and ``file://`` filesystems and need no server.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_perfreplay.errors import PerfReplayError, StoreError
from pytest_perfreplay.snapshot import remote
from pytest_perfreplay.snapshot.format import Keyring, encode, verify
from pytest_perfreplay.snapshot.remote import RemoteStore, describe_error, is_remote, open_store
from pytest_perfreplay.snapshot.store import Store, target_slug
from tests.remote_helpers import workload

capture_mod = importlib.import_module("pytest_perfreplay.capture.decorator")

REPO = Path(__file__).resolve().parents[1]
KEY = "fleet-test-key-" + "0" * 20
TARGET = "tests.remote_helpers.workload:score"


@pytest.fixture
def fleet_key(monkeypatch: pytest.MonkeyPatch) -> Keyring:
    monkeypatch.setenv("PERFREPLAY_KEY", KEY)
    monkeypatch.delenv("PERFREPLAY_VERIFY_KEYS", raising=False)
    return Keyring.from_secrets(KEY.encode())


def snapshot_bytes(keyring: Keyring | None, target: str = "pkg.mod:f", size: int = 100) -> bytes:
    from pytest_perfreplay.snapshot.format import dumps, new_snapshot_id

    fields = {"id": new_snapshot_id(), "target": target, "captured_at": time.time()}
    payload = dumps(((list(range(size)),), {})).data
    return encode(fields, {"args": payload}, keyring=keyring)


def snapshot_id(data: bytes) -> str:
    from pytest_perfreplay.snapshot.format import read_header

    return read_header(data)[0].id


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """The real ``perfreplay`` entry point once ``pull`` is registered; until then the same
    error handling around our own subparser."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            from pytest_perfreplay.cli import build_parser, main

            has_pull = "pull" in build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
        except ImportError:
            has_pull = False
        if has_pull:
            code = main(argv)
        else:
            from pytest_perfreplay.cli import remote as cli_remote

            parser = argparse.ArgumentParser(prog="perfreplay")
            cli_remote.register(parser.add_subparsers(dest="command", required=True))
            args = parser.parse_args(argv)
            try:
                code = args.func(args)
            except PerfReplayError as exc:
                print(f"perfreplay: error: {exc}", file=sys.stderr)
                code = 2
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------------
# URLs, configuration and messages (no server)


def test_is_remote_and_open_store(tmp_path: Path) -> None:
    assert is_remote("s3://bucket/prefix")
    assert is_remote("gs://bucket")
    assert is_remote("memory://x")
    assert not is_remote("file:///tmp/x")
    assert not is_remote("/tmp/x")
    assert not is_remote(tmp_path)
    assert not is_remote("C:/Users/x")
    assert isinstance(open_store("s3://bucket/prefix"), RemoteStore)
    local = open_store(f"file://{tmp_path}")
    assert isinstance(local, Store) and local.root == tmp_path


def test_storage_options_endpoint_override() -> None:
    opts = remote.storage_options("s3://b/p", {"PERFREPLAY_S3_ENDPOINT": "http://127.0.0.1:9"})
    assert opts["endpoint_url"] == "http://127.0.0.1:9"
    opts = remote.storage_options("s3://b/p", {"AWS_ENDPOINT_URL": "http://h:1"})
    assert opts["endpoint_url"] == "http://h:1"
    assert "endpoint_url" not in remote.storage_options("s3://b/p", {})
    assert "endpoint_url" not in remote.storage_options("gs://b/p", {"AWS_ENDPOINT_URL": "x"})


def test_env_knobs_are_validated() -> None:
    with pytest.raises(StoreError, match="auto, on or off, got 'maybe'"):
        RemoteStore.from_url("memory://x", {"PERFREPLAY_STORE_CONDITIONAL": "maybe"})
    with pytest.raises(StoreError, match="positive integer, got 'zero'"):
        RemoteStore.from_url("memory://x", {"PERFREPLAY_STORE_HOST_CAP": "zero"})
    store = RemoteStore.from_url(
        "memory://x", {"PERFREPLAY_STORE_CONDITIONAL": "off", "PERFREPLAY_STORE_HOST_CAP": "3"}
    )
    assert store.conditional is False and store.host_cap == 3


def test_parse_since() -> None:
    assert remote.parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert remote.parse_since("30m", now=100.0) == 100.0 - 1800
    assert remote.parse_since("2024-05-01T00:00:00+00:00") == 1714521600.0
    with pytest.raises(ValueError, match="'soon' is not a duration"):
        remote.parse_since("soon")


def test_default_cache_is_per_url(tmp_path: Path) -> None:
    a = remote.default_cache("s3://bucket/a", tmp_path)
    b = remote.default_cache("s3://bucket/b", tmp_path)
    assert a != b and a.parent == tmp_path / "remote" and a.name.startswith("bucket_a-")


def test_remote_store_requires_a_shared_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERFREPLAY_KEY", raising=False)
    monkeypatch.delenv("PERFREPLAY_VERIFY_KEYS", raising=False)
    store = RemoteStore("memory://k")
    assert store.keyring() is None
    with pytest.raises(StoreError, match="set PERFREPLAY_KEY on every capturing host"):
        store.keyring(create=True)


# ---------------------------------------------------------------------------
# The uploader, on fsspec's memory filesystem (no server)


@pytest.fixture
def mem_url() -> Iterator[str]:
    url = f"memory://perfreplay-{uuid.uuid4().hex[:8]}"
    yield url
    import fsspec

    with contextlib.suppress(FileNotFoundError):
        fsspec.filesystem("memory").rm(url.split("://")[1], recursive=True)


def test_write_is_queued_then_uploaded(mem_url: str, fleet_key: Keyring) -> None:
    store = RemoteStore(mem_url)
    data = snapshot_bytes(fleet_key)
    store.write_snapshot("pkg.mod:f", snapshot_id(data), data)
    assert store.flush(10)
    entries = list(store.iter_snapshots())
    assert [e.key for e in entries] == [f"snapshots/pkg.mod-f/{snapshot_id(data)}.prsnap"]
    assert store.read(entries[0].key) == data
    assert store.read_header(entries[0].key).target == "pkg.mod:f"
    assert store.stats()["uploaded"] == 1


def test_fallback_slots_bound_the_target(mem_url: str, fleet_key: Keyring) -> None:
    store = RemoteStore(mem_url)  # memory:// has no atomic create: the fallback path
    outcomes = []
    for i in range(12):
        outcomes.append(
            store.put_snapshot("pkg.mod:f", snapshot_bytes(fleet_key), quota=5, duration=i).outcome
        )
        store.flush(10)
    stats = store.stats()
    assert stats["conditional"] is False
    assert sorted(e.name for e in store.iter_snapshots()) == [f"slot-00{k}" for k in range(5)]
    # The sixth is refused by the worker; after that the hot path knows, with no I/O.
    assert stats["uploaded"] == 5 and stats["dropped_quota"] == 1
    assert outcomes == ["written"] * 6 + ["not_slower"] * 6
    assert not store.would_keep("pkg.mod:f", 5, 99.0)
    assert store.would_keep("pkg.mod:other", 5, 0.0)


def test_put_snapshot_skips_duplicates(mem_url: str, fleet_key: Keyring) -> None:
    store = RemoteStore(mem_url)
    data = snapshot_bytes(fleet_key)
    assert store.put_snapshot("pkg.mod:f", data, quota=5, duration=1, digest="d").stored
    assert store.put_snapshot("pkg.mod:f", data, quota=5, duration=2, digest="d").outcome == (
        "duplicate"
    )
    assert store.flush(10) and store.stats()["uploaded"] == 1


def test_full_queue_drops_and_counts_without_blocking(mem_url: str, fleet_key: Keyring) -> None:
    store = RemoteStore(mem_url, quota=1000, max_queue=4)
    gate = threading.Event()
    fs, _ = store.filesystem()
    real = fs.pipe_file

    def slow_pipe(*args: Any, **kwargs: Any) -> Any:
        gate.wait(10)  # a server that hangs
        return real(*args, **kwargs)

    fs.pipe_file = slow_pipe
    data = snapshot_bytes(fleet_key)
    for i in range(50):
        store.write_snapshot("pkg.mod:f", f"id{i}", data)
    stats = store.stats()
    assert stats["queued"] <= 4
    assert stats["enqueued"] + stats["dropped_queue_full"] == 50
    assert stats["dropped_queue_full"] >= 45
    gate.set()
    assert store.flush(10)
    assert store.stats()["uploaded"] == stats["enqueued"]


def test_queue_is_bounded_in_bytes(mem_url: str) -> None:
    store = RemoteStore(mem_url, max_queue=1000, max_queue_bytes=10_000)
    fs, _ = store.filesystem()
    gate = threading.Event()
    real = fs.pipe_file
    fs.pipe_file = lambda *a, **k: (gate.wait(10), real(*a, **k))[1]
    for i in range(20):
        store.write_snapshot("pkg.mod:f", f"id{i}", b"x" * 3000)
    assert store.stats()["queued_bytes"] <= 10_000
    gate.set()
    store.flush(10)


def test_transient_errors_are_retried_then_resume(mem_url: str, fleet_key: Keyring) -> None:
    store = RemoteStore(mem_url, max_backoff=0.05)
    fs, _ = store.filesystem()
    real = fs.pipe_file
    failures = [3]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures[0] > 0:
            failures[0] -= 1
            raise ConnectionRefusedError(111, "Connection refused")
        return real(*args, **kwargs)

    fs.pipe_file = flaky
    data = snapshot_bytes(fleet_key)
    store.write_snapshot("pkg.mod:f", snapshot_id(data), data)
    assert store.flush(10)
    stats = store.stats()
    assert stats["uploaded"] == 1 and stats["transient_errors"] == 3 and stats["off"] is None
    assert "connection refused" in stats["last_error"]


def test_permanent_error_turns_the_uploader_off(mem_url: str) -> None:
    store = RemoteStore(mem_url)
    fs, _ = store.filesystem()

    def denied(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError("Access Denied")

    fs.pipe_file = denied
    store.write_snapshot("pkg.mod:f", "a", b"data")
    store.flush(10)
    assert "Access Denied" in store.stats()["off"]
    assert not store.would_keep("pkg.mod:f", 20, 99.0)
    store.write_snapshot("pkg.mod:f", "b", b"data")
    assert store.stats()["dropped_off"] >= 1


def test_forked_child_gets_its_own_uploader(tmp_path: Path, fleet_key: Keyring) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    store = RemoteStore(f"file://{tmp_path}/remote")
    data = snapshot_bytes(fleet_key)
    store.write_snapshot("pkg.mod:f", snapshot_id(data), data)
    assert store.flush(10)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        ok = False
        try:
            child = snapshot_bytes(fleet_key)
            store.write_snapshot("pkg.mod:f", snapshot_id(child), child)
            s = store.stats()
            ok = store.flush(10) and store.stats()["uploaded"] == 1 and s["enqueued"] == 1
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(list(store.iter_snapshots())) == 2
    assert store.stats()["uploaded"] == 1  # the parent's counters were not touched


def test_pull_verifies_and_refuses_tampered(
    mem_url: str, fleet_key: Keyring, tmp_path: Path
) -> None:
    store = RemoteStore(mem_url, quota=100)
    good = [snapshot_bytes(fleet_key) for _ in range(3)]
    for data in good:
        store.write_snapshot("pkg.mod:f", snapshot_id(data), data)
    assert store.flush(10)
    fs, root = store.filesystem()
    folder = f"{root}/snapshots/pkg.mod-f"
    forged = snapshot_bytes(Keyring.from_secrets(b"someone-else"))
    fs.pipe_file(f"{folder}/{snapshot_id(forged)}.prsnap", forged)
    tampered = bytearray(good[0])
    tampered[-1] ^= 1  # one flipped payload bit, in place of a good file
    fs.pipe_file(f"{folder}/{snapshot_id(good[0])}.prsnap", bytes(tampered))
    fs.pipe_file(f"{folder}/aaaaaaaaaaaa.prsnap", good[1])  # a good file, renamed

    dest = Store(tmp_path / "cache")
    report = store.pull(dest)
    assert (report.listed, report.new) == (5, 2)
    reasons = dict(report.refused)
    assert (
        "not among the verifying keys"
        in reasons[f"snapshots/pkg.mod-f/{snapshot_id(forged)}.prsnap"]
    )
    tampered_reason = reasons[f"snapshots/pkg.mod-f/{snapshot_id(good[0])}.prsnap"]
    assert "bad signature" in tampered_reason or "does not match its hash" in tampered_reason
    assert "does not match its header" in reasons["snapshots/pkg.mod-f/aaaaaaaaaaaa.prsnap"]
    assert len(dest.snapshot_paths()) == 2
    again = store.pull(dest)
    assert (again.new, again.present) == (0, 2)


# ---------------------------------------------------------------------------
# Against a real S3 server (SeaweedFS)


def host_env(server: Any, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PERFREPLAY_"))}
    env.update(server.env())
    env.update(PERFREPLAY_KEY=KEY, PYTHONPATH=str(REPO), **extra)
    return env


def run_hosts(url: str, server: Any, hosts: int, calls: int, **env: str) -> list[dict[str, Any]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.remote_helpers.host", url, str(h), str(calls)],
            cwd=REPO,
            env=host_env(server, **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for h in range(hosts)
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


@pytest.mark.s3
def test_seaweedfs_honours_if_none_match_under_races(s3_bucket: Any) -> None:
    """The fact the quota rests on: concurrent create-only PUTs have exactly one winner."""
    from concurrent.futures import ThreadPoolExecutor

    client = s3_bucket.server.client(max_pool_connections=32)

    def put(key: str) -> bool:
        try:
            client.put_object(Bucket=s3_bucket.bucket, Key=key, Body=b"x", IfNoneMatch="*")
            return True
        except client.exceptions.ClientError as exc:
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 412
            return False

    keys = [f"{s3_bucket.root}/race/{k}" for k in range(20) for _ in range(12)]
    with ThreadPoolExecutor(24) as pool:
        wins = list(pool.map(put, keys))
    winners: dict[str, int] = {}
    for key, won in zip(keys, wins, strict=True):
        winners[key] = winners.get(key, 0) + won
    assert set(winners.values()) == {1}

    store = RemoteStore.from_url(s3_bucket.url())
    assert store._uses_conditional() is True


@pytest.mark.s3
def test_four_hosts_share_one_quota_then_pull_verify_replay(
    s3_bucket: Any, fleet_key: Keyring, tmp_path: Path
) -> None:
    url = s3_bucket.url("fleet")
    results = run_hosts(url, s3_bucket.server, hosts=4, calls=200)
    for r in results:
        assert r["wrong"] == 0 and r["failures"] == 0 and r["flushed"], r
        assert r["store"]["conditional"] is True and r["store"]["off"] is None
    objects = s3_bucket.keys("fleet/snapshots/")
    # The documented bound: at most `quota` (20) snapshots per target, fleet-wide.
    assert len(objects) == 20
    assert {k.rsplit("/", 1)[-1] for k in objects} == {f"slot-{k:03d}.prsnap" for k in range(20)}
    assert sum(r["store"]["uploaded"] for r in results) >= 20  # claims plus slower replacements
    assert sum(r["captured"] for r in results) >= 20

    code, out, err = run_cli(["pull", url, "--into", str(tmp_path / "cache")])
    assert code == 0, err
    assert "20 new, 0 already present, 0 refused" in out
    dest = Store(tmp_path / "cache")
    paths = dest.snapshot_paths()
    assert len(paths) == 20
    for path in paths:
        snap = verify(path.read_bytes(), keyring=fleet_key, path=str(path))
        assert snap.header.target == TARGET
        args, kwargs = snap.load_call()
        func = capture_mod.unwrap_capture(workload.score)
        assert func(*args, **kwargs) == workload.expected(*args, **kwargs)

    code, out, _ = run_cli(["pull", url, "--into", str(tmp_path / "cache")])
    assert code == 0 and "0 new, 20 already present" in out


@pytest.mark.s3
def test_four_hosts_fallback_per_process_caps(s3_bucket: Any) -> None:
    url = s3_bucket.url("fallback")
    results = run_hosts(
        url,
        s3_bucket.server,
        hosts=4,
        calls=200,
        PERFREPLAY_STORE_CONDITIONAL="off",
        PERFREPLAY_STORE_HOST_CAP="5",
    )
    for r in results:
        assert r["store"]["conditional"] is False and r["store"]["uploaded"] <= 5
    # The fallback bound is the same slot names; racing hosts may overwrite, never add.
    assert 5 <= len(s3_bucket.keys("fallback/snapshots/")) <= 20


@pytest.mark.s3
def test_keep_slowest_replaces_with_if_match(s3_bucket: Any, fleet_key: Keyring) -> None:
    from pytest_perfreplay.snapshot.format import read_header

    store = RemoteStore.from_url(s3_bucket.url("slowest"))
    outcomes = []
    for d in (1.0, 2.0, 3.0, 5.0, 0.5):

        def data(duration: float = d) -> bytes:
            from pytest_perfreplay.snapshot.format import dumps, new_snapshot_id

            fields = {"id": new_snapshot_id(), "target": "pkg.mod:f", "duration": duration}
            return encode(fields, {"args": dumps(((), {})).data}, keyring=fleet_key)

        outcomes.append(store.put_snapshot("pkg.mod:f", data(), quota=3, duration=d).outcome)
        assert store.flush(30)
    kept = sorted(read_header(store.read(e.key))[0].duration for e in store.iter_snapshots())
    assert kept == [2.0, 3.0, 5.0]
    stats = store.stats()
    assert stats["replaced"] == 1
    assert outcomes[-1] == "not_slower"  # the hot path already knew: no upload attempted
    assert not store.would_keep("pkg.mod:f", 3, 1.5) and store.would_keep("pkg.mod:f", 3, 2.5)


@pytest.mark.s3
def test_pull_filters_by_target_and_since(
    s3_bucket: Any, fleet_key: Keyring, tmp_path: Path
) -> None:
    store = RemoteStore.from_url(s3_bucket.url("filters"))
    for target in ("pkg.a:f", "pkg.b:g"):
        for _ in range(3):
            data = snapshot_bytes(fleet_key, target=target)
            store.write_snapshot(target, snapshot_id(data), data)
    assert store.flush(30)

    report = store.pull(Store(tmp_path / "a"), targets=["pkg.a:f"])
    assert (report.listed, report.new) == (3, 3)
    assert {p.parent.name for p in Store(tmp_path / "a").snapshot_paths()} == {"pkg.a-f"}

    future = time.time() + 3600
    report = store.pull(Store(tmp_path / "b"), since=future)
    assert (report.new, report.older) == (0, 6)

    code, out, _ = run_cli(
        ["pull", s3_bucket.url("filters"), "--since", "1h", "--into", str(tmp_path / "c")]
    )
    assert code == 0 and "6 new" in out

    entry = next(store.iter_snapshots(["pkg.b:g"]))
    assert store.read_header(entry.key).target == "pkg.b:g"
    store.delete(entry.key)  # frees its quota slot as well
    assert len(s3_bucket.keys("filters/snapshots/pkg.b-g/")) == 2


@pytest.mark.s3
def test_server_killed_mid_run(s3_server_factory: Any, fleet_key: Keyring, tmp_path: Path) -> None:
    server = s3_server_factory()
    bucket = server.make_bucket()
    url = f"s3://{bucket}/outage"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.remote_helpers.outage", url],
        cwd=REPO,
        env=host_env(server),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None

    def phase() -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        return dict(json.loads(line))

    try:
        warm = phase()
        server.kill()  # uploads of the warm phase may be in flight right now
        proc.stdin.write("go\n")
        proc.stdin.flush()
        down = phase()
        assert down["wrong"] == 0 and down["raised"] == 0
        assert down["active"] is True and down["store"]["off"] is None
        assert down["store"]["dropped_queue_full"] > 0
        assert down["store"]["queued"] <= 256
        # 5,000 snapshots of ~40 KB would be ~200 MB if they were kept; the queue holds at
        # most 256 of them (~10 MB), and it was already full before measuring.
        assert down["rss_growth"] < 32 * 2**20, down["rss_growth"]

        server.start()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        back = phase()
        assert back["wrong"] == 0 and back["raised"] == 0 and back["flushed"] is True
        assert back["store"]["uploaded"] > down["store"]["uploaded"] + 100
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    stored = _keys(server, bucket, "outage/snapshots/")
    assert len(stored) == back["store"]["uploaded"]
    assert warm["store"]["enqueued"] == 50


def _keys(server: Any, bucket: str, prefix: str) -> list[str]:
    client = server.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.mark.s3
def test_bad_credentials_turn_capture_uploads_off(
    s3_bucket: Any, fleet_key: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    store = RemoteStore.from_url(s3_bucket.url())
    data = snapshot_bytes(fleet_key)
    store.write_snapshot("pkg.mod:f", snapshot_id(data), data)
    store.flush(30)
    off = store.stats()["off"]
    assert off is not None and "credentials refused (SignatureDoesNotMatch)" in off
    assert s3_bucket.url() in off
    assert not store.would_keep("pkg.mod:f", 20, 99.0)


def _one_line_error(url: str, expect: str, tmp_path: Path) -> None:
    code, out, err = run_cli(["pull", url, "--into", str(tmp_path / "cli")])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert url in lines[0] and expect in lines[0], lines[0]
    assert "Traceback" not in err and not out
    with pytest.raises(StoreError) as info:
        remote.pull_into_cache(url, cache=tmp_path / "collect")
    assert str(info.value) == lines[0].removeprefix("perfreplay: error: ")


@pytest.mark.s3
def test_clear_error_for_bad_credentials(
    s3_bucket: Any, fleet_key: Keyring, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    _one_line_error(s3_bucket.url(), "credentials refused (SignatureDoesNotMatch)", tmp_path)


@pytest.mark.s3
def test_clear_error_for_missing_bucket(s3_bucket: Any, fleet_key: Keyring, tmp_path: Path) -> None:
    _one_line_error(
        "s3://no-such-bucket-here/x", "bucket 'no-such-bucket-here' does not exist", tmp_path
    )


@pytest.mark.s3
def test_clear_error_for_unreachable_endpoint(
    s3_bucket: Any, fleet_key: Keyring, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.s3_server import _free_ports

    port = _free_ports(1)[0]
    monkeypatch.setenv("PERFREPLAY_S3_ENDPOINT", f"http://127.0.0.1:{port}")
    _one_line_error(
        s3_bucket.url(), f"cannot connect to http://127.0.0.1:{port}: connection refused", tmp_path
    )


def test_describe_error_names_url_and_cause() -> None:
    exc = OSError(5, "boom")
    exc.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert describe_error(exc, "s3://b/p") == "store s3://b/p: connection refused"
    msg = describe_error(ImportError("No module named 's3fs'"), "s3://b/p")
    assert msg.startswith("store s3://b/p: No module named 's3fs'") and "[s3]" in msg


def test_cli_rejects_a_local_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERFREPLAY_STORE", raising=False)
    code, _, err = run_cli(["pull", str(tmp_path)])
    assert code == 2 and "is not a remote store URL" in err


def test_target_slug_layout_matches_local_store() -> None:
    assert target_slug(TARGET) == "tests.remote_helpers.workload-score"
