"""Simulated production traffic: webhook bursts of varied size hitting the service."""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from .matching import StatusBoard, disambiguate_pull_requests
from .models import CheckRun, PullRequest

APPS = ("github-actions", "circleci", "buildkite", "codecov")
JOBS = ("lint", "unit", "integration", "e2e", "docs", "build", "typecheck")


def _sha(rng: random.Random) -> str:
    return f"{rng.getrandbits(160):040x}"


def generate(
    rng: random.Random, n_prs: int, n_runs: int
) -> tuple[list[CheckRun], list[PullRequest]]:
    prs = []
    for number in range(1, n_prs + 1):
        commits = [_sha(rng) for _ in range(rng.randint(1, 12))]
        branch = rng.choice(("feature", "fix", "chore", "Feature")) + f"/{rng.randint(1, 400)}"
        prs.append(
            PullRequest(
                number=number,
                title=f"PR {number}",
                head_sha=commits[-1],
                head_branch=rng.choice(("", "origin/", "refs/heads/")) + branch,
                base_branch="main",
                updated_at=rng.uniform(0, 86_400),
                commits=commits,
            )
        )
    runs = []
    for run_id in range(n_runs):
        pr = rng.choice(prs)
        kind = rng.random()
        if kind < 0.5:
            sha = pr.head_sha  # the common case: a run on the PR's head
        elif kind < 0.8:
            sha = rng.choice(pr.commits)  # a run on an older commit of the PR
        else:
            sha = _sha(rng)  # a force-pushed-away commit: only the branch is left
        runs.append(
            CheckRun(
                id=run_id,
                name=rng.choice(JOBS),
                app=rng.choice(APPS),
                head_sha=sha,
                head_branch=pr.head_branch.removeprefix("origin/"),
                status="completed",
                conclusion=rng.choice(("success", "success", "success", "failure", None)),
                started_at=pr.updated_at + rng.uniform(-600, 600),
                duration=rng.uniform(5, 900),
            )
        )
    return runs, prs


async def handle_webhook(runs: list[CheckRun], prs: list[PullRequest]) -> str:
    matches = await disambiguate_pull_requests(runs, prs)
    return StatusBoard().render(runs, matches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.perf_counter()

    async def burst() -> None:
        for _ in range(args.requests):
            runs, prs = generate(rng, rng.randint(50, 400), rng.randint(200, 1500))
            await handle_webhook(runs, prs)

    asyncio.run(burst())
    print(f"served {args.requests} webhook requests in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
