"""py-spy: the preflight from faked host readings, the recorder's checks against fake py-spy
executables (real subprocesses that misbehave the ways py-spy does), and one real attach."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_perfreplay.profile.passes import pyspy
from pytest_perfreplay.profile.pyspy import Host, PySpyError, PySpyOptions, preflight

PTRACE_BIT = 1 << 19
ALL_CAPS = 0x1FFFFFFFFFF
NO_PTRACE = ALL_CAPS & ~PTRACE_BIT


def fake_host(
    *,
    platform: str = "linux",
    euid: int = 1000,
    files: dict[str, str] | None = None,
    present: tuple[str, ...] = (),
    file_caps: int | None = None,
    implementation: str = "cpython",
    version: tuple[int, int] = (3, 12),
    free_threaded: bool = False,
    cap_bnd: int = ALL_CAPS,
    cap_amb: int = 0,
) -> Host:
    """A host whose /proc readings, marker files and file capabilities are given."""
    proc = {
        "/proc/self/status": f"Name:\tpython\nCapAmb:\t{cap_amb:016x}\nCapBnd:\t{cap_bnd:016x}\n",
        **(files or {}),
    }
    return Host(
        platform=platform,
        euid=euid,
        implementation=implementation,
        version=version,
        free_threaded=free_threaded,
        read=proc.get,
        exists=lambda path: path in present,
        file_caps=lambda path: file_caps,
    )


@pytest.fixture
def exe(tmp_path: Path) -> str:
    path = tmp_path / "py-spy"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return str(path)


YAMA = "/proc/sys/kernel/yama/ptrace_scope"


def test_preflight_plain_linux_is_fine(exe: str) -> None:
    check = preflight(PySpyOptions(executable=exe), fake_host(files={YAMA: "1"}))
    assert check.refusal is None and check.hints == () and check.executable == exe


def test_preflight_missing_executable() -> None:
    check = preflight(PySpyOptions(executable="/nonexistent/py-spy"), fake_host())
    assert check.refusal == "py-spy executable '/nonexistent/py-spy' does not exist"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (fake_host(platform="darwin"), "sudo -E env PATH=$PATH pytest"),
        (fake_host(files={YAMA: "3"}), "kernel.yama.ptrace_scope = 1` in /etc/sysctl.d/"),
        (fake_host(files={YAMA: "2"}), "sudo setcap cap_sys_ptrace+ep "),
        (fake_host(files={YAMA: "2"}), "`sudo sysctl kernel.yama.ptrace_scope=1`"),
        (fake_host(implementation="pypy"), "py-spy reads CPython only, this is pypy"),
        (fake_host(free_threaded=True), "free-threaded (no-GIL) CPython build"),
        # Yama 3 refuses even root
        (fake_host(euid=0, files={YAMA: "3"}), "forbids every attach until reboot"),
        # root in a container whose bounding set lacks SYS_PTRACE cannot pass Yama 2
        (fake_host(euid=0, files={YAMA: "2"}, cap_bnd=NO_PTRACE), "ptrace_scope=2"),
    ],
)
def test_preflight_refusals_carry_the_exact_fix(exe: str, host: Host, expected: str) -> None:
    check = preflight(PySpyOptions(executable=exe), host)
    assert check.refusal is not None and expected in check.refusal, check.refusal


@pytest.mark.parametrize(
    "host",
    [
        fake_host(platform="darwin", euid=0),  # root on macOS may attach
        fake_host(files={YAMA: "2"}, file_caps=PTRACE_BIT),  # setcap'd py-spy
        fake_host(files={YAMA: "2"}, cap_amb=PTRACE_BIT),  # ambient capability
        fake_host(euid=0, files={YAMA: "2"}),  # root with the capability
        fake_host(files={YAMA: "0"}),
        fake_host(files={}),  # no Yama at all
        fake_host(euid=0, present=("/.dockerenv",)),  # container with SYS_PTRACE (root)
    ],
)
def test_preflight_allows(exe: str, host: Host) -> None:
    check = preflight(PySpyOptions(executable=exe), host)
    assert check.refusal is None and check.hints == ()


@pytest.mark.parametrize(
    "host",
    [
        fake_host(present=("/.dockerenv",)),
        fake_host(present=("/run/.containerenv",)),
        fake_host(files={"/proc/1/cgroup": "0::/kubepods/burstable/pod1/abc"}),
        fake_host(euid=0, files={"/proc/1/cgroup": "12:pids:/docker/4f2a"}, cap_bnd=NO_PTRACE),
    ],
)
def test_preflight_container_without_sys_ptrace_is_a_hint(exe: str, host: Host) -> None:
    # Recent Docker lets a same-user attach through, so the attach is tried; the fix is
    # attached to the error if it is refused.
    check = preflight(PySpyOptions(executable=exe), host)
    assert check.refusal is None
    assert len(check.hints) == 1 and "--cap-add SYS_PTRACE" in check.hints[0]
    assert "securityContext.capabilities.add" in check.hints[0]


def test_preflight_newer_python_than_known_is_a_hint(exe: str) -> None:
    check = preflight(PySpyOptions(executable=exe), fake_host(version=(3, 15)))
    assert check.refusal is None
    assert check.hints == ("py-spy may not support Python 3.15 yet: `pip install -U py-spy`",)


def test_host_reads_the_real_machine() -> None:
    host = Host()
    assert host.platform == sys.platform and host.implementation == sys.implementation.name
    if sys.platform.startswith("linux"):
        assert host.capabilities("CapBnd") != 0


def test_options_map_to_pyspy_flags() -> None:
    assert PySpyOptions().arguments() == ["--rate", "500", "--full-filenames", "--function"]
    args = PySpyOptions(rate=97, native=True, gil=True, idle=True, nonblocking=True).arguments()
    assert args == [
        "--rate",
        "97",
        "--full-filenames",
        "--function",
        "--native",
        "--gil",
        "--idle",
        "--nonblocking",
    ]


# ------------------------------------------------------------------------------------------
# the recorder against fake py-spy executables

FAKE = """\
#!{python}
# Behaves like `py-spy record --pid P --format speedscope --output OUT ...`, or misbehaves.
import json, os, signal, sys, time
mode = {mode!r}
argv = sys.argv[1:]
out = argv[argv.index("--output") + 1]
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "seen.json"), "w") as f:
    json.dump({{"argv": argv, "rust_backtrace": os.environ.get("RUST_BACKTRACE")}}, f)
