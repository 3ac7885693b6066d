"""`perfreplay list/show/verify/prune` against a real S3 server (SeaweedFS)."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import pytest

from pytest_perfreplay.cli import main
from pytest_perfreplay.snapshot.format import Keyring, dumps, encode, new_snapshot_id, read_header

KEY = "cli-remote-test-key"


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def put(loc: Any, key: str, data: bytes) -> None:
    loc.server.client().put_object(Bucket=loc.bucket, Key=f"{loc.root}/store/{key}", Body=data)


def make(keyring: Keyring, target: str, value: list[int], duration: float) -> bytes:
    fields = {"id": new_snapshot_id(), "target": target, "duration": duration}
    return encode(fields, {"args": dumps(((value,), {})).data}, keyring=keyring)


@pytest.mark.s3
def test_list_show_verify_prune_on_s3(s3_bucket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERFREPLAY_KEY", KEY)
    keyring = Keyring.from_secrets(KEY.encode())
    url = s3_bucket.url("store")
    a1 = make(keyring, "svc.mod:alpha", [3, 1, 2], 0.5)
    a2 = make(keyring, "svc.mod:alpha", [9, 8], 0.7)
    b1 = make(keyring, "svc.mod:beta", [1], 0.1)
    put(s3_bucket, "snapshots/svc.mod-alpha/slot-000.prsnap", a1)
    put(s3_bucket, "snapshots/svc.mod-alpha/slot-001.prsnap", a2)
    put(s3_bucket, "snapshots/svc.mod-beta/slot-000.prsnap", b1)

    code, out, err = run(["list", "--store", url])
    assert code == 0, err
    assert "svc.mod:alpha" in out and "svc.mod:beta" in out
    assert "3 snapshot(s) in s3://" in out

    sid = read_header(a1)[0].id
    code, out, err = run(["show", sid, "--args", "--store", url])
    assert code == 0, err
    assert "signature verified" in out and "[0] [3, 1, 2]" in out

    code, out, err = run(["verify", "--store", url])
    assert code == 0, err
    assert "3 ok, 0 failed" in out

    tampered = bytearray(b1)
    tampered[-1] ^= 0xFF
    put(s3_bucket, "snapshots/svc.mod-beta/slot-000.prsnap", bytes(tampered))
    code, out, _ = run(["verify", "--store", url])
    assert code == 1
    assert "2 ok, 1 failed" in out

    code, out, err = run(["prune", "--target", "svc.mod:beta", "--store", url])
    assert code == 0, err
    assert s3_bucket.keys("store/snapshots/") == [
        "store/snapshots/svc.mod-alpha/slot-000.prsnap",
        "store/snapshots/svc.mod-alpha/slot-001.prsnap",
    ]
    code, out, err = run(["prune", "--keep", "1", "--store", url])
    assert code == 0, err
    assert s3_bucket.keys("store/snapshots/") == ["store/snapshots/svc.mod-alpha/slot-001.prsnap"]


@pytest.mark.s3
def test_list_on_a_missing_bucket_is_one_clear_line(
    s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERFREPLAY_KEY", KEY)
    code, out, err = run(["list", "--store", "s3://no-such-bucket-for-cli/x"])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "no-such-bucket-for-cli" in lines[0] and "does not exist" in lines[0]
    assert "Traceback" not in err
