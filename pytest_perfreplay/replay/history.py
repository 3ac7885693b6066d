"""The per-snapshot ledger of loop iterations: one JSON line per replay run."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ..snapshot.store import target_slug

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
    code_hash: str | None = None  # of the target replayed: equal hashes make an A/A pair
    unit: str = "seconds"  # or "instructions" / "cycles": never compared across units

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


def aa_pairs(entries: Sequence[Entry]) -> list[tuple[float, float]]:
    """Estimates of consecutive runs of unchanged code: the ledger's own A/A experiments."""
    return [
        (a.estimate, b.estimate)
        for a, b in zip(entries, entries[1:], strict=False)
        if a.code_hash is not None
        and a.code_hash == b.code_hash
        and a.estimator == b.estimator
        and a.processes == b.processes == 1
        and a.unit == b.unit == "seconds"
    ]


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
                out.append(Entry.from_json(json.loads(line)))
        return out

    def next_iteration(self) -> int:
        entries = self.entries()
        return entries[-1].iteration + 1 if entries else 1

    def append(self, entry: Entry) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        line = json.dumps(asdict(entry), separators=(",", ":")) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # whole lines even with concurrent sessions
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def now() -> float:
    return time.time()
