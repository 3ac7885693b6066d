"""The per-snapshot ledger of loop iterations: one JSON line per replay run."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ..snapshot.store import make_private_dirs, target_slug

MAX_SAMPLES = 2000  # per entry; enough for the significance test, bounded on disk


@dataclass(frozen=True)
class Entry:
    iteration: int
    time: float
    commit: str | None
    dirty: bool
    target: str
    snapshot: str
    estimator: str
    estimate: float
    low: float
    high: float
    precision: float
    rounds: int
    target_met: bool
    samples: list[float] = field(default_factory=list)
    profile: str | None = None
    profile_calls: int | None = None
    stop_reason: str | None = None
    processes: int = 1
    group_estimates: list[float] = field(default_factory=list)
    code_hash: str | None = None  # of the target replayed
    #: Identity of what ran (see :func:`environment`): equal identities make an A/A pair.
    source: str | None = None
    interpreter: str | None = None
    packages: str | None = None
    #: Median seconds of the reference workload timed beside the rounds (replay/reference.py).
    reference: float | None = None
    reference_samples: list[float] = field(default_factory=list)
    #: The comparisons exactly as the run printed them (``comparison_record``).
    drift: float | None = None
    vs_previous: dict[str, Any] | None = None
    vs_first: dict[str, Any] | None = None
    paired: dict[str, Any] | None = None  # a paired verdict against a git baseline
    change: str | None = None  # the run's "change:" line, verbatim
    unit: str = "seconds"  # or "instructions" / "cycles": never compared across units

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


def same_environment(a: Entry, b: Entry) -> bool:
    """Both runs timed the same thing: identical source tree, interpreter and packages.

    Any change outside the target's own bytecode (its callees, configuration, a library)
    can move the timing, so only fully known, fully equal identities count.
    """
    keys = ("source", "interpreter", "packages")
    return all(getattr(a, k) is not None and getattr(a, k) == getattr(b, k) for k in keys)


def aa_pairs(entries: Sequence[Entry], *, after: int = 0) -> list[tuple[float, float]]:
    """Estimates of consecutive runs of identical code: the ledger's own A/A experiments.

    Only iterations above ``after`` count (``perfreplay history --reset-drift``).
    """
    return [
        (a.estimate, b.estimate)
        for a, b in zip(entries, entries[1:], strict=False)
        if a.iteration > after
        and same_environment(a, b)
        and a.estimator == b.estimator
        and a.processes == b.processes == 1
        and a.unit == b.unit == "seconds"
    ]


def first_met(entries: Sequence[Entry]) -> Entry | None:
    """The reference for "vs first": the first iteration that met its precision target."""
    return next((e for e in entries if e.target_met), None)


def bounded(samples: Sequence[float], limit: int = MAX_SAMPLES) -> list[float]:
    """Evenly thin the samples to at most ``limit``, keeping their order."""
    if len(samples) <= limit:
        return list(samples)
    step = len(samples) / limit
    return [samples[int(i * step)] for i in range(limit)]


@cache
def git_state(cwd: str) -> tuple[str | None, bool]:
    """(commit, dirty) of the repository at ``cwd``; (None, False) outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, False
    return commit or None, bool(status.strip())


def _git(cwd: str, *args: str) -> bytes:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, timeout=30, check=True
    ).stdout


#: Untracked paths that are outputs, not source: never part of the source identity.
_NOT_SOURCE = {
    ".perfreplay",
    ".benchmarks",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".venv",
    "venv",
    ".tox",
    ".nox",
    "node_modules",
}


def source_identity(cwd: str, store: str | None = None) -> str | None:
    """Hash of the source tree at ``cwd``: git tree of HEAD, the uncommitted diff, and the
    content of untracked files under ``cwd`` (outputs such as the store excluded).

    ``None`` outside git: then no two runs are known to be identical, and drift is not
    learned from them.
    """
    try:
        tree = _git(cwd, "rev-parse", "HEAD^{tree}")
        diff = _git(cwd, "diff", "HEAD", "--binary", "--no-ext-diff", "--no-color")
        untracked = _git(cwd, "ls-files", "--others", "--exclude-standard", "-z")
    except (OSError, subprocess.SubprocessError):
        return None
    skip = Path(store).resolve() if store else None
    h = hashlib.sha256(tree + b"\0" + diff + b"\0")
    for name in sorted(untracked.split(b"\0")):
        if not name:
            continue
        rel = os.fsdecode(name)
        parts = Path(rel).parts
        path = Path(cwd, rel)
        if _NOT_SOURCE.intersection(parts) or rel.endswith((".pyc", ".pyo")):
            continue
        if skip is not None and path.resolve().is_relative_to(skip):
            continue
        h.update(name + b"\0")
        with contextlib.suppress(OSError):
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


@cache
def interpreter_identity() -> str:
    text = f"{sys.implementation.name} {sys.version} {sys.executable}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@cache
def packages_identity() -> str:
    """Hash of the installed distributions and their versions, read from the names of the
    ``*.dist-info`` / ``*.egg-info`` folders on ``sys.path`` (``name-version``): a directory
    listing, where reading every distribution's metadata took most of a second."""
    names = []
    for entry in sys.path:
        with contextlib.suppress(OSError):
            for name in os.listdir(entry or "."):
                if name.endswith((".dist-info", ".egg-info")):
                    names.append(f"{entry}/{name}")
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


def environment(cwd: str, store: str | None = None) -> dict[str, str | None]:
    """The identity fields of a ledger entry for a run at ``cwd``."""
    return {
        "source": source_identity(cwd, store),
        "interpreter": interpreter_identity(),
        "packages": packages_identity(),
    }


@dataclass(frozen=True)
class Ledger:
    path: Path

    @classmethod
    def for_snapshot(cls, history_dir: Path, target: str, snapshot_id: str) -> Ledger:
        return cls(history_dir / target_slug(target) / f"{snapshot_id}.jsonl")

    def entries(self) -> list[Entry]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            with contextlib.suppress(ValueError, TypeError):
                data = json.loads(line)
                if "event" not in data:  # events (a drift reset) are not iterations
                    out.append(Entry.from_json(data))
        return out

    def drift_reset_after(self) -> int:
        """Iteration at the last ``--reset-drift`` (0 if never): older runs teach no drift."""
        after = 0
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return 0
        for line in lines:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                data = json.loads(line)
                if data.get("event") == "reset-drift":
                    after = int(data["after"])
        return after

    def reset_drift(self) -> int:
        """Forget the drift learned so far; returns the iteration the reset follows."""
        entries = self.entries()
        after = entries[-1].iteration if entries else 0
        self._write({"event": "reset-drift", "after": after, "time": now()})
        return after

    def next_iteration(self) -> int:
        entries = self.entries()
        return entries[-1].iteration + 1 if entries else 1

    def append(self, entry: Entry) -> None:
        self._write(asdict(entry))

    def _write(self, data: dict[str, Any]) -> None:
        make_private_dirs(self.path.parent)  # every folder it creates is 0700
        line = json.dumps(data, separators=(",", ":")) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # whole lines even with concurrent sessions
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def now() -> float:
    return time.time()
