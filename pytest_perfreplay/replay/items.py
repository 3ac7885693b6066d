"""Snapshot items: one pytest item per snapshot file, driven by the round loop.

``plugin.py`` only wires these into pytest's hooks; the work happens here.
"""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from .._version import __version__
from ..capture.decorator import target_name
from ..errors import PerfReplayError, SnapshotError
from ..snapshot.format import Header, Snapshot, code_hash, read_header_file
from .call import (
    CallOutcome,
    Replayer,
    code_changed,
    python_mismatch,
    read_snapshot,
    resolve_target,
)
from .config import ReplayConfig
from .history import (
    Entry,
    Ledger,
    aa_pairs,
    bounded,
    environment,
    first_met,
    git_state,
    now,
)
from .imports import add_import_roots
from .outcome import cannot_replay, check_outcome, setup_hint
from .paireditem import GateFailure, baseline_profile, gate, report_paired, time_paired
from .reference import ReferenceClock
from .report import change_text
from .resources import fresh_resources, run_setup
from .results import ResultMismatch, check_result
from .rounds import Progress, RoundPolicy, RoundsResult, run_rounds
from .sanity import sanity_note, stand_in_note, stand_ins
from .session import ItemOutcome, ReplayFailure, ReplaySession, replay_session
from .stats import Comparison, compare, compare_groups, preload_scipy, session_drift


