"""Loaded at interpreter start-up under ``perfreplay run``: apply PERFREPLAY_TARGETS.

Importing ``pytest_perfreplay.capture`` with capture enabled patches the targets named in
``PERFREPLAY_TARGETS`` (modules not imported yet are patched as they load). Any
``sitecustomize`` this one shadows is imported afterwards, so nothing else changes.
"""

from __future__ import annotations

import importlib
import os
import sys


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
    try:
        import pytest_perfreplay.capture  # noqa: F401  (patches the targets on import)
    except Exception as exc:  # start-up must never fail because of capture
        print(f"perfreplay: capture by name not set up: {exc!r}", file=sys.stderr)
_chain_to_shadowed()
