"""Hardening of the remote path, against a real S3 server (SeaweedFS): junk headers,
squatted slots, oversized objects, hostile ids, and the exit flush after an outage."""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_perfreplay.cli import main as cli_main
from pytest_perfreplay.errors import SnapshotError
from pytest_perfreplay.snapshot.format import (
    MAGIC,
    Keyring,
    dumps,
    encode,
    new_snapshot_id,
    read_header,
)
from pytest_perfreplay.snapshot.remote import RemoteStore
from pytest_perfreplay.snapshot.store import Store

KEY = "hardening-remote-key-0123456789"


def cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(argv)
    return code, out.getvalue(), err.getvalue()


def snap(keyring: Keyring | None, **fields: Any) -> bytes:
    base: dict[str, Any] = {"id": new_snapshot_id(), "target": "svc:f", "duration": 0.5}
    base.update(fields)
    return encode(base, {"args": dumps(((1,), {})).data}, keyring=keyring)


def raw_header(header: bytes, payload: bytes = b"") -> bytes:
    return MAGIC + len(header).to_bytes(4, "big") + header + payload


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> Keyring:
    monkeypatch.setenv("PERFREPLAY_KEY", KEY)
    monkeypatch.delenv("PERFREPLAY_VERIFY_KEYS", raising=False)
    return Keyring.from_secrets(KEY.encode())


def put(loc: Any, key: str, data: bytes) -> None:
    loc.server.client().put_object(Bucket=loc.bucket, Key=f"{loc.root}/store/{key}", Body=data)


@pytest.mark.s3
def test_junk_remote_headers_neither_crash_listing_nor_escape_prune(
    s3_bucket: Any, keyed: Keyring
) -> None:
    url = s3_bucket.url("store")
    nested = b'{"a":' * 5000 + b"1" + b"}" * 5000
    put(s3_bucket, "snapshots/svc-f/slot-000.prsnap", raw_header(nested))
    put(s3_bucket, "snapshots/svc-f/slot-001.prsnap", snap(keyed, captured_at=1e300))
    put(s3_bucket, "snapshots/svc-f/slot-002.prsnap", snap(keyed))
    code, out, err = cli(["list", "--store", url])
    assert code == 0, err
    assert "1 snapshot(s)" in out and "2 unreadable file(s)" in out
    code, out, err = cli(["prune", "--invalid", "--store", url])
    assert code == 0, err
    assert s3_bucket.keys("store/snapshots/") == ["store/snapshots/svc-f/slot-002.prsnap"]


@pytest.mark.s3
def test_pull_refuses_hostile_ids_and_oversized_objects_before_download(
    s3_bucket: Any, keyed: Keyring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = s3_bucket.url("store")
    put(s3_bucket, "snapshots/svc-f/slot-000.prsnap", snap(keyed, id="../../../escape"))
    put(s3_bucket, "snapshots/svc-f/slot-001.prsnap", snap(keyed))
    put(s3_bucket, "snapshots/svc-f/slot-002.prsnap", snap(keyed) + b"\0" * 2_000_000)
    monkeypatch.setenv("PERFREPLAY_MAX_PAYLOAD_BYTES", "100000")
    cache = tmp_path / "cache"
    report = RemoteStore.from_url(url).pull(Store(cache))
    refused = dict(report.refused)
    assert report.new == 1
    assert "corrupt header: field 'id'" in refused["snapshots/svc-f/slot-000.prsnap"]
    assert "over the" in refused["snapshots/svc-f/slot-002.prsnap"]
    assert not any(p.name == "escape.prsnap" for p in tmp_path.rglob("*"))


@pytest.mark.s3
def test_an_unsigned_slot_claiming_a_huge_duration_is_replaced(
    s3_bucket: Any, keyed: Keyring
) -> None:
    url = s3_bucket.url("store")
    put(s3_bucket, "snapshots/svc-f/slot-000.prsnap", snap(None, duration=1e308))
    store = RemoteStore.from_url(url)
    store.trust_durations_from(keyed)
    ours = snap(keyed, duration=0.25)
    store.put_snapshot("svc:f", ours, quota=1, duration=0.25)
    assert store.flush(30)
    body = (
        s3_bucket.server.client()
        .get_object(
            Bucket=s3_bucket.bucket, Key=f"{s3_bucket.root}/store/snapshots/svc-f/slot-000.prsnap"
        )["Body"]
        .read()
    )
    assert body == ours


@pytest.mark.s3
def test_remote_header_fuzz(s3_bucket: Any, keyed: Keyring) -> None:
    """Random edits of a real header, read back through ranged reads: only SnapshotError."""
    store = RemoteStore.from_url(s3_bucket.url("fuzz"))
    good = snap(keyed)
    header_len = int.from_bytes(good[len(MAGIC) : len(MAGIC) + 4], "big")
    header = json.loads(good[len(MAGIC) + 4 : len(MAGIC) + 4 + header_len])
    json_values = st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(),
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(), kids, max_size=3),
        max_leaves=10,
    )

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(key=st.sampled_from(sorted(header)), value=json_values, cut=st.integers(0, 40))
    def check(key: str, value: Any, cut: int) -> None:
        fields = dict(header, **{key: value})
        body = json.dumps(fields).encode()
        data = raw_header(body[: len(body) - cut], good[len(MAGIC) + 4 + header_len :])
        name = f"snapshots/svc-f/{uuid.uuid4().hex[:8]}.prsnap"
        s3_bucket.server.client().put_object(
            Bucket=s3_bucket.bucket, Key=f"{s3_bucket.root}/fuzz/{name}", Body=data
        )
        try:
            remote = store.read_header(name)
        except SnapshotError:
            return
        local = read_header(data)[0]  # the remote path accepts exactly what local accepts
        assert remote.fields == local.fields

    check()


def test_exit_flush_keeps_retrying_through_an_outage(mem_url: str, keyed: Keyring) -> None:
    store = RemoteStore(mem_url, max_backoff=30.0)
    fs, _ = store.filesystem()
    real = fs.pipe_file
    failures = [7]  # enough for the old backoff (0.5, 1, 2, 4, 8, 16 s) to outlast the flush

    def outage(*args: Any, **kwargs: Any) -> Any:
        if failures[0] > 0:
            failures[0] -= 1
            raise ConnectionRefusedError(111, "Connection refused")
        return real(*args, **kwargs)

    fs.pipe_file = outage
    for _ in range(5):
        data = snap(keyed)
        store.write_snapshot("svc:f", read_header(data)[0].id, data)
    assert store.flush(10)
    assert store.stats()["uploaded"] == 5 and store.stats()["dropped_at_exit"] == 0


@pytest.fixture
def mem_url() -> Iterator[str]:
    url = f"memory://perfreplay-{uuid.uuid4().hex[:8]}"
    yield url
    import fsspec

    with contextlib.suppress(FileNotFoundError):
        fsspec.filesystem("memory").rm(url.split("://")[1], recursive=True)