class SnapshotCollector(pytest.Collector):
    """The ``perfreplay`` node: every snapshot in the store becomes an item under it."""

    def __init__(self, *, replay: ReplaySession, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.replay = replay

    def collect(self) -> Iterator[pytest.Item]:
        shard = self.replay.config.shard
        for path in self.replay.store.snapshot_paths():
            if shard is not None and shard_of(path.stem, shard[1]) != shard[0]:
                continue
            header: Header | None = None
            error: str | None = None
            try:  # the header only: collection never reads payloads
                header = read_header_file(path)
                name = f"{header.target}[{header.id}]"
                if header.get("sig") is None:
                    name += "[UNSIGNED]"  # loud in every item line, whatever the outcome
                if stand_ins(header):
                    name += "[STAND-IN]"  # its input is not production's: said in every line
            except SnapshotError as exc:
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


def shard_of(snapshot_id: str, shards: int) -> int:
    """The shard (1..shards) of a snapshot: a stable hash of its id, the same everywhere."""
    digest = hashlib.sha256(snapshot_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards + 1


def _replay_entry(request: pytest.FixtureRequest, benchmark: Any) -> None:
    item = request.node
    assert isinstance(item, SnapshotItem)
    benchmark._mode = "perf-replay"  # tells pytest-benchmark the fixture was used
    try:
        item.replay(request, benchmark)
    except GateFailure:
        raise  # the measurement is sound and stays in the JSON; only the gate failed
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
        # pytest >= 9.2 keeps a structured node id, and --lf matches it against ids parsed
        # back from strings ("name[params]"); ours is built as a plain child name, so re-parse
        # it into that same shape, or --lf would never find a snapshot item again.
        node_id = getattr(self, "_id", None)
        if node_id is not None and hasattr(type(node_id), "parse"):
            self._id = type(node_id).parse(str(node_id))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.snapshot_path, None, self.name

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, (PerfReplayError, ResultMismatch)):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    @property
    def session_state(self) -> ReplaySession:
        state = replay_session(self.config)
        assert state is not None, "snapshot items exist only in a --perf-replay session"
        return state

    # -- the work -------------------------------------------------------------

    def replay(self, request: pytest.FixtureRequest, benchmark: Any) -> None:
        reason = cannot_replay(self.header)
        if reason:
            pytest.skip(reason)
        state = self.session_state
        outcome = ItemOutcome(
            self.nodeid,
            self.header.target if self.header else "?",
            self.header.id if self.header else self.snapshot_path.stem,
        )
        state.outcomes.append(outcome)
        try:
            if self.load_error is not None:
                raise ReplayFailure(_paragraph("cannot read this snapshot", self.load_error))
            snapshot = load_snapshot(self.snapshot_path, state)
            if not snapshot.signed:
                outcome.unsigned = True
                outcome.notes.append(
                    f"UNSIGNED: {self.snapshot_path} was loaded without a verified signature, "
                    "only because --perf-replay-allow-unsigned is set"
                )
            note = stand_in_note(snapshot.header)
            if note is not None:
                outcome.stand_ins = len(stand_ins(snapshot.header))
                outcome.notes.append(note)

            add_import_roots(snapshot.header.target, self.config.rootpath)
            try:
                func = resolve_target(snapshot.header.target)
            except SnapshotError as exc:
                raise ReplayFailure(_paragraph("cannot resolve the target", str(exc))) from None
            replay_snapshot(
                request=request,
                benchmark=benchmark,
                state=state,
                snapshot=snapshot,
                func=func,
                target=snapshot.header.target,
                outcome=outcome,
            )
        except (PerfReplayError, ResultMismatch) as exc:
            outcome.error = str(exc).splitlines()[0]
            raise


def load_snapshot(path: Path, state: ReplaySession) -> Snapshot:
    """Read and verify one snapshot file; a refusal is a readable ReplayFailure."""
    try:
        return read_snapshot(
            path,
            keyring=state.store.keyring(),
            allow_unsigned=state.config.allow_unsigned,
            allow_python_mismatch=state.config.allow_python_mismatch,
        )
    except SnapshotError as exc:
        raise ReplayFailure(_paragraph("refused to load this snapshot", str(exc))) from None


def _bindings(request: pytest.FixtureRequest, snapshot: Snapshot) -> dict[str, Any]:
    bindings: dict[str, Any] = {}
    for ph in snapshot.header.placeholders:
        if ph.get("auto"):
            continue  # rebuilt by the unpickling hook itself (e.g. a fresh lock)
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


def replay_snapshot(
    *,
    request: pytest.FixtureRequest,
    benchmark: Any,
    state: ReplaySession,
    snapshot: Snapshot,
    func: Callable[..., Any],
    target: str,
    outcome: ItemOutcome,
    policy: RoundPolicy | None = None,
) -> RoundsResult | None:
    """The whole replay of one snapshot against ``func``: shared by items and the fixture.

    First call (result check, mutation check), then the timed rounds, the report to
    pytest-benchmark, the history comparison, the optional profile, and the ledger entry.
    Returns None when timing is off (``--benchmark-disable``).
    """
    cfg = state.config
    if target == snapshot.header.target and code_changed(snapshot, func):
        outcome.notes.append("code changed since capture (the loop at work)")
    mismatch = python_mismatch(snapshot)
    if mismatch:
        outcome.notes.append(mismatch)
    run_setup(request)  # perf_replay_setup: before anything is unpickled
    bindings = fresh_resources(request, snapshot.header.placeholders) or _bindings(
        request, snapshot
    )
    replayer = Replayer(snapshot, func, bindings, gc_policy=cfg.gc)
    try:
        return _run(request, replayer, benchmark, state, outcome, snapshot, func, target, policy)
    finally:
        replayer.close()


def _run(
    request: pytest.FixtureRequest,
    replayer: Replayer,
    benchmark: Any,
    state: ReplaySession,
    outcome: ItemOutcome,
    snapshot: Snapshot,
    func: Callable[..., Any],
    target: str,
    policy: RoundPolicy | None,
) -> RoundsResult | None:
    cfg = state.config
    try:
        first, mutated = replayer.first_call()
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}" if not isinstance(exc, SnapshotError) else str(exc)
        version = python_mismatch(snapshot)
        raise ReplayFailure(
            _paragraph("cannot unpickle the arguments", why + (f" ({version})" if version else ""))
            + setup_hint(exc)
        ) from None
    outcome.mutated = mutated
    _check_result(request, snapshot, first, state, outcome)
    if getattr(benchmark, "disabled", False):
        # --benchmark-disable (or pytest-benchmark saw xdist): one call, like pytest-benchmark.
        outcome.notes.append("not timed: pytest-benchmark is disabled; result checked only")
        return None

    if cfg.measure != "time":
        from .deterministic import count_item

        count_item(
            replayer=replayer,
            benchmark=benchmark,
            state=state,
            outcome=outcome,
            snapshot=snapshot,
            func=func,
            target=target,
            rootdir=str(request.config.rootpath),
            why_not_fresh=_why_not_processes(snapshot, func, target),
        )
        report_paired(request.node, benchmark, outcome)
        gate(outcome, cfg.fail_slower)
        return None

    policy = policy or cfg.policy()
    reference = ReferenceClock()
    result = _time(replayer, state, outcome, snapshot, func, target, policy, reference)
    machine = reference.estimate()
    outcome.rounds = result
    changed = target != snapshot.header.target or bool(code_changed(snapshot, func))
    suspect = sanity_note(snapshot.header, result.interval.estimate, code_changed=changed)
    if suspect:
        outcome.notes.append(suspect)
    _report_to_benchmark(benchmark, result, snapshot, target, outcome)
    report_paired(request.node, benchmark, outcome)

    ledger = Ledger.for_snapshot(state.store.history_dir, target, snapshot.id)
    entries = ledger.entries()
    previous = [e for e in entries if e.unit == "seconds"]  # counts are not times
    outcome.iteration = entries[-1].iteration + 1 if entries else 1
    current_code = code_hash(func)
    if previous:
        # Drift is learned only from reruns of identical source, interpreter and packages.
        pairs = aa_pairs(previous, after=ledger.drift_reset_after())
        drift = session_drift(pairs, prior=cfg.drift)
        outcome.drift = drift
        last = previous[-1]
        outcome.machine_move = _move(last, machine)
        outcome.vs_previous = _compare(last, result, cfg, drift, outcome.machine_move)
        met = first_met(previous)
        if met is not None and met is not last:
            outcome.vs_first = _compare(met, result, cfg, drift, _move(met, machine))

    profile_calls = None
    if cfg.profiler:
        profile_calls = _profile(replayer, state, outcome, snapshot, func, previous)

    commit, dirty = git_state(str(request.config.rootpath))
    if state.identity is None:
        state.identity = environment(str(request.config.rootpath), str(state.store.root))
    identity = state.identity
    ledger.append(
        Entry(
            iteration=outcome.iteration,
            time=now(),
            commit=commit,
            dirty=dirty,
            target=target,
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
            stop_reason=result.stop_reason,
            processes=result.processes,
            group_estimates=list(result.group_estimates),
            code_hash=current_code,
            paired=asdict(outcome.paired) if outcome.paired else None,
            source=identity["source"],
            interpreter=identity["interpreter"],
            packages=identity["packages"],
            reference=machine,
            reference_samples=reference.kept(),
            drift=outcome.drift,
            vs_previous=_record(outcome.vs_previous, previous[-1] if previous else None),
            vs_first=_record(outcome.vs_first, first_met(previous)),
            change=change_text(outcome),
        )
    )
    gate(outcome, cfg.fail_slower)

    if cfg.strict and suspect and not changed:
        raise ReplayFailure(f"perfreplay sanity check failed (--perf-replay-strict): {suspect}")
    if cfg.strict and not result.target_met:
        raise ReplayFailure(
            f"precision target missed (--perf-replay-strict): reached "
            f"±{result.precision:.2%} of the {result.interval.estimator}, asked for "
            f"±{result.policy.target:.2%}; stopped on {result.stop_reason} after "
            f"{result.rounds} rounds. Raise --perf-replay-max-time, or quiet the machine."
        )
    return result