if mode == "refuse":
    print("Error: Permission denied (os error 13)", flush=True)
    sys.exit(1)
if mode == "silent":
    time.sleep(30)
    sys.exit(0)
stop = []
signal.signal(signal.SIGINT, lambda *a: stop.append(1))
print("py-spy> Sampling process 100 times a second. Press Control-C to exit.", flush=True)
while not stop:
    time.sleep(0.005)
doc = {{"$schema": "https://www.speedscope.app/file-format-schema.json",
       "shared": {{"frames": [{{"name": "work", "file": "/app/w.py", "line": 1}}]}},
       "profiles": [{{"type": "sampled", "name": "t", "unit": "seconds", "startValue": 0,
                     "endValue": 0.02, "samples": [[0], [0]], "weights": [0.01, 0.01]}}]}}
if mode == "empty":
    doc["profiles"] = []
if mode == "fail-after":
    print("Error: Failed to read stack", flush=True)
    sys.exit(1)
if mode != "no-output":
    with open(out, "w") as f:
        f.write("{{not json" if mode == "garbage" else json.dumps(doc))
print("Wrote speedscope file to " + out, flush=True)
"""


def fake_pyspy(tmp_path: Path, mode: str) -> str:
    path = tmp_path / "fake-py-spy"
    path.write_text(FAKE.format(python=sys.executable, mode=mode))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_record_with_a_well_behaved_fake(tmp_path: Path) -> None:
    ran: list[int] = []
    raw = tmp_path / "kept" / "raw.json"
    opts = PySpyOptions(rate=100, executable=fake_pyspy(tmp_path, "ok"), raw_copy=raw, gil=True)
    recording = pyspy.record(lambda: ran.append(1), opts)
    assert ran == [1]
    assert recording.document["profiles"][0]["weights"] == [0.01, 0.01]
    assert recording.attach_seconds > 0
    assert json.loads(raw.read_text()) == recording.document
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["rust_backtrace"] == "0"
    argv = seen["argv"]
    assert argv[:3] == ["record", "--pid", str(os.getpid())]
    assert argv[argv.index("--format") + 1] == "speedscope"
    assert "--gil" in argv and argv[argv.index("--rate") + 1] == "100"


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("refuse", "py-spy exited with 1 before sampling: Error: Permission denied (os error 13)"),
        ("fail-after", "py-spy exited with 1: Error: Failed to read stack"),
        ("no-output", "py-spy wrote no fresh output: Wrote speedscope file to"),
        ("empty", "py-spy took no samples"),
        ("garbage", "py-spy wrote unreadable output"),
    ],
)
def test_record_failures_say_why(tmp_path: Path, mode: str, message: str) -> None:
    ran: list[int] = []
    with pytest.raises(PySpyError) as info:
        pyspy.record(lambda: ran.append(1), PySpyOptions(executable=fake_pyspy(tmp_path, mode)))
    assert message in str(info.value)
    assert ran == ([] if mode == "refuse" else [1])  # never run the calls without a profiler


def test_record_permission_error_gets_the_fix(tmp_path: Path) -> None:
    with pytest.raises(PySpyError, match=r"attaching needs ptrace permission: .*SYS_PTRACE"):
        pyspy.record(lambda: None, PySpyOptions(executable=fake_pyspy(tmp_path, "refuse")))


def test_record_ready_timeout_kills_pyspy(tmp_path: Path) -> None:
    opts = PySpyOptions(executable=fake_pyspy(tmp_path, "silent"), ready_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(PySpyError, match=r"py-spy was not ready within 0.5 s"):
        pyspy.record(lambda: None, opts)
    assert time.monotonic() - started < 25  # killed, not waited for


def test_record_bin_false_fails_before_running(tmp_path: Path) -> None:
    with pytest.raises(PySpyError, match=r"exited with 1 before sampling: \(no output\)"):
        pyspy.record(lambda: None, PySpyOptions(executable="/bin/false"))


def test_record_error_in_calls_kills_pyspy_and_propagates(tmp_path: Path) -> None:
    def boom() -> None:
        raise KeyError("from the replayed call")

    with pytest.raises(KeyError):
        pyspy.record(boom, PySpyOptions(executable=fake_pyspy(tmp_path, "ok")))


# ------------------------------------------------------------------------------------------
# the real one


def _spin_target(until: float) -> int:
    n = 0
    while time.perf_counter() < until:
        n += sum(i * i for i in range(200))
    return n


@pytest.mark.pyspy
def test_real_pyspy_attaches_to_this_process(real_pyspy: str, tmp_path: Path) -> None:
    raw = tmp_path / "raw.json"
    recording = pyspy.record(
        lambda: _spin_target(time.perf_counter() + 0.5),
        PySpyOptions(rate=200, executable=real_pyspy, raw_copy=raw),
    )
    doc: dict[str, Any] = recording.document
    assert raw.is_file()
    frames = doc["shared"]["frames"]
    names = {frames[i]["name"] for p in doc["profiles"] for s in p["samples"] for i in s}
    assert "_spin_target" in names
    assert recording.attach_seconds > 0
