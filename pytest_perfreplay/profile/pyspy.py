"""py-spy attached to this very process, only around the replayed calls.

py-spy hides failures (ANCHORS.md): it can exit 0 without output, exit 1 and leave a stale file,
or print a Rust backtrace. So every run deletes old output, waits for the ready line, stops with
SIGINT and checks the exit code, the file's freshness and the sample count; any failure raises
:class:`PySpyError` with py-spy's own last line and, when attaching was refused, the exact fix.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PR_SET_PTRACER = 0x59616D61
CAP_SYS_PTRACE = 19
READY_MARKER = "Sampling process"
STOP_TIMEOUT = 20.0
#: The newest CPython release py-spy 0.4.x is known to read; newer ones get a hint, not a refusal.
NEWEST_KNOWN_PYTHON = (3, 14)
_CONTAINER_CGROUP = re.compile(r"docker|kubepods|containerd|libpod|lxc|crio")


class PySpyError(RuntimeError):
    """py-spy could not produce a profile; the message says why and, if known, the fix."""


AttachRefused = PySpyError  # the name the first pass used


@dataclass(frozen=True)
class PySpyOptions:
    rate: int = 500
    native: bool = False
    gil: bool = False
    idle: bool = False
    nonblocking: bool = False
    executable: str | None = None  # default: the py-spy next to this Python, then $PATH
    ready_timeout: float = 10.0
    raw_copy: Path | None = None  # keep py-spy's untouched output here (debugging, tests)

    def arguments(self) -> list[str]:
        """The ``py-spy record`` options these settings stand for (besides pid and output)."""
        args = ["--rate", str(self.rate), "--full-filenames", "--function"]
        for flag, on in (
            ("--native", self.native),
            ("--gil", self.gil),
            ("--idle", self.idle),
            ("--nonblocking", self.nonblocking),
        ):
            if on:
                args.append(flag)
        return args


# ------------------------------------------------------------------------------------------
# preflight


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _file_caps(path: str) -> int | None:
    """Permitted capability bits that ``setcap`` gave an executable (None: none or unknown)."""
    getxattr = getattr(os, "getxattr", None)
    if getxattr is None:
        return None
    try:
        raw: bytes = getxattr(os.path.realpath(path), "security.capability")
    except OSError:
        return None
    if len(raw) < 8:
        return None
    # struct vfs_cap_data: le32 magic_etc, then {le32 permitted, le32 inheritable} x 1 or 2
    low = struct.unpack_from("<I", raw, 4)[0]
    high = struct.unpack_from("<I", raw, 12)[0] if len(raw) >= 16 else 0
    return int(low) | (int(high) << 32)


def _free_threaded() -> bool:
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


@dataclass(frozen=True)
class Host:
    """What the preflight reads about this machine. Tests build one with fake readers."""

    platform: str = field(default_factory=lambda: sys.platform)
    euid: int = field(default_factory=lambda: os.geteuid() if hasattr(os, "geteuid") else -1)
    implementation: str = field(default_factory=lambda: sys.implementation.name)
    version: tuple[int, int] = field(default_factory=lambda: sys.version_info[:2])
    free_threaded: bool = field(default_factory=_free_threaded)
    read: Callable[[str], str | None] = _read_text  # a /proc or /sys file, stripped
    exists: Callable[[str], bool] = os.path.exists
    file_caps: Callable[[str], int | None] = _file_caps

    def capabilities(self, name: str) -> int:
        """A capability mask of this process from /proc/self/status (CapEff, CapBnd, ...)."""
        for line in (self.read("/proc/self/status") or "").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                with contextlib.suppress(ValueError):
                    return int(value.strip(), 16)
        return 0

    def in_container(self) -> bool:
        if self.exists("/.dockerenv") or self.exists("/run/.containerenv"):
            return True
        return bool(_CONTAINER_CGROUP.search(self.read("/proc/1/cgroup") or ""))


@dataclass(frozen=True)
class Preflight:
    """``refusal``: attaching cannot work here (why, and the exact fix). ``hints``: it may be
    refused; added to the error message if the attach then fails."""

    executable: str | None
    refusal: str | None = None
    hints: tuple[str, ...] = ()


def find_pyspy(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit if os.path.isfile(explicit) or shutil.which(explicit) else None
    here = Path(sysconfig.get_path("scripts")) / "py-spy"
    if here.exists():
        return str(here)
    return shutil.which("py-spy")


def _has_bit(mask: int, bit: int) -> bool:
    return bool((mask >> bit) & 1)


def _tracer_can_ptrace(host: Host, exe: str) -> bool:
    """Will the py-spy child hold CAP_SYS_PTRACE? Root keeps its bounding set across exec; any
    other user needs it ambient or granted to the py-spy binary by setcap."""
    bounding = host.capabilities("CapBnd")
    if not _has_bit(bounding, CAP_SYS_PTRACE):
        return False
    if host.euid == 0:
        return True
    if _has_bit(host.capabilities("CapAmb"), CAP_SYS_PTRACE):
        return True
    return _has_bit(host.file_caps(exe) or 0, CAP_SYS_PTRACE)


def preflight(options: PySpyOptions, host: Host | None = None) -> Preflight:
    """Whether py-spy can attach to this process, from what the host says (no attach is tried)."""
    host = host or Host()
    exe = find_pyspy(options.executable)
    if exe is None:
        if options.executable:
            return Preflight(None, f"py-spy executable {options.executable!r} does not exist")
        return Preflight(None, "py-spy is not installed: `pip install py-spy`")
    if host.implementation != "cpython":
        return Preflight(exe, f"py-spy reads CPython only, this is {host.implementation}")
    if host.free_threaded:
        return Preflight(
            exe,
            "py-spy 0.4 cannot read a free-threaded (no-GIL) CPython build: run the profile "
            "pass on a regular build, or use --perf-replay-profile=pyinstrument",
        )
    hints: list[str] = []
    if host.version > NEWEST_KNOWN_PYTHON:
        hints.append(
            f"py-spy may not support Python {host.version[0]}.{host.version[1]} yet: "
            "`pip install -U py-spy`"
        )
    if host.platform == "darwin" and host.euid != 0:
        return Preflight(
            exe,
            "macOS lets only root attach py-spy: run `sudo -E env PATH=$PATH pytest …`, "
            "or use --perf-replay-profile=pyinstrument",
            tuple(hints),
        )
    if host.platform.startswith("linux"):
        scope = host.read("/proc/sys/kernel/yama/ptrace_scope")
        capable = _tracer_can_ptrace(host, exe)
        if scope == "3":
            return Preflight(
                exe,
                "kernel.yama.ptrace_scope=3 forbids every attach until reboot: put "
                "`kernel.yama.ptrace_scope = 1` in /etc/sysctl.d/10-ptrace.conf and reboot",
                tuple(hints),
            )
        if scope == "2" and not capable:
            return Preflight(
                exe,
                "kernel.yama.ptrace_scope=2 lets only CAP_SYS_PTRACE attach: run "
                f"`sudo setcap cap_sys_ptrace+ep {os.path.realpath(exe)}`, or "
                "`sudo sysctl kernel.yama.ptrace_scope=1`",
                tuple(hints),
            )
        if host.in_container() and not capable:
            # Recent Docker allows a same-user attach without the capability, so this is
            # only a hint: the attach is still tried.
            hints.append(
                "this container lacks CAP_SYS_PTRACE: start it with `docker run --cap-add "
                "SYS_PTRACE …`, or in Kubernetes add SYS_PTRACE to "
                "securityContext.capabilities.add"
            )
    return Preflight(exe, None, tuple(hints))


# ------------------------------------------------------------------------------------------
# recording


@dataclass(frozen=True)
class Recording:
    document: dict[str, Any]  # py-spy's speedscope JSON, untouched
    attach_seconds: float  # spawn to the ready line
    command: tuple[str, ...]


def _allow_tracer(pid: int) -> None:
    """Let the py-spy child trace us on Yama ptrace_scope=1 hosts (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PTRACER, ctypes.c_ulong(pid), 0, 0, 0)


