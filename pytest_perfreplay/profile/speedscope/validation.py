"""Validation against the speedscope file format: what the app and the official schema reject."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any, TypeGuard

SCHEMA_URL = "https://www.speedscope.app/file-format-schema.json"
UNITS = ("bytes", "microseconds", "milliseconds", "nanoseconds", "none", "seconds")
_MAX_SAME_PROBLEM = 3  # validate() reports this many of one kind, then counts the rest


# --------------------------------------------------------------------------------------------
# validation


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


class _Problems:
    """Collects messages; caps repeats of one kind so a 100k-sample file stays readable."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.fatal = False
        self._seen: dict[str, int] = {}

    def add(self, kind: str, message: str, *, fatal: bool) -> None:
        self.fatal = self.fatal or fatal
        n = self._seen.get(kind, 0) + 1
        self._seen[kind] = n
        if n <= _MAX_SAME_PROBLEM:
            self.messages.append(message)

    def finish(self) -> list[str]:
        extra = [
            f"... and {n - _MAX_SAME_PROBLEM} more like {kind!r}"
            for kind, n in self._seen.items()
            if n > _MAX_SAME_PROBLEM
        ]
        return self.messages + extra


def _check_document(doc: object) -> _Problems:
    """All problems in a speedscope document. ``fatal`` means it cannot be read at all; the rest
    (nulls, zero weights, missing names...) are things :func:`normalize` repairs."""
    out = _Problems()
    if not isinstance(doc, Mapping):
        out.add("document", f"document: expected a JSON object, got {_type_name(doc)}", fatal=True)
        return out
    if "$schema" not in doc:
        out.add("$schema", f"$schema: missing (must be {SCHEMA_URL!r})", fatal=False)
    elif doc["$schema"] != SCHEMA_URL:
        out.add("$schema", f"$schema: must be {SCHEMA_URL!r}, got {doc['$schema']!r}", fatal=False)
    for key in ("name", "exporter"):
        if key in doc and not isinstance(doc[key], str):
            out.add(key, f"{key}: must be a string, got {_type_name(doc[key])}", fatal=False)

    shared = doc.get("shared")
    frames = shared.get("frames") if isinstance(shared, Mapping) else None
    if not isinstance(shared, Mapping):
        out.add("shared", f"shared: must be an object, got {_type_name(shared)}", fatal=True)
        n_frames = 0
    elif not isinstance(frames, list):
        out.add("frames", f"shared.frames: must be an array, got {_type_name(frames)}", fatal=True)
        n_frames = 0
    else:
        n_frames = len(frames)
        for i, frame in enumerate(frames):
            _check_frame(out, f"shared.frames[{i}]", frame)

    profiles = doc.get("profiles")
    if not isinstance(profiles, list):
        out.add("profiles", f"profiles: must be an array, got {_type_name(profiles)}", fatal=True)
        profiles = []
    elif not profiles:
        out.add(
            "no-profiles",
            "profiles: empty (speedscope alerts on a file with no profiles)",
            fatal=False,
        )
    if "activeProfileIndex" in doc:
        index = doc["activeProfileIndex"]
        if not (_is_number(index) and float(index).is_integer()):
            out.add("active", f"activeProfileIndex: must be an integer, got {index!r}", fatal=False)
        elif profiles and not 0 <= int(index) < len(profiles):
            out.add(
                "active",
                f"activeProfileIndex: {index} out of range for {len(profiles)} profiles",
                fatal=False,
            )
    for i, profile in enumerate(profiles):
        _check_profile(out, f"profiles[{i}]", profile, n_frames)
    return out


