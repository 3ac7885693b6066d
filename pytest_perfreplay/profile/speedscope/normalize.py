"""Normalize and focus: one frame per function, only the replayed call, ready for the app."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from .model import (
    Frame,
    SpeedscopeError,
    _append_sample,
    _document,
    _FrameTable,
    _parse,
    _Profile,
    _same_module,
    function_key,
)


def focus_on(qualname: str, module: str | None = None) -> Callable[[Frame], bool]:
    """Predicate for :func:`normalize`'s ``focus``: frames of one function.

    ``qualname`` may be ``"pkg.mod:Class.method"``. With a module, a frame also matches when its
    name is the tail of ``qualname`` (pyinstrument names a nested function ``inner`` where py-spy
    says ``outer.<locals>.inner``) and modules match up to a missing package prefix.
    """
    if module is None and ":" in qualname:
        module, qualname = qualname.split(":", 1)

    def matches(frame: Frame) -> bool:
        mod, qual = function_key(frame)
        if module is None:
            return qual == qualname
        if not _same_module(mod, module):
            return False
        return qual == qualname or (bool(qual) and qualname.endswith("." + qual))

    return matches


def _all_usable(profile: _Profile) -> bool:
    """No empty stack, and every weight positive and finite."""
    weights = set(profile.weights)
    return all(math.isfinite(w) and w > 0 for w in weights) and () not in set(profile.stacks)


def normalize(
    doc: Mapping[str, Any],
    *,
    name: str,
    exporter: str,
    focus: Callable[[Frame], bool] | None = None,
) -> dict[str, Any]:
    """A clean, valid, sampled speedscope document from any input :func:`load` accepts.

    * one frame per function (frames differing only by line are merged, see :func:`function_key`);
    * no nulls, no empty stacks, no zero/negative weights; evented profiles become sampled;
    * ``focus``: keep only samples whose stack contains a matching frame, cut so that the stack
      starts at the outermost match (drops pytest's and the harness's frames above it);
    * profiles left without samples are dropped; if none is left, :class:`SpeedscopeError`
      (speedscope cannot show an empty file, and the caller should say why it is empty);
    * ``name``, ``exporter``, ``activeProfileIndex=0`` and ``$schema`` set.
    """
    parsed = _parse(doc)
    table = _FrameTable()
    profiles: list[_Profile] = []
    focused = [focus(f) for f in parsed.frames] if focus is not None else None
    rewritten: dict[tuple[int, ...], tuple[int, ...]] = {}  # per distinct input stack
    added: dict[int, int] = {}  # input frame index -> output frame index

    def rewrite(stack: tuple[int, ...]) -> tuple[int, ...]:
        if focused is not None:
            start = next((i for i, f in enumerate(stack) if focused[f]), None)
            if start is None:
                return ()
            stack = stack[start:]
        return tuple(
            added[f] if f in added else added.setdefault(f, table.add(parsed.frames[f]))
            for f in stack
        )

    for profile in parsed.profiles:
        stacks: list[tuple[int, ...]] = []
        weights: list[float] = []
        for stack, weight in zip(profile.stacks, profile.weights, strict=True):
            if not (math.isfinite(weight) and weight > 0):
                continue
            new_stack = rewritten.get(stack)
            if new_stack is None:
                new_stack = rewritten[stack] = rewrite(stack)
            if new_stack:
                _append_sample(stacks, weights, new_stack, weight)
        if stacks:
            profiles.append(_Profile(profile.name, profile.unit, stacks, weights))
    if not profiles:
        why = "no sample matched the focus" if focus is not None else "the input has no samples"
        raise SpeedscopeError(f"nothing to write: {why}")
    return _document(name=name, exporter=exporter, frames=table.frames, profiles=profiles)
