"""py-spy attached to this very process, only around the replayed calls."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PR_SET_PTRACER = 0x59616D61
READY_MARKER = "Sampling process"
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 20.0


class AttachRefused(RuntimeError):
    """py-spy cannot attach here; the message carries the exact fix."""


@dataclass(frozen=True)
class PySpyOptions:
    rate: int = 500
    native: bool = False
    gil: bool = False
    idle: bool = False
    nonblocking: bool = False
    executable: str | None = None


def find_pyspy(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    here = Path(sysconfig.get_path("scripts")) / "py-spy"
    if here.exists():
        return str(here)
    return shutil.which("py-spy")


def preflight(options: PySpyOptions) -> str | None:
    """Why attaching would be refused, with the fix; None when it should work."""
    exe = find_pyspy(options.executable)
    if exe is None:
        return "py-spy is not installed: pip install py-spy"
    if sys.platform == "darwin" and os.geteuid() != 0:
        return (
            "macOS only lets root attach: run pytest under sudo, or use the pyinstrument profiler"
        )
    if sys.platform.startswith("linux"):
        scope = _read("/proc/sys/kernel/yama/ptrace_scope")
        if scope in ("2", "3") and os.geteuid() != 0:
            return (
                f"kernel.yama.ptrace_scope={scope} refuses attaching: "
                "run `sudo sysctl kernel.yama.ptrace_scope=1`, or grant py-spy the capability: "
                f"`sudo setcap cap_sys_ptrace+ep {exe}`"
            )
        if scope == "3":
            return "kernel.yama.ptrace_scope=3 forbids all attaching until reboot"
        status = _read("/proc/self/status") or ""
        cap_eff = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("CapEff")), "")
        in_container = Path("/.dockerenv").exists() or "docker" in (_read("/proc/1/cgroup") or "")
        has_ptrace_cap = bool(cap_eff) and (int(cap_eff, 16) >> 19) & 1
        if in_container and not has_ptrace_cap:
            return (
                "this container lacks CAP_SYS_PTRACE: start it with `--cap-add SYS_PTRACE` "
                "(docker run) or add SYS_PTRACE to securityContext.capabilities (Kubernetes)"
            )
    if sys.implementation.name != "cpython":
        return f"py-spy supports CPython only, not {sys.implementation.name}"
    return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _allow_tracer(pid: int) -> None:
    """Let the py-spy child trace us on Yama ptrace_scope=1 hosts (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PTRACER, ctypes.c_ulong(pid), 0, 0, 0)


def record(run: Callable[[], None], options: PySpyOptions) -> dict[str, Any]:
    """Attach py-spy to this process, call ``run()``, stop it; return the raw speedscope JSON."""
    reason = preflight(options)
    if reason is not None:
        raise AttachRefused(reason)
    exe = find_pyspy(options.executable)
    assert exe is not None
    with tempfile.TemporaryDirectory(prefix="perfreplay-pyspy-") as tmp:
        out = Path(tmp) / "profile.speedscope.json"
        out.unlink(missing_ok=True)  # never read a stale file
        cmd = [
            exe,
            "record",
            "--pid",
            str(os.getpid()),
            "--format",
            "speedscope",
            "--output",
            str(out),
            "--rate",
            str(options.rate),
            "--full-filenames",
            "--function",
        ]
        if options.native:
            cmd.append("--native")
        if options.gil:
            cmd.append("--gil")
        if options.idle:
            cmd.append("--idle")
        if options.nonblocking:
            cmd.append("--nonblocking")
        env = dict(os.environ, RUST_BACKTRACE="0")
        started = time.monotonic()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
        )
        _allow_tracer(proc.pid)
        lines: list[str] = []
        try:
            _wait_ready(proc, lines)
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
            raise AttachRefused("py-spy did not stop within 20 s of SIGINT") from None
        tail = "".join(lines) + (proc.stdout.read() if proc.stdout else "")
        if proc.returncode not in (0, -signal.SIGINT):
            raise AttachRefused(f"py-spy exited with {proc.returncode}: {_last_line(tail)}")
        if not out.exists() or out.stat().st_mtime < started - 1:
            raise AttachRefused(f"py-spy wrote no fresh output: {_last_line(tail)}")
        doc: dict[str, Any] = json.loads(out.read_text())
    if not any(p.get("samples") for p in doc.get("profiles", [])):
        raise AttachRefused("py-spy took no samples (the calls were too short?)")
    return doc


def _wait_ready(proc: subprocess.Popen[str], lines: list[str]) -> None:
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
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready.wait(0.01):
        if proc.poll() is not None:
            reader.join(1.0)
            raise AttachRefused(
                f"py-spy exited with {proc.returncode} before sampling: "
                f"{_last_line(''.join(lines))}{_attach_hint(''.join(lines))}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AttachRefused(f"py-spy was not ready within {READY_TIMEOUT:.0f} s")
    reader.join(1.0)


def _attach_hint(output: str) -> str:
    if "Permission denied" in output or "Operation not permitted" in output:
        return (
            " (attaching needs ptrace permission: run as root, `--cap-add SYS_PTRACE` in a "
            "container, or `sudo sysctl kernel.yama.ptrace_scope=1`)"
        )
    return ""


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"
