"""Loaded at interpreter start-up under ``perfreplay run``: apply PERFREPLAY_TARGETS.

Nothing of ``pytest_perfreplay`` is imported here: a program run this way must behave as
without it, and pytest warns (an error under ``-W error``) when a plugin package was
imported before its assertion rewriting is set up. A meta-path finder waits for the first
target module to be imported, and only then imports ``pytest_perfreplay.capture``, which
patches the targets as their modules load. Any ``sitecustomize`` this one shadows is
imported afterwards, so nothing else changes.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.abc
import json
import os
import sys
from typing import Any


def _target_modules(raw: str) -> set[str]:
    """Module names in PERFREPLAY_TARGETS: a comma list, or a JSON object of options."""
    raw = raw.strip()
    names: list[str]
    if raw.startswith("{"):
        try:
            names = [str(k) for k in json.loads(raw)]
        except ValueError:
            names = []
    else:
        names = raw.split(",")
    return {n.strip().partition(":")[0] for n in names if ":" in n}


class _Deferred(importlib.abc.MetaPathFinder):
    """Hands over to the capture package when the first target module is imported."""

    def __init__(self, modules: set[str]) -> None:
        self.modules = modules
        self.active = False

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in self.modules or self.active:
            return None
        return _activate(self, fullname, path, target)


def _activate(finder: _Deferred, fullname: str | None, path: Any, target: Any) -> Any:
    finder.active = True
    if finder in sys.meta_path:
        sys.meta_path.remove(finder)
    try:
        from pytest_perfreplay.capture import targets  # patches PERFREPLAY_TARGETS on import
    except Exception as exc:  # start-up must never fail because of capture
        print(f"perfreplay: capture by name not set up: {exc!r}", file=sys.stderr)
        return None
    if fullname is None:
        return None
    return targets.finder_spec(fullname, path, target)


def _report_unimported(finder: _Deferred) -> None:
    if finder.active or "pytest_perfreplay.capture.targets" in sys.modules:
        return  # the capture package was loaded (by us or the program): it reports these
    for name in sorted(finder.modules):
        if name not in sys.modules:
            print(
                f"perfreplay: capture target module {name!r} was never imported by this "
                "program; nothing was captured for it",
                file=sys.stderr,
            )


def _install(raw: str) -> None:
    modules = _target_modules(raw)
    if not modules:
        return
    finder = _Deferred(modules)
    if modules & set(sys.modules):
        _activate(finder, None, None, None)
        return
    sys.meta_path.insert(0, finder)
    atexit.register(_report_unimported, finder)


def _chain_to_shadowed() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    me = sys.modules.pop("sitecustomize", None)
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    try:
        importlib.import_module("sitecustomize")
    except ImportError:
        pass
    finally:
        sys.path[:] = saved
        if me is not None and "sitecustomize" not in sys.modules:
            sys.modules["sitecustomize"] = me


if os.environ.get("PERFREPLAY_TARGETS"):
    _install(os.environ["PERFREPLAY_TARGETS"])
_chain_to_shadowed()
