"""Speedscope toolkit: read, validate, normalize, focus, merge, summarize and diff profiles.

Everything here is a pure function over JSON-like dicts: callers do the file reading and writing,
so the whole toolkit can be tested exactly (DESIGN.md §3, §5).

Input formats accepted by :func:`load`:

* speedscope files (``sampled`` and/or ``evented`` profiles) as written by py-spy 0.4,
  pyinstrument's speedscope renderer, or speedscope's own export;
* pyinstrument sessions (``Session.to_json()``): either the ``frame_records`` list that
  pyinstrument >= 4 writes, or a frame tree (``root_frame`` / ``{"identifier", "time",
  "children"}``) whose identifiers are ``"function\\x00file\\x00line"``.

Every document produced here (:func:`normalize`, :func:`merge`, :attr:`Diff.document`) passes the
official speedscope JSON schema and imports cleanly in the speedscope app: no nulls, no empty
stacks, only positive weights, ``activeProfileIndex`` set, at least one sample per profile.
"""

from __future__ import annotations

from .diff import Diff, DiffRow, diff
from .merge import merge
from .model import (
    Frame,
    SpeedscopeError,
    calls_in_name,
    dump_chunks,
    function_key,
    is_library_frame,
    load,
    module_from_path,
    parse_json,
)
from .normalize import focus_on, normalize
from .summary import Summary, SummaryRow, format_weight, summarize
from .validation import SCHEMA_URL, UNITS, validate

__all__ = [
    "SCHEMA_URL",
    "UNITS",
    "Diff",
    "DiffRow",
    "Frame",
    "SpeedscopeError",
    "Summary",
    "SummaryRow",
    "calls_in_name",
    "diff",
    "dump_chunks",
    "focus_on",
    "format_weight",
    "function_key",
    "is_library_frame",
    "load",
    "parse_json",
    "merge",
    "module_from_path",
    "normalize",
    "summarize",
    "validate",
]
