"""Per-target options from ``[tool.perfreplay.targets."pkg.mod:func"]`` in pyproject.toml.

Read by ``perfreplay run``, and by the pytest plugin when capture is on in a test session
(``PERFREPLAY_CAPTURE=1 pytest``). Standard library only, like the rest of ``capture/``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Options passed to ``capture()``, with the types a config file may give them.
CAPTURE_OPTIONS: dict[str, tuple[type, ...]] = {
    "sample_rate": (int, float),
    "slower_than": (int, float),
    "max_snapshots": (int,),
    "max_bytes": (int,),
    "keep_result": (bool,),
    "redact": (bool, list),
    "resources": (list,),
    "compress": (bool,),
    "name": (str,),
    "tags": (list,),
    "receiver": (str,),
}
# Options only replay reads.
REPLAY_OPTIONS: dict[str, tuple[type, ...]] = {}


class OptionsError(ValueError):
    """A config file entry that is not understood; the message names it and what is accepted."""


def find_pyproject(start: Path | None = None) -> Path | None:
    here = (start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _load_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            raise OptionsError(
                f"{path}: reading [tool.perfreplay] on Python 3.10 needs `pip install tomli`"
            ) from None
    try:
        with open(path, "rb") as f:
            loaded: dict[str, Any] = tomllib.load(f)
            return loaded
    except (OSError, ValueError) as exc:
        raise OptionsError(f"{path}: cannot read it: {exc}") from None


def validate(target: str, options: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Check option names and types; a one-line OptionsError says what is accepted."""
    known = {**CAPTURE_OPTIONS, **REPLAY_OPTIONS}
    for key, value in options.items():
        types_ = known.get(key)
        if types_ is None:
            raise OptionsError(
                f"{where}: unknown option {key!r} for {target}; accepted: {', '.join(known)}"
            )
        if not isinstance(value, types_) or (isinstance(value, bool) and bool not in types_):
            names = " or ".join(t.__name__ for t in types_)
            raise OptionsError(f"{where}: {target} {key} = {value!r} is not a {names}")
    if ":" not in target:
        raise OptionsError(f"{where}: target {target!r} is not of the form 'pkg.mod:qualname'")
    return dict(options)


def configured_targets(start: Path | None = None) -> dict[str, dict[str, Any]]:
    """``{target: options}`` from the nearest pyproject.toml; empty when there is none."""
    path = find_pyproject(start)
    if path is None:
        return {}
    tool = _load_toml(path).get("tool", {}).get("perfreplay", {})
    table = tool.get("targets", {}) if isinstance(tool, dict) else {}
    if not isinstance(table, dict):
        raise OptionsError(f"{path}: [tool.perfreplay.targets] must be a table")
    where = f"{path} [tool.perfreplay.targets]"
    out = {}
    for target, options in table.items():
        if not isinstance(options, dict):
            raise OptionsError(f'{where}: "{target}" must be a table of options')
        out[target] = validate(target, options, where=where)
    return out


def capture_only(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k in CAPTURE_OPTIONS}


def apply_configured(start: Path | None = None) -> list[str]:
    """Capture the pyproject targets in this process, unless PERFREPLAY_TARGETS names some."""
    import os

    from .decorator import _STATE, TARGETS_ENV, patch_targets

    if not _STATE.active or os.environ.get(TARGETS_ENV):
        return []
    configured = configured_targets(start)
    if configured:
        patch_targets({t: capture_only(o) for t, o in configured.items()})
    return list(configured)
