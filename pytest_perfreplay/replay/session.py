"""The session's replay state, kept in ``config.stash`` (pytest's store for plugin state)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..errors import PerfReplayError
from ..snapshot.store import Store
from .config import ReplayConfig
from .rounds import RoundsResult
from .stats import Comparison

if TYPE_CHECKING:
    from .baseline import Baseline
    from .paired import PairedVerdict


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
    unsigned: bool = False  # loaded only because --perf-replay-allow-unsigned was set
    stand_ins: int = 0  # parts of the input capture could not scrub (header unscrubbable)
    drift: float | None = None  # between-session drift allowed in the comparisons
    machine_move: float | None = None  # the reference workload's move vs previous (ratio - 1)
    profile_path: Path | None = None
    profile_lines: list[str] = field(default_factory=list)
    error: str | None = None
    paired: PairedVerdict | None = None  # --perf-replay-baseline: the paired verdict
    paired_profile: dict[str, Any] | None = None  # the baseline side's profile, if any
    measure_lines: list[str] = field(default_factory=list)  # a count's block (not timed)


@dataclass
class ReplaySession:
    """Per-session state, kept in ``config.stash``."""

    config: ReplayConfig
    store: Store
    outcomes: list[ItemOutcome] = field(default_factory=list)
    write_progress: Callable[[str], None] | None = None
    pulled: list[str] = field(default_factory=list)  # what pulling a remote store reported
    baseline: Baseline | None = None  # --perf-replay-baseline, resolved once
    identity: dict[str, str | None] | None = None  # source/interpreter/packages, once per session


_STATE = pytest.StashKey[ReplaySession]()


def replay_session(config: pytest.Config) -> ReplaySession | None:
    """The state ``--perf-replay`` (or the first ``perf_replay`` call) put in the stash."""
    return config.stash.get(_STATE, None)


def set_replay_session(config: pytest.Config, state: ReplaySession) -> None:
    config.stash[_STATE] = state