def _time(
    replayer: Replayer,
    state: ReplaySession,
    outcome: ItemOutcome,
    snapshot: Snapshot,
    func: Callable[..., Any],
    target: str,
    policy: RoundPolicy,
    reference: ReferenceClock,
) -> RoundsResult:
    """The rounds, with the reference workload timed beside them (interleaved in this
    process; before and after when the rounds run in worker processes)."""
    cfg = state.config
    preload_scipy()  # its ~1 s import must not land inside the round budget
    progress = _progress(state, target)
    if state.baseline is not None:
        paired = time_paired(
            state,
            outcome,
            snapshot_path=Path(snapshot.path or ""),
            target=target,
            captured_target=snapshot.header.target,
            policy=policy,
            why_not_workers=_why_not_processes(snapshot, func, target),
            write=state.write_progress,
        )
        if paired is not None:
            return paired
    if cfg.processes > 1:
        why_not = _why_not_processes(snapshot, func, target)
        if why_not is None:
            from .workers import WorkerError, WorkerJob, run_processes

            job = WorkerJob(
                snapshot_path=str(snapshot.path),
                store=str(state.store.root),
                allow_unsigned=cfg.allow_unsigned,
                target=None if target == snapshot.header.target else target,
            )
            try:
                reference.bracket()
                done = run_processes(job, policy, cfg.processes, on_progress=progress)
                reference.bracket()
                return done
            except WorkerError as exc:
                raise ReplayFailure(str(exc)) from None
        outcome.notes.append(f"timed in this process, not in worker processes: {why_not}")
    with replayer.timing():
        return run_rounds(reference.wrap(replayer.measure), policy, on_progress=progress)


