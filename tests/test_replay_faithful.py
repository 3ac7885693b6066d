"""Replay what production did: each behaviour through real captures and real pytest sessions.

Snapshots are made the way production makes them (a program run with capture on, in a
subprocess); replays are real pytest sessions. No timing is asserted, only outcomes,
messages and header fields.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_perfreplay.capture import decorator
from pytest_perfreplay.replay.call import CallOutcome
from pytest_perfreplay.replay.results import ResultMismatch
from pytest_perfreplay.snapshot.format import Header, dumps, read_header_file

# Modules this feature added are imported inside the unit tests that use them, so that
# the behavioural tests here run (and fail) on code without them.


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERFREPLAY_")}
    env.update(extra)
    return env


def perfreplay() -> str:
    return str(Path(sys.executable).with_name("perfreplay"))


def pytest_exe() -> str:
    # The console script, not `python -m pytest`: -m would put the cwd on sys.path, which is
    # exactly what a fresh project's first replay must not depend on.
    return str(Path(sys.executable).with_name("pytest"))


def sh(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=300
    )


def headers(root: Path) -> list[Header]:
    return [read_header_file(p) for p in sorted(root.glob(".perfreplay/snapshots/*/*.prsnap"))]


def replay(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return sh(
        [
            pytest_exe(),
            "--perf-replay",
            "--perf-replay-max-time=0.5",
            "-p",
            "no:cacheprovider",
            *args,
        ],
        root,
    )


def project(tmp_path: Path, **files: str) -> Path:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0"\n')
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def capture_run(
    root: Path, targets: str, program: str, *options: str
) -> subprocess.CompletedProcess[str]:
    env = clean_env(PYTHONPATH=str(root))
    out = sh(
        [perfreplay(), "run", "--targets", targets, *options, "--", sys.executable, program],
        root,
        env,
    )
    assert out.returncode == 0, out.stderr
    return out


# -- 6. raised calls replay as raised ------------------------------------------------

PARSER = """
class ParseError(Exception):
    pass


def parse(text):
    if text.startswith("!"):
        raise ParseError("refused by the guard: " + text)
    return text.split()
"""
PARSE_TRAFFIC = """
import parser_mod
for text in ["a b c", "!" + "x" * 50]:
    try:
        parser_mod.parse(text)
    except parser_mod.ParseError:
        pass
"""


def test_a_call_that_raised_in_production_replays_as_raised_and_passes(tmp_path: Path) -> None:
    root = project(tmp_path, **{"parser_mod.py": PARSER, "traffic.py": PARSE_TRAFFIC})
    capture_run(root, "parser_mod:parse", "traffic.py")
    kinds = sorted((h.get("outcome"), h.get("raised")) for h in headers(root))
    assert kinds == [("raise", "parser_mod.ParseError"), ("return", None)]  # no keep_result
    out = replay(root)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "raised parser_mod.ParseError, as captured" in out.stdout
    assert "2 passed" in out.stdout


def test_a_different_outcome_is_a_result_check_failure() -> None:
    from pytest_perfreplay.replay.outcome import check_outcome

    raised = Header({"id": "x", "target": "m:f", "outcome": "raise", "raised": "m.Err"})
    returned = Header({"id": "x", "target": "m:f", "outcome": "return"})
    with pytest.raises(ResultMismatch, match="replayed call returned instead"):
        check_outcome(raised, CallOutcome(True, 1))
    with pytest.raises(ResultMismatch, match=r"replayed call raised builtins\.KeyError"):
        check_outcome(raised, CallOutcome(False, KeyError("k")))
    with pytest.raises(ResultMismatch, match="perf_replay_setup"):
        check_outcome(returned, CallOutcome(False, AttributeError("no _tokens")))
    old = Header({"id": "x", "target": "m:f"})  # written before the field existed
    with pytest.raises(KeyError):
        check_outcome(old, CallOutcome(False, KeyError("k")))
    assert check_outcome(old, CallOutcome(True, 1)).startswith("returned")


# -- 1. sanity against the captured call ----------------------------------------------

GEN = """
LOG = []


def consume(rows):
    n = 0
    for row in rows:
        n += row % 7
    LOG.append(n)
    return None
