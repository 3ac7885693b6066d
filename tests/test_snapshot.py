"""The snapshot file: signing, key rotation, and refusing bad bytes before unpickling."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from pytest_perfreplay.errors import PerfReplayError, SignatureError, SnapshotError
from pytest_perfreplay.snapshot.format import (
    FORMAT_VERSION,
    MAGIC,
    Keyring,
    dumps,
    encode,
    read_header,
    read_header_file,
    verify,
)

KEY = Keyring.from_secrets(b"k1-0123456789abcdef0123")


class Marker:
    """Unpickling this creates a file: proof that bytes were (or were not) unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (_touch, (self.path,))


def _touch(path: str) -> str:
    Path(path).write_text("unpickled!")
    return path


def _fields(**extra: Any) -> dict[str, Any]:
    base = {
        "id": "abc123",
        "target": "pkg.mod:func",
        "async": False,
        "duration": 0.01,
        "versions": {"python": ".".join(map(str, __import__("sys").version_info[:3]))},
    }
    base.update(extra)
    return base


def _snapshot(marker: Path, keyring: Keyring | None = KEY, **kw: Any) -> bytes:
    payload = dumps(((Marker(str(marker)),), {})).data
    return encode(_fields(), {"args": payload}, keyring=keyring, **kw)


def test_round_trip_signed_and_compressed(tmp_path: Path) -> None:
    for compress in (False, True):
        data = encode(_fields(), {"args": dumps(((1, [2]), {"k": 3})).data}, keyring=KEY,
                      compress=compress)  # fmt: skip
        snap = verify(data, keyring=KEY)
        assert snap.signed and snap.load_call() == ((1, [2]), {"k": 3})
        assert snap.header["payload"]["codec"] == ("zstd" if compress else "none")


def test_key_rotation_one_signs_several_verify() -> None:
    old = Keyring.from_secrets(b"old-key-0123456789abcdef")
    new = Keyring.from_secrets(b"new-key-0123456789abcdef", [b"old-key-0123456789abcdef"])
    data_old = encode(_fields(), {"args": dumps(((), {})).data}, keyring=old)
    data_new = encode(_fields(), {"args": dumps(((), {})).data}, keyring=new)
    assert verify(data_old, keyring=new).signed  # old files still load after rotation
    assert verify(data_new, keyring=new).header["sig"]["key_id"] == Keyring.key_id(
        b"new-key-0123456789abcdef"
    )
    with pytest.raises(SignatureError, match="not among the verifying keys.*PERFREPLAY_VERIFY"):
        verify(data_new, keyring=old)


def _header_span(data: bytes) -> tuple[int, int]:
    n = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 4], "big")
    return len(MAGIC) + 4, len(MAGIC) + 4 + n


def _corruptions(good: bytes) -> dict[str, bytes]:
    start, end = _header_span(good)
    target_at = good.index(b"pkg.mod")
    flipped_header = bytearray(good)
    flipped_header[target_at] ^= 0x01  # 'p' -> 'q': still valid JSON, wrong signature
    flipped_payload = bytearray(good)
    flipped_payload[end + 10] ^= 0x40
    return {
        "header byte flipped": bytes(flipped_header),
        "payload byte flipped": bytes(flipped_payload),
        "truncated payload": good[:-7],
        "truncated header": good[: start + 10],
        "empty": b"",
        "random bytes": os.urandom(len(good)),
        "magic only": MAGIC,
    }


@pytest.mark.parametrize("compress", [False, True])
def test_tampered_and_broken_files_are_refused_before_unpickling(
    tmp_path: Path, compress: bool
) -> None:
    marker = tmp_path / "marker"
    good = _snapshot(marker, compress=compress)
    for what, data in _corruptions(good).items():
        with pytest.raises(SnapshotError) as info:
            verify(data, keyring=KEY, allow_unsigned=False)
        assert str(info.value), what
        assert not marker.exists(), what
    # A plain pickle, even when unsigned files are allowed, is never loaded.
    plain = pickle.dumps(Marker(str(marker)))
    with pytest.raises(SnapshotError, match="plain pickle"):
        verify(plain, keyring=KEY, allow_unsigned=True)
    assert not marker.exists()
    # The untouched file does unpickle (so the marker test would have caught a leak).
    verify(good, keyring=KEY).load_call()
    assert marker.exists()


