"""pyinstrument in-process: the fallback when py-spy cannot attach."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def record(run: Callable[[], None], *, rate: int, is_async: bool) -> dict[str, Any]:
    """Profile ``run()`` in this process; return pyinstrument's session as a JSON dict.

    The session keeps every frame record (no 1% filter is applied at this level), and
    ``speedscope.load`` turns it into a sampled profile.
    """
    from pyinstrument import Profiler

    profiler = Profiler(interval=1.0 / rate, async_mode="enabled" if is_async else "disabled")
    profiler.start()
    try:
        run()
    finally:
        profiler.stop()
    session = profiler.last_session
    if session is None:
        raise RuntimeError("pyinstrument recorded no session")
    data: dict[str, Any] = session.to_json()
    return data
