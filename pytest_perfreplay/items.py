"""Snapshot items: one pytest item per snapshot file, driven by the round loop.

``plugin.py`` only wires these into pytest's hooks; the work happens here.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from . import __version__
from .config import ReplayConfig
from .errors import PerfReplayError, SnapshotError
from .history import Entry, Ledger, bounded, git_state, now
from .replay import (
    CallOutcome,
    Replayer,
    code_changed,
    python_mismatch,
    read_snapshot,
    resolve_target,
)
from .results import ResultMismatch, check_result
from .rounds import Progress, RoundPolicy, RoundsResult, run_rounds
from .snapshot import Header, Snapshot, read_header
from .stats import Comparison, compare
from .store import Store


class ReplayFailure(PerfReplayError):
    """Fails an item with a readable paragraph instead of a traceback through our code."""


@dataclass
class ItemOutcome:
    """What one snapshot item measured; the terminal summary prints these."""

    nodeid: str
    target: str
    snapshot_id: str
    iteration: int = 0
    rounds: RoundsResult | None = None
    notes: list[str] = field(default_factory=list)
    vs_previous: Comparison | None = None
    vs_first: Comparison | None = None
    result_check: str | None = None
    mutated: bool = False
    profile_path: Path | None = None
    profile_lines: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class ReplaySession:
    """Per-session state, kept in ``config.stash``."""

    config: ReplayConfig
    store: Store
    outcomes: list[ItemOutcome] = field(default_factory=list)
    write_progress: Callable[[str], None] | None = None


class SnapshotCollector(pytest.Collector):
    """The ``perfreplay`` node: every snapshot in the store becomes an item under it."""

    def __init__(self, *, replay: ReplaySession, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.replay = replay

    def collect(self) -> Iterator[pytest.Item]:
        for path in self.replay.store.snapshot_paths():
            header: Header | None = None
            error: str | None = None
            try:
                header, _, _ = read_header(path.read_bytes(), path=str(path))
                name = f"{header.target}[{header.id}]"
            except (SnapshotError, OSError) as exc:
                error = str(exc)
                name = f"{path.parent.name}:{path.stem}[unreadable]"
            yield SnapshotItem.from_parent(
                self,
                name=name,
                callobj=_replay_entry,
                snapshot_path=path,
                header=header,
                load_error=error,
            )


def _replay_entry(request: pytest.FixtureRequest, benchmark: Any) -> None:
    item = request.node
    assert isinstance(item, SnapshotItem)
    benchmark._mode = "perf-replay"  # tells pytest-benchmark the fixture was used
    try:
        item.replay(request, benchmark)
    except BaseException:
        benchmark.has_error = True
        raise


class SnapshotItem(pytest.Function):
    """A benchmark item built from a snapshot file rather than a test function."""

    def __init__(
        self,
        *,
        snapshot_path: Path,
        header: Header | None,
        load_error: str | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.snapshot_path = snapshot_path
        self.header = header
        self.load_error = load_error
        self.add_marker("perfreplay")

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.snapshot_path, None, self.name

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, (PerfReplayError, ResultMismatch)):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    @property
    def session_state(self) -> ReplaySession:
        from .plugin import replay_session

        state = replay_session(self.config)
        assert state is not None
        return state

    # -- the work -------------------------------------------------------------

    def replay(self, request: pytest.FixtureRequest, benchmark: Any) -> None:
        state = self.session_state
        cfg = state.config
        outcome = ItemOutcome(
            self.nodeid,
            self.header.target if self.header else "?",
            self.header.id if self.header else self.snapshot_path.stem,
        )
        state.outcomes.append(outcome)
        try:
            self._replay(request, benchmark, state, cfg, outcome)
        except (PerfReplayError, ResultMismatch) as exc:
            outcome.error = str(exc).splitlines()[0]
            raise

    def _replay(
        self,
        request: pytest.FixtureRequest,
        benchmark: Any,
        state: ReplaySession,
        cfg: ReplayConfig,
        outcome: ItemOutcome,
    ) -> None:
        if self.load_error is not None:
            raise ReplayFailure(_paragraph("cannot read this snapshot", self.load_error))
        snapshot = self._load(state, cfg)
        func = resolve_target(snapshot.header.target)
        if code_changed(snapshot, func):
            outcome.notes.append("code changed since capture (the loop at work)")
        mismatch = python_mismatch(snapshot)
        if mismatch:
            outcome.notes.append(mismatch)
        bindings = self._bindings(request, snapshot)
        replayer = Replayer(snapshot, func, bindings, gc_policy=cfg.gc)
        try:
            self._run(replayer, benchmark, state, cfg, outcome, snapshot, func)
        finally:
            replayer.close()

    def _load(self, state: ReplaySession, cfg: ReplayConfig) -> Snapshot:
        try:
            return read_snapshot(
                self.snapshot_path,
                keyring=state.store.keyring(),
                allow_unsigned=cfg.allow_unsigned,
            )
        except SnapshotError as exc:
            raise ReplayFailure(_paragraph("refused to load this snapshot", str(exc))) from None

    def _bindings(self, request: pytest.FixtureRequest, snapshot: Snapshot) -> dict[str, Any]:
        bindings: dict[str, Any] = {}
        for ph in snapshot.header.placeholders:
            name = ph.get("name", "")
            try:
                bindings[name] = request.getfixturevalue(name)
            except pytest.FixtureLookupError:
                raise ReplayFailure(
                    f"this snapshot needs a live resource {name!r} ({ph.get('type')}, at "
                    f"{ph.get('path')}), which was kept as a placeholder. Write a fixture that "
                    f"provides it, in a conftest.py at the rootdir:\n\n"
                    f"    @pytest.fixture\n    def {name}():\n        return ...  # a "
                    f"{ph.get('type')}"
                ) from None
        return bindings

    def _run(
        self,
        replayer: Replayer,
        benchmark: Any,
        state: ReplaySession,
        cfg: ReplayConfig,
        outcome: ItemOutcome,
        snapshot: Snapshot,
        func: Callable[..., Any],
    ) -> None:
        try:
            first, mutated = replayer.first_call()
        except SnapshotError as exc:
            raise ReplayFailure(_paragraph("cannot unpickle the arguments", str(exc))) from None
        except Exception as exc:
            raise ReplayFailure(
                _paragraph(
                    "cannot unpickle the arguments",
                    f"{type(exc).__name__}: {exc}"
                    + (f" ({outcome.notes[-1]})" if outcome.notes else ""),
                )
            ) from None
        outcome.mutated = mutated
        self._check_result(snapshot, first, cfg, outcome)
        if getattr(benchmark, "disabled", False):
            return  # --benchmark-disable: one call, no timing, like pytest-benchmark itself

        policy = RoundPolicy(
            target=cfg.precision,
            confidence=cfg.confidence,
            estimator=cfg.estimator,  # type: ignore[arg-type]
            min_rounds=cfg.min_rounds,
            max_rounds=cfg.max_rounds,
            max_time=cfg.max_time,
            gc=cfg.gc,  # type: ignore[arg-type]
        )
        result = run_rounds(replayer.measure, policy, on_progress=self._progress(state))
        outcome.rounds = result
        self._report_to_benchmark(benchmark, result, snapshot, outcome)

        ledger = Ledger.for_snapshot(state.store.history_dir, snapshot.header.target, snapshot.id)
        previous = ledger.entries()
        outcome.iteration = previous[-1].iteration + 1 if previous else 1
        if previous:
            outcome.vs_previous = _compare(previous[-1], result, cfg)
            if len(previous) > 1:
                outcome.vs_first = _compare(previous[0], result, cfg)

        profile_calls = None
        if cfg.profiler:
            profile_calls = self._profile(replayer, state, cfg, outcome, snapshot, func, previous)

        commit, dirty = git_state(str(self.config.rootpath))
        ledger.append(
            Entry(
                iteration=outcome.iteration,
                time=now(),
                commit=commit,
                dirty=dirty,
                target=snapshot.header.target,
                snapshot=snapshot.id,
                estimator=result.interval.estimator,
                estimate=result.interval.estimate,
                low=result.interval.low,
                high=result.interval.high,
                precision=result.precision,
                rounds=result.rounds,
                target_met=result.target_met,
                samples=bounded(result.samples),
                profile=str(outcome.profile_path) if outcome.profile_path else None,
                profile_calls=profile_calls,
            )
        )
        if cfg.strict and not result.target_met:
            raise ReplayFailure(
                f"precision target missed (--perf-replay-strict): reached "
                f"±{result.precision:.2%} of the {result.interval.estimator}, asked for "
                f"±{cfg.precision:.2%}; stopped on {result.stop_reason} after {result.rounds} "
                f"rounds. Raise --perf-replay-max-time, or quiet the machine."
            )

    def _check_result(
        self, snapshot: Snapshot, first: CallOutcome, cfg: ReplayConfig, outcome: ItemOutcome
    ) -> None:
        if not snapshot.header.has_result or not cfg.check_result:
            if not first.ok:
                raise first.value
            return
        expected = snapshot.load_result()
        check_result(expected, first, self.config)
        outcome.result_check = "same result as captured"

    def _progress(self, state: ReplaySession) -> Callable[[Progress], None] | None:
        write = state.write_progress
        if write is None:
            return None

        def on_progress(p: Progress) -> None:
            if p.elapsed >= 2.0:
                write(f"{self.name}: {p.rounds} rounds, ±{p.precision:.2%} after {p.elapsed:.0f} s")

        return on_progress

    def _report_to_benchmark(
        self, benchmark: Any, result: RoundsResult, snapshot: Snapshot, outcome: ItemOutcome
    ) -> None:
        iv = result.interval
        benchmark.extra_info.update(
            {
                "perfreplay": __version__,
                "snapshot": snapshot.id,
                "target": snapshot.header.target,
                "estimator": iv.estimator,
                "estimate": iv.estimate,
                "interval": [iv.low, iv.high],
                "confidence": iv.confidence,
                "precision": result.precision,
                "precision_target": result.policy.target,
                "target_met": result.target_met,
                "stop_reason": result.stop_reason,
                "warmup_rounds": len(result.warmup),
                "processes": 1,
                "gc_policy": result.policy.gc,
                "mutated_arguments": outcome.mutated,
                "elapsed": result.elapsed,
            }
        )
        stats = benchmark._make_stats(1)
        for sample in result.samples:
            stats.update(sample)

    def _profile(
        self,
        replayer: Replayer,
        state: ReplaySession,
        cfg: ReplayConfig,
        outcome: ItemOutcome,
        snapshot: Snapshot,
        func: Callable[..., Any],
        previous: list[Entry],
    ) -> int | None:
        from .profiling import PassSettings, run_profile_pass

        assert outcome.rounds is not None
        settings = PassSettings(
            profiler=cfg.profiler or "auto",
            rate=cfg.profile_rate,
            min_samples=cfg.profile_samples,
            profiles_dir=state.store.profiles_dir,
        )
        done = run_profile_pass(
            replayer,
            func,
            snapshot,
            iteration=outcome.iteration,
            median=outcome.rounds.interval.estimate,
            settings=settings,
            previous=previous[-1] if previous else None,
        )
        outcome.profile_path = done.path
        outcome.profile_lines = done.lines
        outcome.notes.extend(done.notes)
        return done.calls


def _compare(entry: Entry, result: RoundsResult, cfg: ReplayConfig) -> Comparison | None:
    if not entry.samples or not result.samples:
        return None
    return compare(
        entry.samples,
        list(result.samples),
        estimator=cfg.estimator,  # type: ignore[arg-type]
        confidence=cfg.confidence,
    )


def _paragraph(what: str, why: str) -> str:
    return textwrap.fill(f"perfreplay {what}: {why}", width=100)
