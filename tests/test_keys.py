"""The local signing key lives with the user, never in the store it vouches for."""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_perfreplay.cli import main as cli_main
from pytest_perfreplay.errors import SignatureError, StoreError
from pytest_perfreplay.snapshot.format import Keyring, encode, new_snapshot_id
from pytest_perfreplay.snapshot.keys import key_home, local_keyring, user_key_path
from pytest_perfreplay.snapshot.store import Store
from tests.capture_helpers import targets

capmod = importlib.import_module("pytest_perfreplay.capture.decorator")

ATTACKER_KEY = b"attacker-chosen-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def _no_configured_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("PERFREPLAY_KEY", "PERFREPLAY_VERIFY_KEYS", "PERFREPLAY_TARGETS"):
        monkeypatch.delenv(var, raising=False)


class Boom:
    """Unpickling this writes a marker file: proof that a payload was executed."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def planted_store(root: Path, marker: Path) -> Path:
    """What a tarball or CI artifact can bring: a 0600 key and files signed with it."""
    root.mkdir(mode=0o700)
    key = root / "key"
    key.write_bytes(ATTACKER_KEY)
    key.chmod(0o600)
    folder = root / "snapshots" / "svc_f"
    folder.mkdir(parents=True)
    data = encode(
        {"id": new_snapshot_id(), "target": "svc:f", "duration": 1.0},
        {"args": pickle.dumps(((Boom(str(marker)),), {}))},
        keyring=Keyring.from_secrets(ATTACKER_KEY),
    )
    path = folder / "slot-000.prsnap"
    path.write_bytes(data)
    return path


def test_a_store_that_brings_its_own_key_is_not_trusted(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = pytester.path / "EXECUTED"
    planted_store(pytester.path / ".perfreplay", marker)
    pytester.makepyfile(svc="def f(x):\n    return x\n")
    pytester.makeini("[pytest]\npythonpath = .\n")

    result = pytester.runpytest_subprocess("--perf-replay", "-p", "no:cacheprovider")
    assert not marker.exists()  # never unpickled
    result.stdout.fnmatch_lines(["*perfreplay refused to load this snapshot*"])
    result.assert_outcomes(failed=1)

    assert cli_main(["verify", "--store", str(pytester.path / ".perfreplay")]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "perfreplay key migrate" in out
    assert cli_main(["show", "--args", "--store", str(pytester.path / ".perfreplay"), "svc"]) == 2
    assert not marker.exists()


def test_migrate_trusts_an_old_store_key_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "old"
    path = planted_store(store, tmp_path / "marker")
    assert cli_main(["verify", "--store", str(store)]) == 1
    assert cli_main(["key", "migrate", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    migrated_id = Keyring.key_id(ATTACKER_KEY)
    assert f"migrated key {migrated_id}" in out
    assert not (store / "key").exists()  # moved out of the store
    assert (key_home() / "verify" / f"{migrated_id}.key").stat().st_mode & 0o777 == 0o600
    assert cli_main(["verify", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert f"key {migrated_id} (migrated key {key_home()}/verify/{migrated_id}.key)" in out
    assert path.name in out


def test_capture_signs_with_the_user_key_and_verify_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "store"
    capmod._reset()
    try:
        capmod.configure(enabled=True, store=root)
        capmod.capture(targets.echo)(1)
    finally:
        capmod._reset()
    assert not (root / "key").exists()
    assert user_key_path().is_file() and str(user_key_path()).startswith(
        os.environ["XDG_STATE_HOME"]
    )
    assert cli_main(["verify", "--store", str(root)]) == 0
    ring = local_keyring()
    assert ring is not None and ring.signing is not None
    assert f"key {ring.signing[0]} (user key {user_key_path()})" in capsys.readouterr().out


def test_verify_keys_add_to_the_local_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "store"
    capmod._reset()
    try:
        capmod.configure(enabled=True, store=root)
        capmod.capture(targets.echo)(2)
    finally:
        capmod._reset()
    monkeypatch.setenv("PERFREPLAY_VERIFY_KEYS", "a-key-from-another-service-0123")
    assert cli_main(["verify", "--store", str(root)]) == 0  # the local key still verifies
    ring = local_keyring()
    assert ring is not None and len(ring.verifying) == 2
    assert "PERFREPLAY_VERIFY_KEYS" in ring.origins.values()


def test_short_configured_keys_are_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("PERFREPLAY_KEY", "k")
    with pytest.raises(SignatureError, match="at least 16 bytes"):
        Keyring.from_env()
    assert cli_main(["verify", "--store", str(tmp_path)]) == 2
    assert "PERFREPLAY_KEY: a key must be at least 16 bytes" in capsys.readouterr().err


def test_a_fifo_at_the_key_path_is_refused_without_blocking(tmp_path: Path) -> None:
    key = user_key_path()
    key.parent.mkdir(parents=True, mode=0o700)
    os.mkfifo(key, 0o600)
    # In a subprocess with a timeout: the old code blocked in open() forever.
    code = (
        "from pytest_perfreplay.snapshot.keys import local_keyring\n"
        "try:\n    local_keyring(create=True)\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.startswith("StoreError") and "not a regular file" in out


def test_a_store_deleted_while_running_is_recreated_and_still_verifies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    root = tmp_path / "store"
    capmod._reset()
    try:
        capmod.configure(enabled=True, store=root)
        f = capmod.capture(targets.echo)
        f(1)
        shutil.rmtree(root)
        f(2)
        stats = capmod.stats()
    finally:
        capmod._reset()
    assert stats["captured"] == 2 and stats["failures"] == 0
    assert any("was deleted; recreating it" in r.getMessage() for r in caplog.records)
    assert cli_main(["verify", "--store", str(root)]) == 0
    assert "1 ok, 0 failed" in capsys.readouterr().out


def test_a_key_folder_others_can_write_is_refused() -> None:
    home = key_home()
    home.mkdir(parents=True, mode=0o700)
    home.chmod(0o777)
    with pytest.raises(StoreError, match="must be a directory owned by this user"):
        Store(Path("unused")).keyring(create=True)