def test_unsigned_is_refused_unless_allowed(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    data = _snapshot(marker, keyring=None)
    with pytest.raises(SignatureError, match="unsigned snapshot refused.*allow-unsigned"):
        verify(data, keyring=KEY)
    assert not marker.exists()
    snap = verify(data, keyring=KEY, allow_unsigned=True)
    assert not snap.signed


def test_signed_with_no_verifying_key_says_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(SignatureError, match="set PERFREPLAY_KEY"):
        verify(_snapshot(tmp_path / "m"), keyring=None)


def _resign(data: bytes, mutate: Any, keyring: Keyring = KEY) -> bytes:
    header, _, payload = read_header(data)
    fields = dict(header.fields)
    fields.pop("sig")
    mutate(fields)
    out = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    fields["sig"] = keyring.sign((MAGIC, out))
    out = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + len(out).to_bytes(4, "big") + out + payload


def test_newer_format_version_says_upgrade(tmp_path: Path) -> None:
    data = _resign(_snapshot(tmp_path / "m"), lambda f: f.update(format=FORMAT_VERSION + 1))
    with pytest.raises(SnapshotError, match="newer than this pytest-perfreplay.*upgrade"):
        verify(data, keyring=KEY)


def test_other_python_minor_version_is_refused_with_what_to_do(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    data = _resign(_snapshot(marker), lambda f: f.update(versions={"python": "2.7.18"}))
    with pytest.raises(
        SnapshotError, match=r"captured on Python 2\.7\.18.*Replay with Python 2\.7"
    ):
        verify(data, keyring=KEY)
    assert not marker.exists()
    assert verify(data, keyring=KEY, allow_python_mismatch=True).header.python == "2.7.18"


def test_unpickling_errors_become_snapshot_errors() -> None:
    payload = pickle.dumps(((), {}))[:-1] + b"c no_such_module\nthing\n."
    data = encode(_fields(), {"args": payload}, keyring=KEY)
    with pytest.raises(SnapshotError, match="cannot unpickle the 'args' section"):
        verify(data, keyring=KEY).load_call()


def test_header_file_reader_reads_only_the_header(tmp_path: Path) -> None:
    path = tmp_path / "s.prsnap"
    path.write_bytes(_snapshot(tmp_path / "m"))
    assert read_header_file(path).target == "pkg.mod:func"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(SnapshotError, match="size mismatch"):
        read_header_file(path)


@pytest.mark.slow
def test_fuzz_header_and_loader_only_raise_our_error(tmp_path: Path) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    marker = tmp_path / "marker"
    good = _snapshot(marker)
    start, end = _header_span(good)
    header_json = json.loads(good[start:end])
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    json_values = st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
        ),
        max_leaves=10,
    )

    def mutate_header(fields: dict[str, Any], key: str, value: Any) -> bytes:
        h = dict(header_json)
        h.update(fields)
        h[key] = value
        body = json.dumps(h).encode()
        return MAGIC + len(body).to_bytes(4, "big") + body + good[end:]

    edits = st.one_of(
        # byte-level damage anywhere
        st.tuples(st.integers(0, len(good) - 1), st.integers(1, 255)).map(
            lambda t: good[: t[0]] + bytes([good[t[0]] ^ t[1]]) + good[t[0] + 1 :]
        ),
        st.integers(0, len(good)).map(lambda n: good[:n]),
        st.binary(max_size=300),
        st.binary(max_size=300).map(lambda b: MAGIC + b),
        # structurally valid JSON with odd fields
        st.builds(
            mutate_header,
            st.just({}),
            st.sampled_from(sorted(header_json) + ["format", "payload", "sig", "x"]),
            json_values,
        ),
        st.builds(
            mutate_header,
            st.just({}),
            st.just("payload"),
            st.fixed_dictionaries(
                {
                    "codec": st.sampled_from(["none", "zstd", "x"]),
                    "size": st.integers(-5, 500),
                    "sections": st.lists(
                        st.dictionaries(
                            st.sampled_from(["name", "size", "sha256", "raw_size"]), json_values
                        ),
                        max_size=3,
                    ),
                }
            ),
        ),  # fmt: skip
    )
    count = 0

    @settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)  # fmt: skip
    @given(data=edits, allow_unsigned=st.booleans())
    def check(data: bytes, allow_unsigned: bool) -> None:
        nonlocal count
        count += 1
        try:
            snap = verify(data, keyring=KEY, allow_unsigned=allow_unsigned)
        except PerfReplayError:
            return
        h = snap.header  # accessors on a loaded header never raise
        _ = (h.id, h.target, h.is_async, h.duration, h.placeholders, h.has_result, h.python)
        if data != good:  # unsigned variants may load; signed ones only when untouched
            assert not snap.signed or data[end:] == good[end:]

    check()
    assert count >= 10_000
    assert not marker.exists()