def record(
    run: Callable[[], None], options: PySpyOptions, *, host: Host | None = None
) -> Recording:
    """Attach py-spy to this process, call ``run()``, stop it; return the raw speedscope JSON."""
    check = preflight(options, host)
    if check.refusal is not None:
        raise PySpyError(check.refusal)
    assert check.executable is not None
    with tempfile.TemporaryDirectory(prefix="perfreplay-pyspy-") as tmp:
        out = Path(tmp) / "profile.speedscope.json"
        out.unlink(missing_ok=True)  # never read a stale file
        cmd = [
            check.executable,
            "record",
            "--pid",
            str(os.getpid()),
            "--format",
            "speedscope",
            "--output",
            str(out),
            *options.arguments(),
        ]
        env = dict(os.environ, RUST_BACKTRACE="0")
        started_wall = time.time()
        started = time.perf_counter()
        try:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
            )
        except OSError as exc:
            raise PySpyError(f"could not start py-spy ({check.executable}): {exc}") from None
        _allow_tracer(proc.pid)
        lines: list[str] = []
        try:
            _wait_ready(proc, lines, options.ready_timeout, check.hints)
            attach_seconds = time.perf_counter() - started
            run()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            _allow_tracer(0)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise PySpyError(f"py-spy did not stop within {STOP_TIMEOUT:.0f} s of SIGINT") from None
        tail = "".join(lines) + (proc.stdout.read() if proc.stdout else "")
        if proc.stdout:
            proc.stdout.close()
        if proc.returncode not in (0, -signal.SIGINT):
            raise PySpyError(
                f"py-spy exited with {proc.returncode}: {_last_line(tail)}"
                + _attach_hint(tail, check.hints)
            )
        # A second's slack: some filesystems keep whole-second mtimes.
        if not out.exists() or out.stat().st_mtime < started_wall - 1:
            raise PySpyError(f"py-spy wrote no fresh output: {_last_line(tail)}")
        text = out.read_text()
        if options.raw_copy is not None:
            options.raw_copy.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(options.raw_copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        try:
            doc: dict[str, Any] = json.loads(text)
        except ValueError as exc:
            raise PySpyError(f"py-spy wrote unreadable output: {exc}") from None
    if not any(p.get("samples") for p in doc.get("profiles", [])):
        raise PySpyError("py-spy took no samples (were the calls too short?)")
    return Recording(doc, attach_seconds, tuple(cmd))


def _wait_ready(
    proc: subprocess.Popen[str], lines: list[str], timeout: float, hints: tuple[str, ...]
) -> None:
    """Block until py-spy prints its 'Sampling process' line, or fail with what it said."""
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if READY_MARKER in line:
                ready.set()
                return

    reader = threading.Thread(target=pump, name="perfreplay-pyspy-ready", daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.005):
        if proc.poll() is not None:
            reader.join(1.0)
            said = "".join(lines)
            raise PySpyError(
                f"py-spy exited with {proc.returncode} before sampling: "
                f"{_last_line(said)}{_attach_hint(said, hints)}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            reader.join(1.0)
            raise PySpyError(
                f"py-spy was not ready within {timeout:g} s: {_last_line(''.join(lines))}"
            )
    reader.join(1.0)


def _attach_hint(output: str, hints: tuple[str, ...]) -> str:
    extra = list(hints)
    if not extra and any(
        s in output for s in ("Permission denied", "Operation not permitted", "ptrace")
    ):
        extra.append(
            "attaching needs ptrace permission: run as root, start the container with "
            "`--cap-add SYS_PTRACE`, or `sudo sysctl kernel.yama.ptrace_scope=1`"
        )
    if "Unsupported version of Python" in output and not any("pip install -U" in h for h in extra):
        extra.append("this py-spy does not know this Python: `pip install -U py-spy`")
    return "".join(f" ({h})" for h in extra)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"