def _why_not_processes(snapshot: Snapshot, func: Callable[..., Any], target: str) -> str | None:
    if snapshot.header.placeholders:
        return "its placeholders are bound to fixtures, which exist only here"
    if not snapshot.path:
        return "the snapshot has no file a worker could load"
    if "<locals>" in target or target_name(func) != target:
        return f"{target} cannot be imported by name in a fresh process"
    return None


def _check_result(
    request: pytest.FixtureRequest,
    snapshot: Snapshot,
    first: CallOutcome,
    state: ReplaySession,
    outcome: ItemOutcome,
) -> None:
    cfg = state.config
    if not snapshot.header.has_result or not cfg.check_result:
        outcome.result_check = check_outcome(snapshot.header, first)
        return
    expected = snapshot.load_result()
    try:
        custom = request.getfixturevalue("perf_replay_compare")
    except pytest.FixtureLookupError:
        custom = None
    try:
        check_result(
            expected,
            first,
            request.config,
            compare=custom,
            rel=cfg.result_rtol,
            abs_=cfg.result_atol,
        )
    except ResultMismatch as exc:
        hint = "" if first.ok else setup_hint(first.value)
        if not hint:
            raise
        raise ResultMismatch(f"{exc}{hint}") from None
    outcome.result_check = "same result as captured"


def _progress(state: ReplaySession, name: str) -> Callable[[Progress], None] | None:
    write = state.write_progress
    if write is None:
        return None
    last = [0.0]

    def on_progress(p: Progress) -> None:
        # Quiet for short items; then one line every few seconds.
        if p.elapsed >= 3.0 and p.elapsed - last[0] >= 3.0:
            last[0] = p.elapsed
            precision = f"±{p.precision:.2%}" if p.precision < 1e9 else "not yet bounded"
            phase = "" if p.warmup_done else " (warming up)"
            write(
                f"perfreplay {name}: {p.rounds} rounds{phase}, {precision} after {p.elapsed:.0f} s"
            )

    return on_progress