def _check_frame(out: _Problems, where: str, frame: object) -> None:
    if not isinstance(frame, Mapping):
        out.add("frame", f"{where}: must be an object, got {_type_name(frame)}", fatal=True)
        return
    if not isinstance(frame.get("name"), str):
        out.add(
            "frame.name",
            f"{where}.name: must be a string, got {_type_name(frame.get('name'))}",
            fatal=True,
        )
    if "file" in frame and not isinstance(frame["file"], str):
        out.add(
            "frame.file",
            f"{where}.file: must be a string, got {_type_name(frame['file'])}",
            fatal=False,
        )
    for key in ("line", "col"):
        if key in frame and not _is_number(frame[key]):
            out.add(
                f"frame.{key}",
                f"{where}.{key}: must be a number, got {_type_name(frame[key])}",
                fatal=False,
            )


def _frame_index_ok(value: object, n_frames: int) -> TypeGuard[int | float]:
    return _is_number(value) and float(value).is_integer() and 0 <= value < n_frames


def _check_profile(out: _Problems, where: str, profile: object, n_frames: int) -> None:
    if not isinstance(profile, Mapping):
        out.add("profile", f"{where}: must be an object, got {_type_name(profile)}", fatal=True)
        return
    kind = profile.get("type")
    if kind not in ("sampled", "evented"):
        out.add(
            "profile.type",
            f"{where}.type: must be 'sampled' or 'evented', got {kind!r}",
            fatal=True,
        )
        return
    if not isinstance(profile.get("name"), str):
        out.add(
            "profile.name",
            f"{where}.name: must be a string, got {_type_name(profile.get('name'))}",
            fatal=False,
        )
    if profile.get("unit") not in UNITS:
        out.add(
            "profile.unit",
            f"{where}.unit: must be one of {', '.join(UNITS)}, got {profile.get('unit')!r}",
            fatal=True,
        )
    start, end = profile.get("startValue"), profile.get("endValue")
    for key, value in (("startValue", start), ("endValue", end)):
        if not _is_number(value):
            out.add(
                f"profile.{key}", f"{where}.{key}: must be a number, got {value!r}", fatal=False
            )
    bounds: tuple[float, float] | None = None
    if _is_number(start) and _is_number(end):
        bounds = (float(start), float(end))
        if start > end:
            out.add("profile.bounds", f"{where}: startValue {start} > endValue {end}", fatal=False)
    if kind == "sampled":
        _check_sampled(out, where, profile, n_frames)
    else:
        _check_evented(out, where, profile, n_frames, bounds)


def _check_sampled(out: _Problems, where: str, profile: Mapping[str, Any], n_frames: int) -> None:
    samples, weights = profile.get("samples"), profile.get("weights")
    if not isinstance(samples, list):
        out.add(
            "samples", f"{where}.samples: must be an array, got {_type_name(samples)}", fatal=True
        )
        samples = None
    if not isinstance(weights, list):
        out.add(
            "weights", f"{where}.weights: must be an array, got {_type_name(weights)}", fatal=True
        )
        weights = None
    if samples is not None and weights is not None and len(samples) != len(weights):
        out.add(
            "lengths",
            f"{where}: samples has {len(samples)} entries but weights has "
            f"{len(weights)} (speedscope rejects the file)",
            fatal=True,
        )
    if samples is not None and weights is not None and _sampled_ok(samples, weights, n_frames):
        return  # the common case, checked at C speed; the loops below find what is wrong
    for i, stack in enumerate(samples or []):
        if not isinstance(stack, list):
            out.add(
                "stack",
                f"{where}.samples[{i}]: must be an array, got {_type_name(stack)}",
                fatal=True,
            )
            continue
        for j, index in enumerate(stack):
            if not _frame_index_ok(index, n_frames):
                out.add(
                    "stack.frame",
                    f"{where}.samples[{i}][{j}]: {index!r} is not a frame "
                    f"index (0..{n_frames - 1})",
                    fatal=True,
                )
    for i, weight in enumerate(weights or []):
        if not isinstance(weight, int | float) or isinstance(weight, bool):
            out.add(
                "weight.type",
                f"{where}.weights[{i}]: must be a number, got {_type_name(weight)}",
                fatal=True,
            )
        elif not (math.isfinite(weight) and weight > 0):
            out.add(
                "weight.value", f"{where}.weights[{i}]: must be > 0, got {weight!r}", fatal=False
            )


