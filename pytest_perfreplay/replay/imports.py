"""Import roots: replay finds the project's modules the way ``pythonpath`` would.

A fresh project's first replay should not need ``pythonpath = ["."]``: when a target's
module is not importable, the rootdir and its ``src/`` folder are put on ``sys.path``.
A module that already imports is left alone, so an installed package wins.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path


def importable(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        return False  # a missing parent package


def add_import_roots(target: str, rootdir: Path) -> list[str]:
    """Put rootdir (and rootdir/src) on sys.path when ``target``'s module does not import.

    Returns the folders added, so the caller can say so.
    """
    module_name = target.partition(":")[0]
    if not module_name or module_name in sys.modules or importable(module_name):
        return []
    added: list[str] = []
    for root in (rootdir / "src", rootdir):
        folder = str(root)
        if root.is_dir() and folder not in sys.path:
            sys.path.insert(0, folder)
            added.append(folder)
    if added:
        importlib.invalidate_caches()
    return added
