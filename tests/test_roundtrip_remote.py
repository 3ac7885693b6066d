"""Round-trip check at capture for remote stores, against a real S3 server (SeaweedFS).

The services run in real subprocesses (``perfreplay run``) and upload to the real server;
pull and replay are the real CLI and a real pytest session. No timing is asserted except a
generous bound on how long a process takes to exit.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import fsspec
import pytest

from pytest_perfreplay.snapshot.format import (
    Keyring,
    dumps,
    encode,
    new_snapshot_id,
    read_header,
    read_header_file,
)
from pytest_perfreplay.snapshot.remote import RemoteStore

KEY = "roundtrip-remote-test-key-0123456789"

TEMPLATE = """
class Template:
    # Like jinja2's Template: __new__ needs the source, so a pickle cannot rebuild it.
    def __new__(cls, source):
        obj = object.__new__(cls)
        obj.source = source
        return obj

    def render(self, name):
        return self.source.replace("{name}", name)
"""
TEMPLATE_TRAFFIC = """
import tpl
t = tpl.Template("hello {name}")
for who in ["a", "b", "c"]:
    t.render(who)
"""

# Unpickling a Heavy sleeps far longer than any bound: the check is still running at exit.
HEAVY = """
import os
import time


def _rebuild(n):
    open(os.environ["HEAVY_STARTED"], "w").close()
    time.sleep(120)
    return Heavy(n)


class Heavy:
    def __init__(self, n):
        self.n = n

    def __reduce__(self):
        return (_rebuild, (self.n,))


def work(h):
    return sum(range(h.n))
"""
HEAVY_TRAFFIC = """
import heavy
heavy.work(heavy.Heavy(1000))
"""


def env_for(s3: Any, root: Path, url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERFREPLAY_")}
    env.update(s3.server.env())
    env.update(PYTHONPATH=str(root), PERFREPLAY_KEY=KEY, PERFREPLAY_STORE=url, **extra)
    return env


def tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def run(args: list[str], root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def project(root: Path, **files: str) -> Path:
    (root / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0"\n')
    for name, text in files.items():
        (root / name).write_text(text)
    return root


@pytest.mark.s3
def test_remote_snapshot_that_cannot_unpickle_is_uploaded_marked_once_and_skipped(
    tmp_path: Path, s3_bucket: Any
) -> None:
    root = project(tmp_path, **{"tpl.py": TEMPLATE, "traffic.py": TEMPLATE_TRAFFIC})
    url = s3_bucket.url("fleet")
    env = env_for(s3_bucket, root, url)
    out = run(
        [tool("perfreplay"), "run", "--targets", "tpl:Template.render", "--", sys.executable]
        + ["traffic.py"],
        root,
        env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("cannot replay: unpickling tpl.Template fails") == 1, out.stderr
    keys = s3_bucket.keys("fleet/snapshots/")
    assert len(keys) == 1, keys  # the first, marked; the later two were not kept

    client = s3_bucket.server.client()
    body = client.get_object(Bucket=s3_bucket.bucket, Key=f"{s3_bucket.root}/{keys[0]}")
    header = read_header(body["Body"].read())[0]
    verdict = header.get("roundtrip")
    assert verdict["ok"] is False and verdict["class"] == "tpl.Template"
    assert "missing 1 required positional argument: 'source'" in verdict["error"]

    pulled = run([tool("perfreplay"), "pull", "--into", str(root / ".perfreplay")], root, env)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    local = [read_header_file(p) for p in (root / ".perfreplay").glob("snapshots/*/*.prsnap")]
    assert len(local) == 1 and local[0].get("roundtrip") == verdict  # the signature held

    replay_env = {k: v for k, v in env.items() if k != "PERFREPLAY_STORE"}
    result = run(
        [tool("pytest"), "--perf-replay", "--perf-replay-max-time=0.5", "-rs"]
        + ["-p", "no:cacheprovider"],
        root,
        replay_env,
    )
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout, result.stdout
    assert "unpickling tpl.Template failed" in result.stdout


@pytest.mark.s3
def test_exit_does_not_wait_for_a_slow_remote_check(tmp_path: Path, s3_bucket: Any) -> None:
    root = project(tmp_path, **{"heavy.py": HEAVY, "traffic.py": HEAVY_TRAFFIC})
    url = s3_bucket.url("slow")
    started = tmp_path / "unpickling-started"
    env = env_for(s3_bucket, root, url, PERFREPLAY_FLUSH_TIMEOUT="4", HEAVY_STARTED=str(started))
    begun = time.monotonic()
    out = run(
        [tool("perfreplay"), "run", "--targets", "heavy:work", "--", sys.executable]
        + ["traffic.py"],
        root,
        env,
    )
    took = time.monotonic() - begun
    assert out.returncode == 0, out.stderr
    assert started.exists()  # the check ran, and its unpickling sleeps for 120 s
    assert took < 60, took  # nothing waited for it (generous: the flush bound is 4 s)
    assert "round-trip check of heavy:work still running at exit" in out.stderr, out.stderr
    keys = s3_bucket.keys("slow/snapshots/")
    assert len(keys) == 1, keys  # abandoned, the snapshot is uploaded unchecked
    client = s3_bucket.server.client()
    body = client.get_object(Bucket=s3_bucket.bucket, Key=f"{s3_bucket.root}/{keys[0]}")
    assert read_header(body["Body"].read())[0].get("roundtrip") is None


def test_held_snapshots_wait_for_their_check_and_exit_uploads_them_unchecked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    keyring = Keyring.from_secrets(KEY.encode())

    def snap() -> bytes:
        fields = {"id": new_snapshot_id(), "target": "pkg.mod:f", "captured_at": time.time()}
        return encode(fields, {"args": dumps(((1,), {})).data}, keyring=keyring)

    url = f"memory://perfreplay-held-{uuid.uuid4().hex[:8]}"
    store = RemoteStore(url, quota=10, flush_timeout=1.0)
    try:
        first = store.put_snapshot("pkg.mod:f", snap(), quota=10, duration=1.0, hold=True)
        assert first.stored and getattr(first, "held", None) is not None
        assert not store.flush(0.3)  # held: the uploader leaves it alone
        assert store.stats()["uploaded"] == 0 and store.stats()["queued"] == 1
        marked = snap()
        first.held.release(marked)  # type: ignore[attr-defined]
        assert store.flush(10) and store.stats()["uploaded"] == 1
        (entry,) = store.iter_snapshots()
        assert store.read(entry.key) == marked  # the re-signed bytes, not the queued ones

        later = store.put_snapshot("pkg.mod:f", snap(), quota=10, duration=2.0, hold=True)
        later.held.drop()  # type: ignore[attr-defined]
        assert store.flush(10) and store.stats()["dropped_unreplayable"] == 1

        pending = store.put_snapshot("pkg.mod:f", snap(), quota=10, duration=3.0, hold=True)
        with caplog.at_level("WARNING", logger="pytest_perfreplay.remote"):
            store._flush_at_exit()  # a check still running: waits half the bound, then uploads
        stats = store.stats()
        assert stats["uploaded"] == 2 and stats["unchecked_at_exit"] == 1
        assert "round-trip check of pkg.mod:f still running at exit" in caplog.text
        pending.held.release(snap())  # type: ignore[attr-defined]  # too late: nothing changes
        assert store.stats()["queued"] == 0 and store.stats()["uploaded"] == 2
    finally:
        store.close()
        with contextlib.suppress(FileNotFoundError):
            fsspec.filesystem("memory").rm(url.split("://")[1], recursive=True)
