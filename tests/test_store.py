"""The local store: atomic writes, permissions, quotas, dedup, budget, keys, temp sweeping."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_perfreplay.errors import StoreError
from pytest_perfreplay.snapshot.format import Keyring, dumps, encode
from pytest_perfreplay.snapshot.keys import user_key_path
from pytest_perfreplay.snapshot.store import (
    TMP_PREFIX,
    Store,
    make_private_dirs,
    parse_budget,
    write_atomic,
)

KEY = Keyring.from_secrets(b"store-test-key-0123456789")


def _snap(duration: float, value: object = None, size: int = 0) -> tuple[bytes, str]:
    data = encode(
        {"id": os.urandom(6).hex(), "target": "m:f", "duration": duration},
        {"args": dumps(((value if value is not None else duration, bytes(size)), {})).data},
        keyring=KEY,
    )
    from pytest_perfreplay.snapshot.format import read_header

    digest = read_header(data)[0].args_digest
    assert digest is not None
    return data, digest


def _put(store: Store, duration: float, quota: int = 3, **kw: object) -> str:
    data, digest = _snap(duration, **kw)  # type: ignore[arg-type]
    return store.put_snapshot("m:f", data, quota=quota, duration=duration, digest=digest).outcome


def _durations(store: Store) -> list[float]:
    return sorted(h.duration for _, h in store.headers())  # type: ignore[union-attr,misc]


def test_files_are_0600_and_folders_0700(tmp_path: Path) -> None:
    store = Store(tmp_path / "a" / "b" / "store")
    assert _put(store, 0.1) == "written"
    for p in [store.root, store.snapshots_dir, *store.snapshots_dir.iterdir()]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o700, p
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700  # parents we created too
    for p in store.snapshot_paths():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600


def test_quota_keeps_the_slowest_and_never_exceeds(tmp_path: Path) -> None:
    store = Store(tmp_path, view_ttl=0.0)
    outcomes = [_put(store, d) for d in (0.3, 0.1, 0.2, 0.05, 0.4, 0.15, 0.5)]
    assert outcomes == [
        "written", "written", "written", "not_slower", "replaced", "not_slower", "replaced",
    ]  # fmt: skip
    assert _durations(store) == [0.3, 0.4, 0.5]
    assert len(store.snapshot_paths()) == 3


def _trusting(store: Store) -> Store:
    """A store that trusts durations signed with the test key (capture sets its own)."""
    store.trust_durations_from(KEY)
    return store


def test_other_processes_see_the_same_quota(tmp_path: Path) -> None:
    a = _trusting(Store(tmp_path, view_ttl=0.0))
    b = _trusting(Store(tmp_path, view_ttl=0.0))
    assert [_put(a, 0.1, quota=2), _put(b, 0.2, quota=2)] == ["written", "written"]
    assert _put(a, 0.05, quota=2) == "not_slower"
    assert _put(b, 0.3, quota=2) == "replaced"
    assert _durations(a) == [0.2, 0.3]


def test_a_stale_view_cannot_exceed_the_quota(tmp_path: Path) -> None:
    a, b = Store(tmp_path, view_ttl=3600.0), Store(tmp_path, view_ttl=3600.0)
    _put(a, 0.1, quota=2)  # a caches a view with one free slot
    _put(b, 0.2, quota=2)  # b takes that slot behind a's back
    assert _put(a, 0.3, quota=2) == "replaced"  # exclusive create fails, a re-reads
    assert len(a.snapshot_paths()) == 2


def test_identical_payloads_are_deduplicated(tmp_path: Path) -> None:
    store = Store(tmp_path)
    data, digest = _snap(0.1, value="same")
    first = store.put_snapshot("m:f", data, quota=5, duration=0.1, digest=digest)
    again = store.put_snapshot("m:f", data, quota=5, duration=0.9, digest=digest)
    assert (first.outcome, again.outcome) == ("written", "duplicate")
    assert _trusting(Store(tmp_path)).put_snapshot(
        "m:f", data, quota=5, duration=1, digest=digest
    ).outcome == ("duplicate")  # another process reads the digest from a signed header


def test_store_wide_byte_budget(tmp_path: Path) -> None:
    store = Store(tmp_path, budget_bytes=50_000)
    assert _put(store, 0.1, size=30_000) == "written"
    assert _put(store, 0.2, size=30_000) == "over_budget"
    assert len(store.snapshot_paths()) == 1
    assert parse_budget("2G") == 2 << 30 and parse_budget("500k") == 500 << 10
    with pytest.raises(StoreError, match="'lots' is not a byte size"):
        parse_budget("lots")


def test_unreadable_slot_files_are_replaced_first(tmp_path: Path) -> None:
    store = Store(tmp_path, view_ttl=0.0)
    _put(store, 0.1, quota=1)
    [path] = store.snapshot_paths()
    path.write_bytes(b"garbage")
    assert _put(store, 0.01, quota=1) == "replaced"


def test_write_atomic_cleans_up_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.prsnap"

    def boom(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", boom)
    with pytest.raises(OSError):
        write_atomic(target, b"data")
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_files_of_dead_writers_are_swept(tmp_path: Path) -> None:
    store = Store(tmp_path)
    folder = store.snapshots_dir / "m-f"
    make_private_dirs(folder)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    (folder / f"{TMP_PREFIX}slot-000.prsnap.{dead}.abcd").write_bytes(b"half")
    alive = folder / f"{TMP_PREFIX}slot-001.prsnap.{os.getpid()}.abcd"
    alive.write_bytes(b"in progress")
    assert _put(store, 0.1) == "written"  # the first write in a folder sweeps it
    assert [p.name for p in store.iter_tmp_files()] == [alive.name]
    assert store.sweep_tmp(max_age=-1) == 1


def test_store_key_is_created_private_and_refused_when_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PERFREPLAY_KEY", raising=False)
    monkeypatch.delenv("PERFREPLAY_VERIFY_KEYS", raising=False)
    store = Store(tmp_path / "s")
    assert store.keyring() is None
    ring = store.keyring(create=True)
    assert ring is not None and ring.signing is not None
    assert not store.key_path.exists()  # never in the store: it lives with the user
    user_key = user_key_path()
    assert stat.S_IMODE(user_key.stat().st_mode) == 0o600
    assert Store(tmp_path / "s").keyring() == ring  # stable across processes
    user_key.chmod(0o644)
    with pytest.raises(StoreError, match="must be owned by this user and mode 0600"):
        store.keyring()
    user_key.chmod(0o600)
    monkeypatch.setenv("PERFREPLAY_KEY", "configured-key-0123456789")
    configured = store.keyring()
    assert configured is not None and configured.signing is not None
    assert configured.signing[1] == b"configured-key-0123456789"


def test_find_by_id_prefix(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _put(store, 0.1)
    [(path, header)] = list(store.headers())
    assert store.find(header.id[:6]) == path  # type: ignore[union-attr]
    with pytest.raises(StoreError, match="no snapshot 'zzz'"):
        store.find("zzz")
