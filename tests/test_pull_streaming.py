"""`perfreplay pull` streams large objects: chunks into a temp file in the cache, verified
from disk in chunks, renamed into place or deleted. Peak memory does not follow object size
(measured as the pull process's own peak RSS, against SeaweedFS)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_perfreplay.errors import SnapshotError
from pytest_perfreplay.snapshot.format import (
    Keyring,
    dumps,
    encode,
    new_snapshot_id,
    verify,
    verify_file,
)

KEY = "pull-streaming-key-0123456789"
BIG = 96 << 20  # a payload well over the pull chunk (4 MiB)
CLI = "import sys; from pytest_perfreplay.cli import main; sys.exit(main())"


def snapshot(keyring: Keyring, payload: bytes, *, compress: bool = False, **fields: Any) -> bytes:
    base: dict[str, Any] = {"id": new_snapshot_id(), "target": "svc:f", "duration": 0.5}
    base.update(fields)
    return encode(base, {"args": payload}, keyring=keyring, compress=compress)


def put(loc: Any, key: str, data: bytes) -> None:
    loc.server.client().put_object(Bucket=loc.bucket, Key=f"{loc.root}/store/{key}", Body=data)


# ru_maxrss survives fork and exec, so a child forked from this (large) test process would
# report our peak: a small wrapper process runs the pull and reports its child's peak alone.
WRAPPER = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
    "sys.exit(r.returncode)"
)


def pull_peak_rss(url: str, into: Path, code: int = 0) -> tuple[int, str]:
    """Run `perfreplay pull` in a child process; (its own peak RSS in bytes, its output)."""
    pull = [sys.executable, "-c", CLI, "pull", url, "--into", str(into)]
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, *pull],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert done.returncode == code, done.stdout
    lines = done.stdout.splitlines()
    assert lines[-1].startswith("MAXRSS "), done.stdout
    return int(lines[-1].split()[1]) * 1024, done.stdout  # Linux reports KiB


@pytest.mark.s3
def test_pull_of_large_objects_holds_about_a_chunk_not_an_object(
    s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERFREPLAY_KEY", KEY)
    monkeypatch.delenv("PERFREPLAY_VERIFY_KEYS", raising=False)
    keyring = Keyring.from_secrets(KEY.encode())
    small_id = new_snapshot_id()
    small = snapshot(keyring, dumps(((1,), {})).data, id=small_id)
    put(s3_bucket, f"snapshots/svc-f/{small_id}.prsnap", small)
    baseline, _ = pull_peak_rss(s3_bucket.url("store"), tmp_path / "warm")

    big_id = new_snapshot_id()
    big = snapshot(keyring, b"\x07" * BIG, id=big_id)
    put(s3_bucket, f"snapshots/svc-f/{big_id}.prsnap", big)
    junk = bytearray(snapshot(keyring, b"\x09" * BIG))
    junk[-1] ^= 1  # the signed hash no longer matches: refused after streaming
    put(s3_bucket, "snapshots/svc-f/slot-000.prsnap", bytes(junk))
    del junk

    cache = tmp_path / "cache"
    peak, out = pull_peak_rss(s3_bucket.url("store"), cache, code=1)
    assert "2 new" in out and "slot-000.prsnap" in out and "does not match its hash" in out, out
    kept = cache / "snapshots" / "svc-f" / f"{big_id}.prsnap"
    assert hashlib.sha256(kept.read_bytes()).digest() == hashlib.sha256(big).digest()
    assert oct(kept.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in cache.rglob(".tmp-*")] == []  # the refused one was deleted
    grew = peak - baseline
    print(f"pull peak RSS {peak >> 20} MiB, one small object {baseline >> 20} MiB")
    # Holding one object would cost its 96 MiB (and verify's copies more): a few chunks don't.
    assert grew < 40 << 20, f"peak RSS grew by {grew >> 20} MiB over a small pull"


def test_verify_file_matches_verify(tmp_path: Path) -> None:
    """The streamed check accepts and refuses exactly what the in-memory one does."""
    pytest.importorskip("zstandard")
    keyring = Keyring.from_secrets(KEY.encode())
    payload = dumps(((list(range(5000)),), {})).data
    good = snapshot(keyring, payload)
    packed = snapshot(keyring, payload, compress=True)
    cases = {
        "good": good,
        "zstd": packed,
        "flipped": good[:-1] + bytes([good[-1] ^ 1]),
        "truncated": good[:-10],
        "trailing": good + b"x",
        "zstd-flipped": packed[:-1] + bytes([packed[-1] ^ 1]),
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.prsnap"
        path.write_bytes(data)
        try:
            expected: Any = verify(data, keyring=keyring, path="f").header.fields
        except SnapshotError as exc:
            expected = str(exc)
        try:
            got: Any = verify_file(path, keyring=keyring, path="f", chunk=1000)[0].fields
        except SnapshotError as exc:
            got = str(exc)
        assert got == expected, name
    with pytest.raises(SnapshotError, match="unsigned snapshot refused"):
        (tmp_path / "u.prsnap").write_bytes(snapshot(None, payload))  # type: ignore[arg-type]
        verify_file(tmp_path / "u.prsnap", keyring=keyring)
