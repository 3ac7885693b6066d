"""Capture under real concurrency and real crashes: many processes, SIGKILL mid-write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pytest_perfreplay.replay.call import read_snapshot
from pytest_perfreplay.snapshot.format import Keyring
from pytest_perfreplay.snapshot.store import TMP_PREFIX, Store

ROOT = Path(__file__).resolve().parents[1]
KEY = "procs-test-key-0123456789abcdef"


def _env() -> dict[str, str]:
    env = dict(os.environ, PERFREPLAY_KEY=KEY, PYTHONPATH=str(ROOT))
    env.pop("PERFREPLAY_VERIFY_KEYS", None)
    return env


def test_eight_processes_never_exceed_the_quota(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.capture_helpers.worker", str(store_dir), "500", "50"],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    store = Store(store_dir)
    paths = store.snapshot_paths()
    assert 0 < len(paths) <= 50
    keyring = Keyring.from_secrets(KEY.encode())
    for path in paths:
        snap = read_snapshot(path, keyring=keyring)
        args, _ = snap.load_call()
        assert isinstance(args[0], int) and isinstance(args[1], bytes)
    assert list(store.iter_tmp_files()) == []
    assert all(p.name.startswith("slot-") for p in paths)
    written = sum(int(out.split()[0]) for out, _ in outputs)
    assert written >= 50  # every slot got filled, and slow calls replaced fast ones


def test_sigkill_mid_write_never_leaves_a_visible_partial_snapshot(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    keyring = Keyring.from_secrets(KEY.encode())
    kills = 0
    seen_tmp = 0
    checked: set[tuple[str, int]] = set()
    while kills < 50:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.capture_helpers.writer", str(store_dir)],
            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        # Kill at a varying moment: every other time as soon as a temp file shows up (so
        # mid-write), otherwise after 5-185 ms (so some writes complete in between).
        deadline = time.monotonic() + 0.005 + 0.02 * (kills % 10)
        while time.monotonic() < deadline:
            if kills % 2 == 0 and any(
                True for _ in (store_dir / "snapshots").glob(f"*/{TMP_PREFIX}*")
            ):
                break
        seen_tmp += any(True for _ in (store_dir / "snapshots").glob(f"*/{TMP_PREFIX}*"))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        for path in Store(store_dir).snapshot_paths():  # every visible file is whole
            key = (path.name, path.stat().st_ino)
            if key in checked:
                continue
            read_snapshot(path, keyring=keyring)
            checked.add(key)
    assert seen_tmp > 0  # some kills did land mid-write
    store = Store(store_dir)
    assert len(store.snapshot_paths()) >= 1
    leftovers = list(store.iter_tmp_files())
    assert store.sweep_tmp() == len(leftovers)  # dead writers' temp files are swept
    assert list(store.iter_tmp_files()) == []
