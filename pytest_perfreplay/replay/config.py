"""Replay options: declared once (flag + ini twin), resolved once into a frozen dataclass."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..snapshot.remote import default_cache, is_remote
from ..snapshot.store import DEFAULT_ROOT, STORE_ENV, discover_root
from .rounds import RoundPolicy

PROFILERS = ("auto", "py-spy", "pyinstrument")
ESTIMATORS = ("median", "mean", "min")
GC_POLICIES = ("collect", "disable", "enable")
ALLOW_UNSIGNED_ENV = "PERFREPLAY_ALLOW_UNSIGNED"
MEASURES = ("time", "instructions", "cycles")


def _fraction(value: str) -> float:
    text = value.strip()
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a number or a percentage such as '1%'") from None
    if not 0 < number < 1:
        raise ValueError(f"{value!r} must be between 0 and 1 (exclusive), e.g. 0.01 or '1%'")
    return number


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an integer") from None
    if number < 1:
        raise ValueError(f"{value!r} must be >= 1")
    return number


def _tolerance(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number such as 1e-9") from None
    if not 0 <= number < 1:
        raise ValueError(f"{value!r} must be >= 0 and < 1")
    return number


def _seconds(value: str) -> float:
    text = value.strip()
    scale = 1.0
    for suffix, factor in (("ms", 1e-3), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix):
            text, scale = text[: -len(suffix)], factor
            break
    try:
        number = float(text) * scale
    except ValueError:
        raise ValueError(f"{value!r} is not a duration such as '10', '10s' or '500ms'") from None
    if number <= 0:
        raise ValueError(f"{value!r} must be a positive duration")
    return number


def _percent(value: str) -> float:
    text = value.strip().removesuffix("%")
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a percentage such as 1, 2.5 or '5%'") from None
    if not 0 <= number < 1000:
        raise ValueError(f"{value!r} must be a percentage >= 0 and < 1000")
    return number


def _shard(value: str) -> tuple[int, int]:
    index, sep, count = value.strip().partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise ValueError(f"{value!r} is not of the form I/N, such as 1/4") from None
    if not sep or n < 1 or not 1 <= i <= n:
        raise ValueError(f"{value!r}: I/N needs N >= 1 and I between 1 and N, such as 2/4")
    return i, n


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return parse


def _flag(value: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false)")


@dataclass(frozen=True)
class _Option:
    name: str  # without the --perf-replay- prefix
    help: str
    default: str | None
    parse: Callable[[str], Any]
    flag: bool = False  # store_true on the command line
    ini: bool = True  # False: command line or environment only (a trust decision)


OPTIONS: tuple[_Option, ...] = (
    _Option(
        "store",
        f"snapshot store: a folder or a URL such as s3://bucket/prefix, pulled into a local "
        f"cache first (default ${STORE_ENV}, else the nearest {DEFAULT_ROOT} found upwards "
        "from the current directory, like git)",
        None,
        str,
    ),
    _Option("precision", "target precision: CI half-width / estimate", "0.01", _fraction),
    _Option("confidence", "confidence level of the interval", "0.95", _fraction),
    _Option("estimator", "estimate to report: median, mean or min", "median", _choice(ESTIMATORS)),
    _Option("max-time", "time budget per snapshot, seconds (e.g. 10, 500ms)", "10", _seconds),
    _Option("min-rounds", "rounds before precision is first checked", "10", _positive_int),
    _Option("max-rounds", "round cap per snapshot", "10000", _positive_int),
    _Option(
        "gc",
        "GC policy: collect (before each round), disable (during it), enable",
        "collect",
        _choice(GC_POLICIES),
    ),
    _Option(
        "processes",
        "spread rounds over N fresh worker processes, adding more (up to 4N) while the "
        "precision target is missed and budget remains; 1 times in this process",
        "1",
        _positive_int,
    ),
    _Option(
        "measure",
        "what to measure: time (wall clock), or instructions or cycles counted under valgrind "
        "(deterministic, blind to I/O and waiting)",
        "time",
        _choice(MEASURES),
    ),
    _Option(
        "drift",
        "between-session drift allowed when comparing iterations (relative SD of one "
        "session's estimate); refined from reruns of identical code (same tree, "
        "interpreter and packages) in the history",
        "0.02",
        _fraction,
    ),
    _Option(
        "strict",
        "fail an item whose precision target was missed, or whose estimate is more than 5x "
        "away from the captured duration",
        "false",
        _flag,
        True,
    ),
    _Option(
        "allow-unsigned",
        f"load unsigned snapshots (only from a source you trust); command line or "
        f"{ALLOW_UNSIGNED_ENV}=1 only, never ini",
        "false",
        _flag,
        True,
        ini=False,
    ),
    _Option(
        "allow-python-mismatch",
        "load snapshots captured on another Python minor version (pickles may misbehave)",
        "false",
        _flag,
        True,
    ),
    _Option(
        "no-result-check", "do not compare results with the captured ones", "false", _flag, True
    ),
    _Option("result-rtol", "relative tolerance for float results", "1e-9", _tolerance),
    _Option("result-atol", "absolute tolerance for float results", "0", _tolerance),
    _Option("profile-rate", "profiler sampling rate, Hz", "500", _positive_int),
    _Option("profile-samples", "minimum samples per profile", "1000", _positive_int),
    _Option("profile-native", "py-spy --native: C extension frames too", "false", _flag, True),
    _Option("profile-gil", "py-spy --gil: only samples holding the GIL", "false", _flag, True),
    _Option("profile-idle", "py-spy --idle: include waiting time", "false", _flag, True),
    _Option(
        "profile-nonblocking",
        "py-spy --nonblocking: never pause the process while sampling",
        "false",
        _flag,
        True,
    ),
    _Option(
        "baseline",
        "compare today's code with this git revision (HEAD, main, a tag, a sha) on every "
        "snapshot: paired, in this session",
        None,
        str,
    ),
    _Option(
        "min-effect",
        "smallest change, in percent, that a paired verdict calls significant",
        "1",
        _percent,
    ),
    _Option(
        "fail-slower",
        "fail an item whose paired verdict is significantly slower by more than PCT percent",
        None,
        _percent,
    ),
    _Option(
        "shard",
        "replay only shard I of N (e.g. 2/4), split by a stable hash of the snapshot id",
        None,
        _shard,
    ),
    _Option(
        "profile-diff-threshold",
        "per-call share a function must move by to count as changed in the profile diff",
        "0.02",
        _fraction,
    ),
)


def _ini_name(name: str) -> str:
    return "perf_replay_" + name.replace("-", "_")


def _dest(name: str) -> str:
    return "perf_replay_" + name.replace("-", "_")


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("perfreplay", "pytest-perfreplay: replay captured calls")
    group.addoption(
        "--perf-replay",
        action="store_true",
        dest="perf_replay",
        default=False,
        help="turn every captured snapshot into a benchmark item",
    )
    group.addoption(
        "--perf-replay-profile",
        dest="perf_replay_profile",
        nargs="?",
        const="auto",
        default=None,
        choices=PROFILERS,
        help="after timing, profile each snapshot to a speedscope file "
        "(auto: py-spy, falling back to pyinstrument)",
    )
    parser.addini("perf_replay_profile", "profiler to use when profiling is on", default=None)
    for opt in OPTIONS:
        flag = f"--perf-replay-{opt.name}"
        if opt.flag:
            group.addoption(
                flag, action="store_true", dest=_dest(opt.name), default=None, help=opt.help
            )
        else:
            group.addoption(
                flag,
                dest=_dest(opt.name),
                default=None,
                help=opt.help if opt.default is None else f"{opt.help} (default: {opt.default})",
            )
        # Registered even when refused, so that setting it gets a clear error.
        parser.addini(_ini_name(opt.name), opt.help, default=opt.default if opt.ini else None)


def _value(config: pytest.Config, opt: _Option) -> Any:
    raw = config.getoption(_dest(opt.name))
    source = f"--perf-replay-{opt.name}"
    if not opt.ini:
        if config.getini(_ini_name(opt.name)) is not None:
            raise pytest.UsageError(
                f"ini option {_ini_name(opt.name)} is refused: a file in the repository must "
                f"not turn signature checks off. Pass --perf-replay-{opt.name} or set "
                f"{ALLOW_UNSIGNED_ENV}=1 for this run"
            )
        if raw is None:
            env = os.environ.get(ALLOW_UNSIGNED_ENV, "").strip().lower()
            raw = env in ("1", "true", "yes", "on")
        return bool(raw)
    if raw is None:
        raw = config.getini(_ini_name(opt.name))
        source = f"ini option {_ini_name(opt.name)}"
    if raw is None or (raw == "" and opt.default is None):
        return None
    if opt.flag and isinstance(raw, bool):
        return raw
    try:
        return opt.parse(str(raw))
    except ValueError as exc:
        raise pytest.UsageError(f"{source}: {exc}") from None


@dataclass(frozen=True)
class ReplayConfig:
    enabled: bool
    store: Path  # the local folder replay reads: the store itself, or a remote's cache
    store_url: str | None  # the remote store, when the store is a URL
    precision: float
    confidence: float
    estimator: str
    max_time: float
    min_rounds: int
    max_rounds: int
    gc: str
    processes: int
    drift: float
    strict: bool
    allow_unsigned: bool
    allow_python_mismatch: bool
    check_result: bool
    result_rtol: float
    result_atol: float
    profiler: str | None
    profile_rate: int
    profile_samples: int
    profile_native: bool
    profile_gil: bool
    profile_idle: bool
    profile_nonblocking: bool
    profile_diff_threshold: float
    baseline: str | None = None
    min_effect: float = 1.0  # percent
    fail_slower: float | None = None  # percent
    shard: tuple[int, int] | None = None
    measure: str = "time"
    max_time_explicit: bool = False  # given by flag or ini, not the default

    def policy(self, **overrides: Any) -> RoundPolicy:
        fields: dict[str, Any] = {
            "target": self.precision,
            "confidence": self.confidence,
            "estimator": self.estimator,
            "min_rounds": self.min_rounds,
            "max_rounds": self.max_rounds,
            "max_time": self.max_time,
            "gc": self.gc,
        }
        fields.update(overrides)
        return RoundPolicy(**fields)

    @classmethod
    def from_pytest(cls, config: pytest.Config) -> ReplayConfig:
        v = {opt.name: _value(config, opt) for opt in OPTIONS}
        profiler = config.getoption("perf_replay_profile") or config.getini("perf_replay_profile")
        if profiler and profiler not in PROFILERS:
            raise pytest.UsageError(
                f"perf_replay_profile: {profiler!r} is not one of {', '.join(PROFILERS)}"
            )
        here = Path(config.invocation_params.dir)
        explicit = v["store"] or os.environ.get(STORE_ENV)
        store = explicit or str(discover_root(here))
        store_url = store if is_remote(store) else None
        store_path = default_cache(store, discover_root(here)) if store_url else Path(store)
        if not store_path.is_absolute():
            store_path = here / store_path  # like the CLI: relative to where it was run
        if (
            explicit
            and not store_url
            and not store_path.is_dir()
            and config.getoption("perf_replay")
        ):
            raise pytest.UsageError(
                f"--perf-replay-store: {store_path} does not exist. Capture into it first, "
                f"e.g. PERFREPLAY_STORE={store_path} perfreplay run --targets pkg.mod:func "
                "-- python -m yourservice"
            )
        if v["min-rounds"] > v["max-rounds"]:
            raise pytest.UsageError(
                f"--perf-replay-min-rounds ({v['min-rounds']}) is larger than "
                f"--perf-replay-max-rounds ({v['max-rounds']})"
            )
        return cls(
            enabled=bool(config.getoption("perf_replay")),
            store=store_path,
            store_url=store_url,
            precision=v["precision"],
            confidence=v["confidence"],
            estimator=v["estimator"],
            max_time=v["max-time"],
            min_rounds=v["min-rounds"],
            max_rounds=v["max-rounds"],
            gc=v["gc"],
            processes=v["processes"],
            drift=v["drift"],
            strict=bool(v["strict"]),
            allow_unsigned=bool(v["allow-unsigned"]),
            allow_python_mismatch=bool(v["allow-python-mismatch"]),
            check_result=not v["no-result-check"],
            result_rtol=v["result-rtol"],
            result_atol=v["result-atol"],
            profiler=profiler or None,
            profile_rate=v["profile-rate"],
            profile_samples=v["profile-samples"],
            profile_native=bool(v["profile-native"]),
            profile_gil=bool(v["profile-gil"]),
            profile_idle=bool(v["profile-idle"]),
            profile_nonblocking=bool(v["profile-nonblocking"]),
            profile_diff_threshold=v["profile-diff-threshold"],
            baseline=v["baseline"] or None,
            min_effect=v["min-effect"],
            fail_slower=v["fail-slower"],
            shard=v["shard"],
            measure=v["measure"],
            max_time_explicit=config.getoption(_dest("max-time")) is not None
            or config.getini(_ini_name("max-time")) != "10",
        )