"""
GEN_TRAFFIC = """
import gen_mod
gen_mod.consume(i for i in range(200_000))
"""


def test_a_replay_far_from_the_captured_duration_says_so_and_strict_fails(
    tmp_path: Path,
) -> None:
    root = project(tmp_path, **{"gen_mod.py": GEN, "traffic.py": GEN_TRAFFIC})
    capture_run(root, "gen_mod:consume", "traffic.py")
    # A fixture that hands over an empty generator: what a used-up resource looks like.
    (root / "conftest.py").write_text(
        "import pytest\n\n\n@pytest.fixture\ndef builtins_generator():\n    return iter(())\n"
    )
    out = replay(root)
    assert out.returncode == 0, out.stdout
    assert "faster than the captured call" in out.stdout
    assert "live resources were replaced by fixtures (builtins_generator" in out.stdout
    strict = replay(root, "--perf-replay-strict")
    assert strict.returncode == 1
    assert "sanity check failed" in strict.stdout


def test_sanity_note_is_quiet_within_the_band_and_explains_outside_it() -> None:
    from pytest_perfreplay.replay.sanity import sanity_note

    h = Header(
        {
            "id": "x",
            "target": "m:f",
            "duration": 0.040,
            "host": "elsewhere",
            "redactions": [{"path": "args[0]['tokens']"}],
        }
    )
    assert sanity_note(h, 0.030) is None
    assert sanity_note(h, 0.0079) is not None  # just over 5x faster
    note = sanity_note(h, 0.000120) or ""
    assert "333x faster" in note and "args[0]['tokens']" in note and "elsewhere" in note
    assert "slower" in (sanity_note(h, 0.5) or "")
    assert sanity_note(Header({"id": "x", "target": "m:f"}), 1.0) is None  # no duration


# -- 2. fresh resources every round ---------------------------------------------------

COUNTING_CONFTEST = """
import pytest

import gen_mod


@pytest.fixture{scope}
def builtins_generator():
    yield (i for i in range(200_000))


def pytest_sessionfinish(session):
    print("SEEN", sorted(set(gen_mod.LOG)))
