"""The baseline side of a paired comparison: the code at a git revision, as an import root.

``--perf-replay-baseline=REV`` resolves REV with git, extracts the tree at that commit once
(``git archive``) into ``<store>/baselines/<sha>/`` and reuses it in later sessions. Worker
processes of the baseline put the mapped import roots first on ``sys.path``: each root is
where a module lives in today's tree, relative to the git top level, moved into the
extracted tree. A flat layout, a ``src/`` layout and an editable install all resolve the
same way, since each imports the module from a folder inside the repository.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import PerfReplayError

#: Compiled extension suffixes; a differing one means the baseline needs its own build.
EXTENSION_SUFFIXES = (".so", ".pyd")
#: Folders never searched for extensions: virtual environments, build output, caches.
_SKIP_DIRS = {"__pycache__", "site-packages", "node_modules", "build", "dist"}
_COMPLETE = ".perfreplay-complete"


class BaselineError(PerfReplayError):
    """The baseline cannot be built or used; the message says why in one line."""


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
        )
    except FileNotFoundError:
        raise BaselineError("--perf-replay-baseline needs git, which is not installed") from None


def git_toplevel(cwd: Path) -> Path:
    """The top level of the repository holding ``cwd``."""
    done = _git(cwd, "rev-parse", "--show-toplevel")
    if done.returncode != 0:
        raise BaselineError(
            f"--perf-replay-baseline: {cwd} is not in a git repository (the baseline is a "
            "git revision of the code under test)"
        )
    return Path(done.stdout.strip()).resolve()


def resolve_rev(toplevel: Path, rev: str) -> str:
    """The full sha of ``rev`` (a branch, tag, sha, ``HEAD~2``...)."""
    if not rev or rev.startswith("-"):
        raise BaselineError(f"--perf-replay-baseline: {rev!r} is not a git revision")
    done = _git(toplevel, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if done.returncode != 0 or not done.stdout.strip():
        raise BaselineError(
            f"--perf-replay-baseline: unknown revision {rev!r} in {toplevel} (try a branch, "
            "a tag or a sha: `git log --oneline`)"
        )
    return done.stdout.strip()


def materialize(toplevel: Path, sha: str, cache_dir: Path) -> Path:
    """The tree at ``sha``, extracted once under ``cache_dir/sha`` and reused.

    Safe with two sessions at once: each extracts into its own temporary folder and renames
    it into place; the loser of the race discards its copy and uses the winner's.
    """
    final = cache_dir / sha
    if (final / _COMPLETE).is_file():
        return final
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{sha[:12]}-", dir=cache_dir))  # 0700
    try:
        proc = subprocess.Popen(
            ["git", "archive", "--format=tar", sha],
            cwd=toplevel,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
            if hasattr(tarfile, "data_filter"):
                archive.extractall(tmp, filter="data")
            else:  # pragma: no cover - Python without the extraction filters
                archive.extractall(tmp)  # noqa: S202 - our own repository's archive
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.wait() != 0:
            raise BaselineError(f"git archive {sha[:12]} failed: {err.strip()[:200]}")
        (tmp / _COMPLETE).write_text(sha + "\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / _COMPLETE).is_file():
                # A stale, incomplete copy from an interrupted session: replace it.
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


@dataclass(frozen=True)
class Baseline:
    """A resolved revision and its extracted tree."""

    rev: str
    sha: str
    toplevel: Path  # today's repository
    tree: Path  # the extracted tree at ``sha``

    @classmethod
    def prepare(cls, rev: str, cwd: Path, cache_dir: Path) -> Baseline:
        toplevel = git_toplevel(cwd)
        sha = resolve_rev(toplevel, rev)
        return cls(rev, sha, toplevel, materialize(toplevel, sha, cache_dir))

    def mapped(self, path: Path) -> Path | None:
        """Where ``path`` (in today's tree) is in the baseline tree; None outside the repo."""
        try:
            rel = path.resolve().relative_to(self.toplevel)
        except ValueError:
            return None
        return self.tree / rel


@dataclass(frozen=True)
class Roots:
    """The import roots of one target, today and at the baseline."""

    module: str
    candidate_root: Path  # the folder today's module is imported from
    baseline_root: Path  # the same folder in the baseline tree
    module_file: Path | None  # today's file of the target's module
    baseline_file: Path | None  # the same file in the baseline tree
    baseline_path: tuple[str, ...]  # sys.path entries for baseline workers, in order
    replaced: tuple[str, ...]  # today's entries that the baseline ones stand in for

    @property
    def new_at_rev(self) -> bool:
        """True when the target's module does not exist at the baseline revision."""
        return self.baseline_file is not None and not self.baseline_file.exists()


def _import_root(module: str) -> tuple[Path, Path | None]:
    """(folder the top-level package is imported from, the module's file)."""
    top = module.split(".")[0]
    try:
        top_spec = importlib.util.find_spec(top)
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise BaselineError(f"cannot locate module {module!r}: {exc}") from None
    if top_spec is None or spec is None:
        raise BaselineError(f"cannot locate module {module!r} on sys.path")
    locations = list(top_spec.submodule_search_locations or [])
    if locations:
        root = Path(locations[0]).resolve().parent
    elif top_spec.origin:
        root = Path(top_spec.origin).resolve().parent
    else:
        raise BaselineError(f"module {top!r} has no location on disk to compare with git")
    origin = Path(spec.origin).resolve() if spec.origin and spec.has_location else None
    return root, origin


def roots_for(baseline: Baseline, module: str, search_path: Sequence[str]) -> Roots:
    """Import roots of ``module`` today and at the baseline, plus the other in-repo paths.

    ``search_path`` (today's ``sys.path``) contributes every entry inside the repository,
    mapped into the baseline tree, so the project's other modules (and the classes in the
    pickled arguments) come from the baseline too.
    """
    root, origin = _import_root(module)
    mapped = baseline.mapped(root)
    if mapped is None:
        raise BaselineError(
            f"module {module!r} is imported from {root}, outside the git repository "
            f"{baseline.toplevel}: install the project in editable mode (pip install -e .) "
            "or put its folder on the path, so its code can be compared with a revision"
        )
    entries: list[str] = [str(mapped)]
    replaced: list[str] = [str(root)]
    for entry in search_path:
        if not entry:
            continue
        other = baseline.mapped(Path(entry))
        if other is not None and other.is_dir():
            replaced.append(entry)
            if str(other) not in entries:
                entries.append(str(other))
    baseline_file = baseline.mapped(origin) if origin is not None else None
    return Roots(module, root, mapped, origin, baseline_file, tuple(entries), tuple(replaced))


def _extensions(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [
            d
            for d in dirnames
            if not d.startswith(".")
            and d not in _SKIP_DIRS
            and not (here / d / "pyvenv.cfg").exists()
        ]
        for name in filenames:
            if name.endswith(EXTENSION_SUFFIXES):
                yield (here / name).relative_to(root)


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def differing_extensions(candidate_root: Path, baseline_root: Path) -> list[str]:
    """Compiled extensions under the import root that differ (or exist on one side only)."""
    rels = set(_extensions(candidate_root))
    if baseline_root.is_dir():
        rels |= set(_extensions(baseline_root))
    return sorted(
        str(rel) for rel in rels if _digest(candidate_root / rel) != _digest(baseline_root / rel)
    )


def extension_refusal(roots: Roots, baseline: Baseline) -> str | None:
    """The one-line refusal when compiled extensions differ between the two trees."""
    differ = differing_extensions(roots.candidate_root, roots.baseline_root)
    if not differ:
        return None
    shown = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
    return (
        f"compiled extensions differ between today's tree and {baseline.rev} "
        f"({baseline.sha[:12]}): {shown}. git holds sources, not builds, so the baseline's "
        f"build is needed: build {baseline.rev} and compare the two builds (or compare "
        "revisions whose extensions are the same)"
    )


def worker_pythonpath(roots: Roots) -> str:
    """PYTHONPATH for a baseline worker: the baseline roots first, then today's path."""
    # Today's copies of the mapped folders must not shadow the baseline's.
    rest = [p for p in sys.path if p and p not in roots.replaced and p not in roots.baseline_path]
    return os.pathsep.join([*roots.baseline_path, *rest])
