"""pytest hooks only: options, collection, the summary. The work lives in ``replay/``."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import hookspecs
from .capture.decorator import configure as configure_capture
from .capture.options import OptionsError, apply_configured
from .replay.config import ReplayConfig, add_options
from .replay.fixture import perf_replay, perf_replay_compare
from .replay.items import SnapshotCollector, SnapshotItem
from .replay.paireditem import write_step_summary
from .replay.report import header_line, progress_writer, summary_lines
from .replay.session import ReplaySession, replay_session, set_replay_session
from .snapshot.store import Store


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "perfreplay: a benchmark item replayed from a snapshot")
    cfg = ReplayConfig.from_pytest(config)
    if not cfg.enabled:
        try:  # capture on in a test session: [tool.perfreplay.targets] applies here too
            apply_configured(config.rootpath)
        except OptionsError as exc:
            raise pytest.UsageError(str(exc)) from None
        return
    if getattr(config.option, "numprocesses", None) or hasattr(config, "workerinput"):
        raise pytest.UsageError(
            "--perf-replay times code, and pytest-xdist (-n) would run the timings in "
            "parallel, where they disturb each other; run it with -n 0 (or -p no:xdist). "
            "--perf-replay-processes N spreads rounds over fresh processes the right way."
        )
    configure_capture(enabled=False)  # replaying must never capture again
    if cfg.measure != "time":
        from .replay.valgrind import CountError, preflight

        try:
            preflight()
        except CountError as exc:
            raise pytest.UsageError(str(exc)) from None
    store = Store(cfg.store)
    pulled: list[str] = []
    if cfg.store_url is not None:
        from .errors import StoreError
        from .snapshot.remote import pull_into_cache

        try:
            store, report = pull_into_cache(
                cfg.store_url, cache=cfg.store, allow_unsigned=cfg.allow_unsigned
            )
        except StoreError as exc:
            raise pytest.UsageError(f"--perf-replay-store: {exc}") from None
        pulled = report.lines()
    state = ReplaySession(config=cfg, store=store, pulled=pulled)
    if cfg.baseline:
        from .replay.baseline import Baseline, BaselineError

        try:
            state.baseline = Baseline.prepare(
                cfg.baseline, Path(config.rootpath), store.root / "baselines"
            )
        except BaselineError as exc:
            raise pytest.UsageError(str(exc)) from None
    state.write_progress = progress_writer(config)
    set_replay_session(config, state)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # `pytest --perf-replay` with no paths runs only the snapshots, not the test suite.
    state = replay_session(config)
    if (
        state is not None
        and state.config.enabled
        and config.args_source != pytest.Config.ArgsSource.ARGS
    ):
        return True
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    # tryfirst: snapshot items must exist before -k, -m and --lf filter the list.
    state = replay_session(config)
    if state is None or not state.config.enabled:
        return
    collector = SnapshotCollector.from_parent(
        session, name="perfreplay", nodeid="perfreplay", replay=state
    )
    # Through the report hooks, like any collector, so "collected N items" counts them.
    report = config.hook.pytest_make_collect_report(collector=collector)
    config.hook.pytest_collectreport(report=report)
    items.extend(x for x in report.result if isinstance(x, pytest.Item))


def pytest_report_header(config: pytest.Config) -> str | None:
    state = replay_session(config)
    if state is None or not state.config.enabled:
        return None
    lines = [*state.pulled, header_line(state, len(state.store.snapshot_paths()))]
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    state = replay_session(terminalreporter.config)
    if state is None or not state.outcomes:
        return
    write_step_summary(state)
    terminalreporter.section("perfreplay")
    for line in summary_lines(state, Path.cwd()):
        terminalreporter.write_line(line)


__all__ = [
    "SnapshotItem",
    "perf_replay",
    "perf_replay_compare",
]
