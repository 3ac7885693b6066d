"""Match CI check runs to the pull requests that triggered them.

Check runs carry only a head SHA and a branch name; forks, force-pushes and rebases mean
neither is unique. The heuristics, in order: the PR whose head is the run's SHA; a PR
that contains the SHA among its commits; a PR whose normalized branch name matches.
Ties go to the PR updated closest to the run's start.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from pytest_perfreplay import capture

from .models import CheckRun, PullRequest


def normalize_branch(name: str) -> str:
    name = name.strip().lower()
    for prefix in ("refs/heads/", "origin/", "heads/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name.replace("_", "-")


@capture(slower_than=0.002, max_snapshots=2, keep_result=True)
async def disambiguate_pull_requests(
    check_runs: list[CheckRun], pull_requests: list[PullRequest]
) -> dict[int, int | None]:
    """Map each check run id to the number of the PR it belongs to (or None)."""
    matches: dict[int, int | None] = {}
    for i, run in enumerate(check_runs):
        candidates = [pr for pr in pull_requests if pr.head_sha == run.head_sha]
        if not candidates:
            candidates = [pr for pr in pull_requests if run.head_sha in pr.commits]
        if not candidates:
            branch = normalize_branch(run.head_branch)
            candidates = [pr for pr in pull_requests if normalize_branch(pr.head_branch) == branch]
        if len(candidates) > 1:
            candidates.sort(key=lambda pr: abs(pr.updated_at - run.started_at))
        matches[run.id] = candidates[0].number if candidates else None
        if i % 256 == 0:
            await asyncio.sleep(0)  # stay fair to the other requests on this event loop
    return matches


class StatusBoard:
    """Renders the per-PR status summary that the service posts as a comment."""

    def __init__(self, title: str = "CI status") -> None:
        self.title = title

    @capture(slower_than=0.001, max_snapshots=2, keep_result=True)
    def render(self, check_runs: list[CheckRun], matches: dict[int, int | None]) -> str:
        by_pr: dict[int, list[CheckRun]] = {}
        for run in check_runs:
            pr = matches.get(run.id)
            if pr is not None:
                by_pr.setdefault(pr, []).append(run)
        out = f"## {self.title}\n"
        for pr in sorted(by_pr):
            runs = sorted(by_pr[pr], key=lambda r: (r.app, r.name))
            counts = Counter(r.conclusion or r.status for r in runs)
            out += f"### #{pr}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            out += "\n"
            for run in runs:
                out += f"- {run.app}/{run.name}: {run.conclusion or run.status}"
                out += f" ({run.duration:.1f}s)\n"
        return out