"""


def test_a_generator_fixture_is_recreated_for_every_round(tmp_path: Path) -> None:
    root = project(tmp_path, **{"gen_mod.py": GEN, "traffic.py": GEN_TRAFFIC})
    capture_run(root, "gen_mod:consume", "traffic.py")
    (root / "conftest.py").write_text(COUNTING_CONFTEST.format(scope=""))
    out = replay(root, "-s")
    assert out.returncode == 0, out.stdout
    full = sum(i % 7 for i in range(200_000))
    assert f"SEEN [{full}]" in out.stdout  # every round consumed a full generator
    assert "faster than the captured call" not in out.stdout


def test_a_used_up_resource_that_cannot_be_recreated_is_refused(tmp_path: Path) -> None:
    root = project(tmp_path, **{"gen_mod.py": GEN, "traffic.py": GEN_TRAFFIC})
    capture_run(root, "gen_mod:consume", "traffic.py")
    (root / "conftest.py").write_text(COUNTING_CONFTEST.format(scope='(scope="session")'))
    out = replay(root)
    assert out.returncode == 1
    assert "its fixture is session-scoped" in out.stdout
    assert "builtins_generator_factory" in out.stdout


def test_a_factory_fixture_gives_each_round_its_own_resource(tmp_path: Path) -> None:
    root = project(tmp_path, **{"gen_mod.py": GEN, "traffic.py": GEN_TRAFFIC})
    capture_run(root, "gen_mod:consume", "traffic.py")
    (root / "conftest.py").write_text(
        COUNTING_CONFTEST.format(scope='(scope="session")')
        + "\n\n@pytest.fixture\ndef builtins_generator_factory():\n"
        "    return lambda: (i for i in range(200_000))\n"
    )
    out = replay(root, "-s")
    assert out.returncode == 0, out.stdout
    assert f"SEEN [{sum(i % 7 for i in range(200_000))}]" in out.stdout


def test_consumable_types() -> None:
    from pytest_perfreplay.replay.resources import consumable

    assert consumable("builtins.generator") and consumable("_io.TextIOWrapper")
    assert not consumable("sqlite3.Connection")


# -- 8. import roots: the first replay in a fresh project works -------------------------


@pytest.mark.parametrize("layout", ["flat", "src"])
def test_the_first_replay_in_a_fresh_project_imports_the_target(
    tmp_path: Path, layout: str
) -> None:
    root = project(tmp_path, **{"traffic.py": PARSE_TRAFFIC})
    pkg_dir = root / "src" if layout == "src" else root
    pkg_dir.mkdir(exist_ok=True)
    (pkg_dir / "parser_mod.py").write_text(PARSER)
    env = clean_env(PYTHONPATH=str(pkg_dir))
    out = sh(
        [perfreplay(), "run", "--targets", "parser_mod:parse", "--", sys.executable, "traffic.py"],
        root,
        env,
    )
    assert out.returncode == 0, out.stderr
    # No pythonpath ini, no PYTHONPATH: what a new user has.
    result = replay(root)
    assert result.returncode == 0, result.stdout
    assert "cannot import module" not in result.stdout


def test_import_roots_leave_an_importable_module_alone(tmp_path: Path) -> None:
    from pytest_perfreplay.replay.imports import add_import_roots

    assert add_import_roots("json:dumps", tmp_path) == []
    (tmp_path / "src").mkdir()
    before = list(sys.path)
    try:
        added = add_import_roots("surely_not_a_module_xyz:f", tmp_path)
        assert added == [str(tmp_path / "src"), str(tmp_path)]
    finally:
        sys.path[:] = before


# -- 5. no trace on the program being run ----------------------------------------------


def test_a_suite_run_under_perfreplay_run_is_unchanged_with_warnings_as_errors(
    tmp_path: Path,
) -> None:
    root = project(
        tmp_path,
        **{
            "parser_mod.py": PARSER,
            "test_parser.py": (
                "import pytest\nimport parser_mod\n\n\ndef test_split():\n"
                "    assert parser_mod.parse('a b') == ['a', 'b']\n\n\n"
                "def test_guard():\n    with pytest.raises(parser_mod.ParseError):\n"
                "        parser_mod.parse('!x')\n"
            ),
        },
    )
    env = clean_env(PYTHONPATH=str(root))
    plain = sh([pytest_exe(), "-W", "error", "-p", "no:cacheprovider"], root, env)
    under = sh(
        [
            perfreplay(),
            "run",
            "--targets",
            "parser_mod:parse",
            "--",
            pytest_exe(),
            "-W",
            "error",
            "-p",
            "no:cacheprovider",
        ],
        root,
        env,
    )
    assert plain.returncode == under.returncode == 0, under.stdout + under.stderr
    assert "PytestAssertRewriteWarning" not in under.stdout + under.stderr
    assert "2 passed" in under.stdout and "warning" not in under.stdout.splitlines()[-1]
    assert len(headers(root)) == 2


# -- 4. capture options for `perfreplay run`, flags and pyproject -------------------------


def test_run_takes_capture_options_as_flags(tmp_path: Path) -> None:
    root = project(tmp_path, **{"parser_mod.py": PARSER, "traffic.py": PARSE_TRAFFIC})
    capture_run(root, "parser_mod:parse", "traffic.py", "--keep-result", "--max-snapshots", "1")
    (only,) = headers(root)
    assert only.has_result
    assert only.get("sampling") == {"rate": 1.0, "slower_than": 0.0}


def test_run_reads_targets_and_options_from_pyproject(tmp_path: Path) -> None:
    root = project(tmp_path, **{"parser_mod.py": PARSER, "traffic.py": PARSE_TRAFFIC})
    with open(root / "pyproject.toml", "a") as f:
        f.write(
            '\n[tool.perfreplay.targets."parser_mod:parse"]\n'
            "keep_result = true\nslower_than = 0\nmax_snapshots = 5\n"
        )
    env = clean_env(PYTHONPATH=str(root))
    out = sh([perfreplay(), "run", "--", sys.executable, "traffic.py"], root, env)
    assert out.returncode == 0, out.stderr
    assert [h.has_result for h in headers(root)] == [True, True]


def test_pyproject_options_are_checked_with_one_line_errors(tmp_path: Path) -> None:
    from pytest_perfreplay.capture.options import OptionsError, configured_targets

    (tmp_path / "pyproject.toml").write_text(
        '[tool.perfreplay.targets."m:f"]\nsample_rate = "often"\n'
    )
    with pytest.raises(OptionsError, match=r"m:f sample_rate = 'often' is not a int or float"):
        configured_targets(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[tool.perfreplay.targets."m:f"]\nspeed = 1\n')
    with pytest.raises(OptionsError, match="unknown option 'speed'.*accepted: sample_rate"):
        configured_targets(tmp_path)
    out = sh([perfreplay(), "run", "--", sys.executable, "-c", "pass"], tmp_path)
    assert out.returncode == 2 and "unknown option 'speed'" in out.stderr
    assert "Traceback" not in out.stderr


def test_perfreplay_targets_accepts_options_as_json(tmp_path: Path) -> None:
    root = project(tmp_path, **{"parser_mod.py": PARSER, "traffic.py": PARSE_TRAFFIC})
    env = clean_env(
        PYTHONPATH=str(root),
        PERFREPLAY_CAPTURE="1",
        PERFREPLAY_TARGETS=json.dumps({"parser_mod:parse": {"keep_result": True}}),
    )
    script = "import pytest_perfreplay\n" + PARSE_TRAFFIC
    out = sh([sys.executable, "-c", script], root, env)
    assert out.returncode == 0, out.stderr
    assert all(h.has_result for h in headers(root)) and len(headers(root)) == 2


# -- 9. one store location rule -------------------------------------------------------


def test_the_store_is_found_upwards_like_git(tmp_path: Path) -> None:
    from pytest_perfreplay.snapshot.store import discover_root

    (tmp_path / "pyproject.toml").write_text("")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert discover_root(deep) == tmp_path / ".perfreplay"  # the project root, by default
    (tmp_path / "a" / ".perfreplay").mkdir()
    assert discover_root(deep) == tmp_path / "a" / ".perfreplay"  # the nearest existing one


def test_cli_and_pytest_find_the_same_store_from_a_subfolder(tmp_path: Path) -> None:
    root = project(tmp_path, **{"parser_mod.py": PARSER, "traffic.py": PARSE_TRAFFIC})
    capture_run(root, "parser_mod:parse", "traffic.py")
    sub = root / "docs"
    sub.mkdir()
    listed = sh([perfreplay(), "list"], sub)
    assert listed.returncode == 0 and "parser_mod:parse" in listed.stdout, listed.stderr
    out = sh([pytest_exe(), "--perf-replay", "--collect-only", "-p", "no:cacheprovider"], sub)
    assert f"store {root / '.perfreplay'}" in out.stdout, out.stdout
    assert "collected 2 items" in out.stdout


def test_capture_logs_where_it_writes_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PERFREPLAY_STORE", raising=False)
    decorator._reset()
    try:
        decorator.configure(enabled=True)

        @decorator.capture(force=True)
        def f(x: int) -> int:
            return x

        with caplog.at_level(logging.WARNING, "pytest_perfreplay.capture"):
            f(1)
            f(2)
        decorator._ROUNDTRIPS.drain()
        lines = [r.getMessage() for r in caplog.records if "capturing into" in r.getMessage()]
        assert lines == [
            f"perfreplay: capturing into {tmp_path / '.perfreplay'} (PERFREPLAY_STORE changes it)"
        ]
    finally:
        decorator._reset()


# -- 10. loud skips ---------------------------------------------------------------------


def test_a_target_module_never_imported_is_reported_at_exit(tmp_path: Path) -> None:
    out = sh(
        [perfreplay(), "run", "--targets", "nosuch_mod:f", "--", sys.executable, "-c", "pass"],
        tmp_path,
    )
    assert out.returncode == 0
    assert "capture target module 'nosuch_mod' was never imported" in out.stderr


def test_an_oversized_argument_is_logged_once_with_the_limit(tmp_path: Path) -> None:
    root = project(tmp_path, **{"parser_mod.py": PARSER})
    prog = "import parser_mod\nfor _ in range(3):\n    parser_mod.parse('word ' * 5000)\n"
    (root / "big.py").write_text(prog)
    out = capture_run(root, "parser_mod:parse", "big.py", "--max-bytes", "1000")
    assert out.stderr.count("pickle to more than max_bytes=1000") == 1, out.stderr


def test_a_missing_store_path_is_a_usage_error_with_the_command(tmp_path: Path) -> None:
    out = sh(
        [
            pytest_exe(),
            "--perf-replay",
            "--perf-replay-store",
            str(tmp_path / "nope"),
            "-p",
            "no:cacheprovider",
        ],
        tmp_path,
    )
    assert out.returncode == 4
    assert "does not exist" in out.stderr and "perfreplay run --targets" in out.stderr


# -- 13. round-trip check at capture ------------------------------------------------------

TEMPLATE = """
class Template:
    # Like jinja2's Template: __new__ needs the source, so a pickle cannot rebuild it.
    def __new__(cls, source):
        obj = object.__new__(cls)
        obj.source = source
        return obj

    def render(self, name):
        return self.source.replace("{name}", name)