def _report_to_benchmark(
    benchmark: Any, result: RoundsResult, snapshot: Snapshot, target: str, outcome: ItemOutcome
) -> None:
    iv = result.interval
    benchmark.extra_info.update(
        {
            "perfreplay": __version__,
            "snapshot": snapshot.id,
            "target": target,
            "captured_target": snapshot.header.target,
            "estimator": iv.estimator,
            "estimate": iv.estimate,
            "interval": [iv.low, iv.high],
            "interval_method": iv.method,
            "confidence": iv.confidence,
            "precision": result.precision,
            "precision_target": result.policy.target,
            "target_met": result.target_met,
            "stop_reason": result.stop_reason,
            "warmup_rounds": len(result.warmup),
            "warmup_settled": result.warmup_settled,
            "processes": result.processes,
            "rounds_per_process": list(result.groups),
            "gc_policy": result.policy.gc,
            "mutated_arguments": outcome.mutated,
            "result_check": outcome.result_check,
            "elapsed": result.elapsed,
        }
    )
    stats = benchmark._make_stats(1)
    # pytest-benchmark records its own options with each result; record what was used.
    stats.options = {
        "disable_gc": result.policy.gc == "disable",
        "timer": "time.perf_counter_ns",
        "min_rounds": result.policy.min_rounds,
        "max_time": result.policy.max_time,
        "min_time": 0,
        "precision": result.policy.target,
        "confidence": result.policy.confidence,
        "warmup": "detected",
    }
    for sample in result.samples:
        stats.update(sample)


def _profile(
    replayer: Replayer,
    state: ReplaySession,
    outcome: ItemOutcome,
    snapshot: Snapshot,
    func: Callable[..., Any],
    previous: list[Entry],
) -> int | None:
    from ..profile.passes import PassSettings, run_profile_pass

    cfg = state.config
    assert outcome.rounds is not None
    paired = baseline_profile(outcome)  # the diff then runs against the baseline's profile
    settings = PassSettings(
        profiler=cfg.profiler or "auto",
        rate=cfg.profile_rate,
        min_samples=cfg.profile_samples,
        profiles_dir=state.store.profiles_dir,
        native=cfg.profile_native,
        gil=cfg.profile_gil,
        idle=cfg.profile_idle,
        nonblocking=cfg.profile_nonblocking,
        diff_threshold=cfg.profile_diff_threshold,
    )
    done = run_profile_pass(
        replayer,
        func,
        snapshot,
        iteration=outcome.iteration,
        median=paired[1] if paired else outcome.rounds.interval.estimate,
        settings=settings,
        previous=paired[0] if paired else (previous[-1] if previous else None),
    )
    outcome.profile_path = done.path
    outcome.profile_lines = done.lines
    outcome.notes.extend(done.notes)
    return done.calls


def _move(entry: Entry, machine: float | None) -> float | None:
    """The machine's move since ``entry``, from the reference workload (ratio - 1)."""
    if entry.reference is None or machine is None or entry.reference <= 0 or machine <= 0:
        return None
    return machine / entry.reference - 1


def _record(c: Comparison | None, against: Entry | None) -> dict[str, Any] | None:
    if c is None or against is None:
        return None
    return {"against": against.iteration, **asdict(c)}


def _compare(
    entry: Entry, result: RoundsResult, cfg: ReplayConfig, drift: float, move: float | None
) -> Comparison | None:
    """Compare with a ledger entry: by process when both runs had several, else by round."""
    estimator = cfg.estimator  # validated by the config
    if len(entry.group_estimates) >= 2 and len(result.group_estimates) >= 2:
        return compare_groups(
            entry.group_estimates,
            list(result.group_estimates),
            estimator=estimator,  # type: ignore[arg-type]
            confidence=cfg.confidence,
            machine_move=move or 0.0,
        )
    if not entry.samples or not result.samples:
        return None
    return compare(
        entry.samples,
        list(result.samples),
        estimator=estimator,  # type: ignore[arg-type]
        confidence=cfg.confidence,
        drift=drift,
        machine_move=move or 0.0,
    )


def _paragraph(what: str, why: str) -> str:
    return textwrap.fill(f"perfreplay {what}: {why}", width=100)
