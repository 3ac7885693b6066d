"""The records the service works on, as they arrive from the code host's API."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CheckRun:
    id: int
    name: str
    app: str
    head_sha: str
    head_branch: str
    status: str  # queued | in_progress | completed
    conclusion: str | None  # success | failure | cancelled | None while running
    started_at: float
    duration: float


@dataclass
class PullRequest:
    number: int
    title: str
    head_sha: str
    head_branch: str
    base_branch: str
    updated_at: float
    commits: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
