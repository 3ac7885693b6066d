"""Merge several profiles into one document (one profile each, or summed per thread)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .model import (
    ALL_THREADS,
    SpeedscopeError,
    _append_sample,
    _common_unit,
    _document,
    _FrameTable,
    _parse,
    _Profile,
    _scale,
)
from .normalize import _all_usable


def merge(docs: Sequence[Mapping[str, Any]], *, name: str, exporter: str) -> dict[str, Any]:
    """Threads and runs in one file.

    Profile 0 is ``"all threads"``, the concatenation of every input profile (always present, so
    the app opens on the whole picture and the file's total is profile 0's total); every input
    profile follows, named ``"<run> / <profile>"`` when there is more than one input. Frames are
    de-duplicated by function_key; time units are converted to a common one. Total weight is
    preserved (non-positive weights are dropped). An input that is itself a merge contributes
    its own threads, not its "all threads" copy, so nothing is counted twice.
    """
    if not docs:
        raise SpeedscopeError("merge: no documents given")
    parsed = [_parse(d) for d in docs]
    unit = _common_unit(p.unit for doc in parsed for p in doc.profiles)
    names = [doc.name for doc in parsed]
    distinct_names = len(set(names)) == len(names) and all(names)
    table = _FrameTable()
    everything = _Profile(ALL_THREADS, unit, [], [])
    kept: list[_Profile] = []
    for run, doc in enumerate(parsed):
        label = doc.name if distinct_names else f"run {run + 1}"
        rewritten: dict[tuple[int, ...], tuple[int, ...]] = {}  # per distinct input stack
        added: dict[int, int] = {}  # input frame index -> output frame index
        parts = [p for p in doc.profiles if p.name != ALL_THREADS] or doc.profiles
        for profile in parts:
            factor = _scale(profile.unit, unit)
            out = _Profile(
                f"{label} / {profile.name}" if len(parsed) > 1 else profile.name, unit, [], []
            )
            for stack in dict.fromkeys(profile.stacks):  # distinct, in first-seen order
                if stack not in rewritten:
                    rewritten[stack] = tuple(
                        added[f] if f in added else added.setdefault(f, table.add(doc.frames[f]))
                        for f in stack
                    )
            if _all_usable(profile):  # the common case, without a Python loop per sample
                out.stacks = [rewritten[st] for st in profile.stacks]
                out.weights = (
                    list(profile.weights)
                    if factor == 1.0
                    else [w * factor for w in profile.weights]
                )
            else:
                for stack, weight in zip(profile.stacks, profile.weights, strict=True):
                    if stack and math.isfinite(weight) and weight > 0:
                        _append_sample(out.stacks, out.weights, rewritten[stack], weight * factor)
            if out.stacks:
                kept.append(out)
                everything.stacks.extend(out.stacks)
                everything.weights.extend(out.weights)
    if not kept:
        raise SpeedscopeError("merge: the inputs have no samples")
    return _document(
        name=name, exporter=exporter, frames=table.frames, profiles=[everything, *kept]
    )