"""
TEMPLATE_TRAFFIC = """
import tpl
t = tpl.Template("hello {name}")
for who in ["a", "b", "c"]:
    t.render(who)
"""


def test_a_snapshot_that_cannot_unpickle_is_marked_logged_and_skipped(tmp_path: Path) -> None:
    root = project(tmp_path, **{"tpl.py": TEMPLATE, "traffic.py": TEMPLATE_TRAFFIC})
    out = capture_run(root, "tpl:Template.render", "traffic.py")
    kept = headers(root)  # the first, and any kept while it was being checked: all marked
    assert 1 <= len(kept) <= 3
    for header in kept:
        verdict = header.get("roundtrip")
        assert verdict["ok"] is False and verdict["class"] == "tpl.Template"
        assert "missing 1 required positional argument: 'source'" in verdict["error"]
    assert out.stderr.count("cannot replay: unpickling tpl.Template fails") == 1
    assert 'receiver = "NAME"' in out.stderr
    result = replay(root, "-rs")
    assert result.returncode == 0, result.stdout
    assert f"{len(kept)} skipped" in result.stdout
    assert "unpickling tpl.Template failed" in result.stdout


def test_a_receiver_captured_as_a_placeholder_is_rebuilt_from_a_fixture(
    tmp_path: Path,
) -> None:
    root = project(tmp_path, **{"tpl.py": TEMPLATE, "traffic.py": TEMPLATE_TRAFFIC})
    with open(root / "pyproject.toml", "a") as f:
        f.write('\n[tool.perfreplay.targets."tpl:Template.render"]\nreceiver = "template"\n')
    env = clean_env(PYTHONPATH=str(root))
    out = sh([perfreplay(), "run", "--", sys.executable, "traffic.py"], root, env)
    assert out.returncode == 0, out.stderr
    assert len(headers(root)) == 3 and not any(h.get("roundtrip") for h in headers(root))
    (root / "conftest.py").write_text(
        "import pytest\nimport tpl\n\n\n@pytest.fixture\ndef template():\n"
        "    return tpl.Template('hello {name}')\n"
    )
    result = replay(root)
    assert result.returncode == 0, result.stdout
    assert "3 passed" in result.stdout


def test_verify_load_reports_snapshots_that_cannot_replay(tmp_path: Path) -> None:
    root = project(tmp_path, **{"tpl.py": TEMPLATE, "traffic.py": TEMPLATE_TRAFFIC})
    capture_run(root, "tpl:Template.render", "traffic.py")
    out = sh([perfreplay(), "verify", "--load"], root, clean_env(PYTHONPATH=str(root)))
    assert out.returncode == 1
    assert "cannot load" in out.stdout and "Template" in out.stdout


def test_unpickle_check_names_the_class() -> None:
    from pytest_perfreplay.capture.roundtrip import unpickle_check

    assert unpickle_check(dumps(([1, 2], {})).data) == {"ok": True}
    verdict = unpickle_check(dumps(((NeedsSource("x"),), {})).data)
    assert verdict["ok"] is False
    assert verdict["class"] == f"{__name__}.NeedsSource"
    assert verdict["error"].startswith("TypeError:")


class NeedsSource:
    def __new__(cls, source: str) -> NeedsSource:
        obj = object.__new__(cls)
        obj.source = source  # type: ignore[attr-defined]
        return obj


def test_the_setup_hint_follows_the_cause_chain() -> None:
    from pytest_perfreplay.errors import SnapshotError
    from pytest_perfreplay.replay.outcome import setup_hint

    try:
        try:
            raise AttributeError("'PythonLexer' object has no attribute '_tokens'")
        except AttributeError as inner:
            raise SnapshotError("cannot unpickle the 'args' section") from inner
    except SnapshotError as outer:
        assert "perf_replay_setup" in setup_hint(outer)
    assert setup_hint(KeyError("k")) == "" and setup_hint(None) == ""


def test_sanity_note_names_a_rewrite_first_when_the_code_changed() -> None:
    from pytest_perfreplay.replay.sanity import sanity_note
    from pytest_perfreplay.snapshot.format import Header

    h = Header({"id": "x", "target": "m:f", "duration": 0.3})
    note = sanity_note(h, 0.004, code_changed=True) or ""
    assert note.split("Possible causes: ")[1].startswith("the target's code changed")
    assert "code changed" not in (sanity_note(h, 0.004) or "")
