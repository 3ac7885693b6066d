"""Capture by dotted name: ``PERFREPLAY_TARGETS="pkg.mod:func,pkg.mod:Class.method"``.

Targets in modules already imported are patched at once; the others are patched as their
module loads, through a meta-path finder that wraps the real loader. The wrapping itself is
passed in (``wrap``), so this module knows nothing of the decorator.
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.machinery
import inspect
import json
import logging
import sys
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

log = logging.getLogger("pytest_perfreplay.capture")

# wrap(function, options) -> the wrapped function; raises TypeError for what can't be wrapped.
Wrap = Callable[[Any, Mapping[str, Any]], Any]

_PENDING: dict[str, list[tuple[str, Mapping[str, Any], Wrap]]] = {}


def parse_env(raw: str) -> list[str] | dict[str, dict[str, Any]]:
    """``PERFREPLAY_TARGETS``: a comma list, or a JSON object ``{target: {option: value}}``."""
    raw = raw.strip()
    if raw.startswith("{"):
        try:
            loaded = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, dict) for v in loaded.values()):
            raise ValueError('the JSON form is {"pkg.mod:func": {"option": value, ...}, ...}')
        return {str(k): dict(v) for k, v in loaded.items()}
    return [s.strip() for s in raw.split(",") if s.strip()]


def parse_targets(
    targets: Iterable[str] | Mapping[str, Mapping[str, Any]],
) -> list[tuple[str, str, Mapping[str, Any]]]:
    """``(module, qualname, options)`` for each target; a ValueError names a malformed one."""
    items: list[tuple[str, Mapping[str, Any]]]
    if isinstance(targets, Mapping):
        items = [(t, dict(o)) for t, o in targets.items()]
    else:
        items = [(t, {}) for t in targets]
    parsed = []
    for spec, options in items:
        module_name, sep, qualname = spec.strip().partition(":")
        if not sep or not module_name or not qualname:
            raise ValueError(
                f"capture target {spec!r} is not of the form 'package.module:qualname' "
                "(e.g. 'shop.pricing:Cart.total')"
            )
        parsed.append((module_name, qualname, options))
    return parsed


def patch_targets(
    targets: Iterable[str] | Mapping[str, Mapping[str, Any]], wrap: Wrap
) -> list[str]:
    """Wrap functions by dotted name. Modules not imported yet are patched on import.

    Returns the targets patched right now. Code that did ``from mod import func`` before
    the patch keeps the unwrapped function: set the variable before start-up.
    """
    done = []
    for module_name, qualname, options in parse_targets(targets):
        module = sys.modules.get(module_name)
        if module is not None and not _initializing(module):
            if _patch_one(module, qualname, options, wrap):
                done.append(f"{module_name}:{qualname}")
        else:
            _PENDING.setdefault(module_name, []).append((qualname, options, wrap))
            _install_finder()
    return done


def clear_pending() -> None:
    _PENDING.clear()


def finder_spec(
    fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
) -> importlib.machinery.ModuleSpec | None:
    """The spec of a pending target module, with the patching loader (for the boot hook)."""
    return _FINDER.find_spec(fullname, path, target)


def _report_unimported() -> None:
    # Loud at exit: a typo in a module name would otherwise capture nothing, silently.
    for module_name, pending in sorted(_PENDING.items()):
        names = ", ".join(f"{module_name}:{q}" for q, _, _ in pending)
        log.warning(
            "perfreplay: capture target module %r was never imported by this program; "
            "nothing was captured for %s",
            module_name,
            names,
        )


def _initializing(module: types.ModuleType) -> bool:
    spec = getattr(module, "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _patch_one(
    module: types.ModuleType, qualname: str, options: Mapping[str, Any], wrap: Wrap
) -> bool:
    *owners, attr = qualname.split(".")
    owner: Any = module
    try:
        for part in owners:
            owner = getattr(owner, part)
        original = inspect.getattr_static(owner, attr)
    except AttributeError:
        log.warning(
            "perfreplay: capture target %s:%s not found (unknown name); nothing is captured for it",
            module.__name__,
            qualname,
        )
        return False
    try:
        wrapped = wrap(original, options)
    except TypeError as exc:
        log.warning("perfreplay: cannot capture %s:%s: %s", module.__name__, qualname, exc)
        return False
    if wrapped is not original:
        setattr(owner, attr, wrapped)
    return True


def _apply_pending(module: types.ModuleType) -> None:
    for qualname, options, wrap in _PENDING.pop(module.__name__, []):
        try:
            _patch_one(module, qualname, options, wrap)
        except Exception as exc:
            log.warning("perfreplay: cannot capture %s:%s: %r", module.__name__, qualname, exc)


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then patches the module's capture targets."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        create = getattr(self._inner, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: types.ModuleType) -> None:
        self._inner.exec_module(module)
        _apply_pending(module)

    def __getattr__(self, name: str) -> Any:  # get_data, get_source, resource readers...
        return getattr(self._inner, name)


class _TargetFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _PENDING:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


_FINDER = _TargetFinder()


_EXIT_REPORT: list[bool] = []


def _install_finder() -> None:
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    if not _EXIT_REPORT:
        _EXIT_REPORT.append(True)
        atexit.register(_report_unimported)
