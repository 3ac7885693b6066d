"""Fixtures for hand-written tests: ``perf_replay`` and the ``perf_replay_compare`` override.

::

    def test_matching(perf_replay):
        result = perf_replay(matching_fast.disambiguate, snapshot="3f2a9c0d1e4b")
        assert result.target_met

The call runs the same loop and reporting as a ``--perf-replay`` item (fresh arguments
every round, result check, pytest-benchmark table and JSON, history, summary block), with
whatever function is given: today's target, or a candidate rewrite of it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import pytest

from ..capture.decorator import target_name
from ..errors import PerfReplayError, SnapshotError, StoreError
from ..snapshot.store import Store
from .config import ReplayConfig
from .items import load_snapshot, replay_snapshot
from .report import progress_writer
from .results import Compare, ResultMismatch
from .rounds import RoundsResult
from .session import ItemOutcome, ReplayFailure, ReplaySession, replay_session, set_replay_session


class PerfReplay(Protocol):
    def __call__(
        self, func: Callable[..., Any], snapshot: str | Path, **policy: Any
    ) -> RoundsResult | None: ...


def session_state(config: pytest.Config) -> ReplaySession:
    """The session's replay state; created on first use when ``--perf-replay`` is off."""
    state = replay_session(config)
    if state is None:
        cfg = ReplayConfig.from_pytest(config)
        state = ReplaySession(config=cfg, store=Store(cfg.store))
        state.write_progress = progress_writer(config)
        set_replay_session(config, state)
    return state


def find_snapshot(store: Store, snapshot: str | Path) -> Path:
    """A path as given, or a snapshot id (or unique id prefix) looked up in the store."""
    try:
        return store.find(str(snapshot))
    except StoreError as exc:
        raise ReplayFailure(f"perf_replay: {exc}") from None


@pytest.fixture
def perf_replay_compare() -> Compare | None:
    """Override in a conftest.py to decide result equality: ``(expected, actual) -> bool``.

    Return None from the callable to fall back to the hook and the built-in comparison.
    """
    return None


@pytest.fixture
def perf_replay(request: pytest.FixtureRequest, benchmark: Any) -> PerfReplay:
    """Replay a snapshot's arguments against ``func`` with the variance-controlled loop.

    ``perf_replay(func, snapshot=ID_or_path, **policy)``: keyword overrides of the round
    policy (``target``, ``max_time``, ``min_rounds``, ...) apply to this call only. Returns
    the :class:`~pytest_perfreplay.rounds.RoundsResult`, or None when timing is off.
    """
    used = False

    def run(func: Callable[..., Any], snapshot: str | Path, **policy: Any) -> RoundsResult | None:
        nonlocal used
        if used:
            raise pytest.UsageError("perf_replay can be called once per test (one table row)")
        used = True
        state = session_state(request.config)
        target = target_name(func)
        outcome = ItemOutcome(request.node.nodeid, target, str(snapshot))
        state.outcomes.append(outcome)
        benchmark._mode = "perf_replay(...)"  # one use of the benchmark fixture
        try:
            snap = load_snapshot(find_snapshot(state.store, snapshot), state)
            outcome.snapshot_id = snap.id
            if hasattr(request.config, "workerinput"):
                # Timings under xdist would run next to other workers: check only.
                benchmark.disabled = True
            try:
                round_policy = state.config.policy(**policy)
            except (TypeError, ValueError) as exc:
                raise pytest.UsageError(f"perf_replay(..., {policy}): {exc}") from None
            result = replay_snapshot(
                request=request,
                benchmark=benchmark,
                state=state,
                snapshot=snap,
                func=func,
                target=target,
                outcome=outcome,
                policy=round_policy,
            )
        except (PerfReplayError, SnapshotError, ResultMismatch) as exc:
            benchmark.has_error = True
            outcome.error = str(exc).splitlines()[0]
            raise
        if result is None and hasattr(request.config, "workerinput"):
            pytest.skip("perf_replay: result checked; timing skipped under pytest-xdist (-n)")
        return result

    return run