def _sampled_ok(samples: list[Any], weights: list[Any], n_frames: int) -> bool:
    """True when every stack is a list of in-range integer frame indexes and every weight a
    positive finite number; distinct values are few, so they are checked once each."""
    if set(map(type, samples)) - {list}:
        return False
    # parse_json shares one list per distinct stack: check each once
    distinct = list({id(s): s for s in samples}.values())
    flat = itertools.chain.from_iterable
    kinds = set(map(type, flat(distinct)))
    if kinds - {int, float}:
        return False
    values = set(flat(distinct))
    if values and not (min(values) >= 0 and max(values) < n_frames):
        return False
    if float in kinds and not all(float(v).is_integer() for v in values):
        return False
    if set(map(type, weights)) - {int, float}:
        return False
    return all(math.isfinite(w) and w > 0 for w in set(weights))


def _check_evented(
    out: _Problems,
    where: str,
    profile: Mapping[str, Any],
    n_frames: int,
    bounds: tuple[float, float] | None,
) -> None:
    events = profile.get("events")
    if not isinstance(events, list):
        out.add("events", f"{where}.events: must be an array, got {_type_name(events)}", fatal=True)
        return
    stack: list[int] = []
    last: float | None = None
    for i, event in enumerate(events):
        here = f"{where}.events[{i}]"
        if not isinstance(event, Mapping):
            out.add("event", f"{here}: must be an object, got {_type_name(event)}", fatal=True)
            continue
        kind, at, frame = event.get("type"), event.get("at"), event.get("frame")
        if kind not in ("O", "C"):
            out.add("event.type", f"{here}.type: must be 'O' or 'C', got {kind!r}", fatal=True)
            continue
        if not _frame_index_ok(frame, n_frames):
            out.add(
                "event.frame",
                f"{here}.frame: {frame!r} is not a frame index (0..{n_frames - 1})",
                fatal=True,
            )
            continue
        if not _is_number(at):
            out.add("event.at", f"{here}.at: must be a number, got {at!r}", fatal=True)
            continue
        if last is not None and at < last:
            out.add(
                "event.order",
                f"{here}.at: {at} is before the previous event ({last}); "
                "events must be in non-decreasing order",
                fatal=True,
            )
        last = at if last is None else max(last, at)
        if bounds is not None and not bounds[0] <= at <= bounds[1]:
            out.add(
                "event.bounds",
                f"{here}.at: {at} outside [startValue, endValue] = [{bounds[0]}, {bounds[1]}]",
                fatal=False,
            )
        index = int(frame)
        if kind == "O":
            stack.append(index)
        elif not stack:
            out.add("event.close", f"{here}: closes frame {index} but no frame is open", fatal=True)
        elif stack[-1] != index:
            out.add(
                "event.nesting",
                f"{here}: closes frame {index} while frame {stack[-1]} is "
                "the innermost open frame (events must nest)",
                fatal=True,
            )
        else:
            stack.pop()
    if stack:
        out.add(
            "event.unclosed",
            f"{where}.events: {len(stack)} frame(s) opened but never "
            f"closed (innermost: {stack[-1]})",
            fatal=True,
        )


def validate(doc: object) -> list[str]:
    """Problems that would fail the official schema or speedscope's importer; [] means valid.

    Checks the schema's required fields and types (no nulls where a string or number is
    required, ``activeProfileIndex`` an in-range integer when present, frame indexes in range)
    and the app's import rules: at least one profile, ``samples``/``weights`` of equal length,
    weights > 0, and for evented profiles ``at`` non-decreasing and within
    ``[startValue, endValue]`` with open/close events balanced and properly nested.
    """
    return _check_document(doc).finish()
