"""The whole loop on the bundled example, end to end, with a local folder as the store.

1. capture: simulated production traffic hits the example service with capture on;
2. replay + profile: ``pytest --perf-replay --perf-replay-profile`` over the snapshots;
3. rewrite: swap in the faster matching module (the change the profile points to);
4. replay + profile again: the summary shows the speedup against iteration 1, with its
   significance, and the functions that moved in the profile;
5. ``perfreplay history``: the iterations so far;
6. paired verdict: ``pytest --perf-replay --perf-replay-baseline=HEAD`` times the rewrite
   against the code as captured (committed to a git repository made for the demo), in
   alternating rounds in one session, and prints ``change: ...x faster [...] vs HEAD``.

Everything happens in a scratch copy (default ``build/demo``), so the example stays clean.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    print(f"\n$ {' '.join(cmd)}", flush=True)
    code = subprocess.run(cmd, cwd=cwd, env=env).returncode
    if code != 0:
        sys.exit(f"demo: command failed with exit code {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=HERE.parent / "build" / "demo")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--max-time", default="5", help="replay budget per snapshot, seconds")
    args = parser.parse_args()

    work: Path = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(HERE / "ci_service", work / "ci_service")
    (work / "pytest.ini").write_text("[pytest]\npythonpath = .\n")
    store = work / ".perfreplay"
    env = dict(os.environ, PERFREPLAY_STORE=str(store), PYTHONDONTWRITEBYTECODE="1")
    env.pop("PERFREPLAY_CAPTURE", None)
    py = sys.executable
    replay = [
        py,
        "-m",
        "pytest",
        "--perf-replay",
        "--perf-replay-profile",
        f"--perf-replay-max-time={args.max_time}",
        "-p",
        "no:cacheprovider",
        "-q",
    ]

    print("== 1. capture: simulated production traffic with PERFREPLAY_CAPTURE=1")
    run(
        [py, "-m", "ci_service.traffic", f"--requests={args.requests}"],
        work,
        dict(env, PERFREPLAY_CAPTURE="1"),
    )

    print("\n== 1b. commit the code as captured: the baseline of the paired verdict (step 6)")
    git = ["git", "-c", "user.name=demo", "-c", "user.email=demo@example.invalid"]
    (work / ".gitignore").write_text(".perfreplay/\n__pycache__/\n")
    run([*git, "init", "-q"], work, env)
    run([*git, "add", "-A"], work, env)
    run([*git, "commit", "-q", "-m", "the code as captured"], work, env)

    print("\n== 2. replay and profile (iteration 1: the code as captured)")
    run(replay, work, env)

    print("\n== 3. rewrite: index the pull requests once instead of scanning them per run")
    shutil.copy(work / "ci_service" / "matching_fast.py", work / "ci_service" / "matching.py")

    print("\n== 4. replay and profile again (iteration 2)")
    run(replay, work, env)

    print("\n== 5. the loop so far")
    perfreplay = str(Path(py).with_name("perfreplay"))
    run([perfreplay, "history", "ci_service.matching:disambiguate_pull_requests"], work, env)

    print("\n== 6. paired verdict: the rewrite against the committed code, in one session")
    paired = [a for a in replay if a != "--perf-replay-profile"]
    # The rewritten function only, in 3 process pairs: the old code takes ~0.5 s a call.
    run(
        [
            *paired,
            "--perf-replay-baseline=HEAD",
            "--perf-replay-processes=3",
            "-k",
            "disambiguate_pull_requests",
        ],
        work,
        env,
    )
    print(f"\nstore, history and profiles: {store}")


if __name__ == "__main__":
    main()
