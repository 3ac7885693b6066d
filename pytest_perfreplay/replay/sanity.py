"""Sanity against the captured call: a replay far from production's duration is suspect.

The header holds the duration measured in production. A replay more than ``FACTOR`` times
faster or slower than that is probably not replaying the same work (a consumed generator,
a redacted value, a placeholder) or not under the same conditions (a cold first call, a
different machine). The check says so on the item and lists what the header knows.
"""

from __future__ import annotations

from ..errors import printable
from ..snapshot.format import Header, host_name

FACTOR = 5.0


def _fmt(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def stand_ins(header: Header) -> list[dict[str, object]]:
    """What capture could not scrub and stored stand-ins for (header ``unscrubbable``)."""
    return [g for g in header.get("unscrubbable") or [] if isinstance(g, dict)]


def stand_in_note(header: Header) -> str | None:
    """A loud note for an item whose input holds stand-ins, else None."""
    gaps = stand_ins(header)
    if not gaps:
        return None
    where = ", ".join(f"{g.get('path', '?')} ({g.get('why', '?')})" for g in gaps[:5])
    return printable(
        f"STAND-IN: {len(gaps)} part(s) of this input are not production's: capture could "
        f"not scrub them and stored stand-ins instead of their values: {where}"
    )


def sanity_note(header: Header, estimate: float, *, code_changed: bool = False) -> str | None:
    """A one-paragraph warning when the replay is over FACTOR away from production, else None.

    With ``code_changed`` (the target's code differs from the captured one) the rewrite is
    named first: it is the expected reason, and strict mode does not fail for it.
    """
    captured = header.duration
    if not captured or captured <= 0 or estimate <= 0:
        return None
    ratio = captured / estimate
    if 1 / FACTOR <= ratio <= FACTOR:
        return None
    faster = ratio > 1
    how = f"{ratio:.3g}x faster" if faster else f"{1 / ratio:.3g}x slower"
    reasons: list[str] = []
    if code_changed:
        reasons.append("the target's code changed since capture, which is what a rewrite does")
    held = [p for p in header.placeholders if not p.get("auto")]
    if held:
        names = ", ".join(f"{p.get('name')} ({p.get('type')})" for p in held)
        reasons.append(
            f"live resources were replaced by fixtures ({names}): a consumed generator or "
            "file, or a fake resource, does less work"
        )
    redactions = header.get("redactions") or []
    if redactions:
        paths = ", ".join(str(r.get("path", "?")) for r in redactions[:5] if isinstance(r, dict))
        reasons.append(
            f"{len(redactions)} value(s) were redacted at capture ({paths}): the call sees "
            "'<redacted>' instead of real data"
        )
    gaps = stand_ins(header)
    if gaps:
        paths = ", ".join(str(g.get("path", "?")) for g in gaps[:5])
        reasons.append(
            f"{len(gaps)} part(s) of the input are stand-ins for what capture could not "
            f"scrub ({paths}): the call does not see production's data there"
        )
    if faster:
        reasons.append(
            "production may have timed a cold call (first use: imports, caches, "
            "connections), which replay warms up away"
        )
    host = header.get("host")
    if isinstance(host, str) and host and host != host_name():
        reasons.append(f"it was captured on another machine ({host})")
    elif not faster:
        reasons.append("this machine may be loaded, or the code got slower since capture")
    return (
        f"replay is {how} than the captured call ({_fmt(estimate)} here, {_fmt(captured)} "
        f"in production, more than {FACTOR:g}x apart): it may not replay the same work. "
        "Possible causes: " + "; ".join(reasons) + ". --perf-replay-strict fails such items."
    )
