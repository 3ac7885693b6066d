"""What redaction cannot scrub is replaced by a stand-in, listed in the header, and the call
is kept (``redact="strict"`` skips it): a reference cycle that cannot be copied, and a
subgraph past the walk's depth limit. The secret's value never reaches disk."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from pytest_perfreplay.capture.decorator import capture, stats
from pytest_perfreplay.capture.redact import _MAX_DEPTH
from pytest_perfreplay.snapshot.format import StandIn
from tests.capture_helpers import fixtures, targets
from tests.capture_helpers.fixtures import KEY, Cap

cap = fixtures.cap
ROOT = Path(__file__).resolve().parents[1]


class Config:
    def __init__(self, password: str) -> None:
        self.password = password
        self.peers: Any = None


def _chain(levels: int, bottom: Any) -> dict[str, Any]:
    node: dict[str, Any] = {"bottom": bottom}
    for _ in range(levels):
        node = {"next": node}
    return node


def _depth(node: Any) -> int:
    n = 0
    while isinstance(node, dict) and "next" in node:
        node, n = node["next"], n + 1
    return n


def test_cycle_through_a_tuple_entered_at_the_tuple_is_scrubbed_exactly(cap: Cap) -> None:
    # Used to be skipped: the back edge met the tuple before it had a copy.
    ring: list[Any] = []
    node = ({"password": "pw-TUPLE-RING"}, ring)
    ring.append(node)
    capture(targets.echo)(node)
    assert stats()["skipped"] == {}
    assert b"pw-TUPLE-RING" not in cap.raw_bytes()
    (snap,) = cap.snapshots()
    (kept,), _ = snap.load_call()
    assert kept[0]["password"] == "<redacted>"
    assert kept[1][0] is kept  # the cycle survives, through the copy
    assert snap.header.get("unscrubbable") is None
    assert node[0]["password"] == "pw-TUPLE-RING"  # the caller's object is untouched


def test_cycle_through_a_frozenset_is_scrubbed_exactly(cap: Cap) -> None:
    cfg = Config("pw-FROZEN-RING")
    peers = frozenset([cfg])
    cfg.peers = peers
    capture(targets.echo)(peers)
    assert b"pw-FROZEN-RING" not in cap.raw_bytes()
    (snap,) = cap.snapshots()
    (kept,), _ = snap.load_call()
    (member,) = kept
    assert member.password == "<redacted>" and member.peers is kept
    assert snap.header.get("unscrubbable") is None


def _immutable_ring() -> tuple[Any, ...]:
    """A cycle through a tuple and a functools.partial only: neither can be copied ahead of
    its children, so no copy of the cycle can be closed."""
    callback = functools.partial(print)
    node = ({"password": "pw-IMMUTABLE-RING"}, callback)
    callback.__setstate__((print, (node,), {}, None))
    return node


def test_cycle_through_immutable_nodes_only_keeps_the_call_with_a_stand_in(cap: Cap) -> None:
    node = _immutable_ring()
    capture(targets.echo)(node)
    assert stats()["skipped"] == {}
    assert b"pw-IMMUTABLE-RING" not in cap.raw_bytes()
    (snap,) = cap.snapshots()
    (kept,), _ = snap.load_call()
    assert kept[0]["password"] == "<redacted>"
    standin = kept[1].args[0]
    assert isinstance(standin, StandIn) and "cycle" in standin.why
    gaps = snap.header["unscrubbable"]
    assert gaps == [{"path": standin.path, "why": standin.why}]
    assert standin.path.startswith("args[0][1].args[0]")
    assert "pw-IMMUTABLE" not in json.dumps(snap.header.fields)
    assert {"path": "args[0][0]['password']", "by": "key"} in snap.header["redactions"]


def test_secret_past_the_depth_limit_is_a_stand_in_and_the_rest_is_scrubbed(cap: Cap) -> None:
    deep = _chain(_MAX_DEPTH + 40, {"password": "pw-DEEP-DOWN"})
    capture(targets.echo)(deep, token="tok-SHALLOW-1234")
    assert stats()["skipped"] == {}
    raw = cap.raw_bytes()
    assert b"pw-DEEP-DOWN" not in raw and b"tok-SHALLOW-1234" not in raw
    (snap,) = cap.snapshots()
    (kept,), kwargs = snap.load_call()
    assert kwargs == {"token": "<redacted>"}
    node = kept
    for _ in range(_MAX_DEPTH):
        node = node["next"]
    assert isinstance(node, StandIn) and node.why == f"deeper than {_MAX_DEPTH} levels"
    (gap,) = snap.header["unscrubbable"]
    assert gap["why"] == node.why and gap["path"].startswith("args[0]['next']['next']")
    assert len(gap["path"]) < 200  # shortened, never a megabyte of path


def test_deep_graph_with_nothing_to_scrub_below_the_limit_is_kept_whole(cap: Cap) -> None:
    deep = _chain(_MAX_DEPTH + 40, {"count": 7})
    capture(targets.echo)(deep, token="tok-SHALLOW-5678")  # a secret elsewhere: a walk runs
    (snap,) = cap.snapshots()
    (kept,), kwargs = snap.load_call()
    assert kwargs == {"token": "<redacted>"}
    assert _depth(kept) == _MAX_DEPTH + 40  # not cut: its own pickle holds no secret
    assert snap.header.get("unscrubbable") is None


def test_strict_still_skips_what_it_cannot_scrub_exactly(cap: Cap) -> None:
    f = capture(redact="strict")(targets.echo)
    f(_immutable_ring())
    f(_chain(_MAX_DEPTH + 40, {"password": "pw-DEEP-STRICT"}))
    assert stats()["skipped"] == {"redaction": 2}
    assert cap.store.snapshot_paths() == []
    raw = cap.raw_bytes()
    assert b"pw-IMMUTABLE-RING" not in raw and b"pw-DEEP-STRICT" not in raw


def test_show_and_replay_say_the_input_holds_stand_ins(tmp_path: Path) -> None:
    """Real processes: a service captures, `perfreplay show` and a replay session report."""
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "svc.py").write_text(
        textwrap.dedent(
            """
            import functools
            from pytest_perfreplay import capture

            @capture
            def handle(node):
                return len(node)

            def main():
                cb = functools.partial(print)
                node = ({"password": "pw-IN-A-SERVICE"}, cb)
                cb.__setstate__((print, (node,), {}, None))
                handle(node)

            if __name__ == "__main__":
                main()
            """
        )
    )
    env = {
        **os.environ,
        "PERFREPLAY_CAPTURE": "1",
        "PERFREPLAY_KEY": KEY.decode(),
        "PERFREPLAY_STORE": str(tmp_path / ".perfreplay"),
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
    }
    env.pop("PERFREPLAY_TARGETS", None)
    subprocess.run([sys.executable, "svc.py"], cwd=tmp_path, env=env, check=True, timeout=120)
    files = list((tmp_path / ".perfreplay").rglob("*.prsnap"))
    assert len(files) == 1 and b"pw-IN-A-SERVICE" not in files[0].read_bytes()
    main = "import sys; from pytest_perfreplay.cli import main; sys.exit(main())"
    cli = [sys.executable, "-c", main, "show"]
    shown = subprocess.run(
        [*cli, files[0].name.removesuffix(".prsnap")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert "!! 1 part(s) of the arguments could not be scrubbed" in shown.stdout
    assert "args[0][1].args[0]" in shown.stdout
    replay = subprocess.run(
        [sys.executable, "-m", "pytest", "--perf-replay", "-p", "no:cacheprovider", "-v"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = replay.stdout
    assert "[STAND-IN]" in out, out
    assert "STAND-IN: 1 part(s) of this input are not production's" in out
    assert "!! 1 snapshot(s) replayed stand-ins" in out
