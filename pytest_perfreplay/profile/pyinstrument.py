"""pyinstrument in-process: the fallback when py-spy cannot attach."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def record(
    run: Callable[[], None], *, rate: int, is_async: bool, session_path: Path | None = None
) -> dict[str, Any]:
    """Profile ``run()`` in this process; return pyinstrument's session as a JSON dict.

    The session keeps every frame record: the 1% filter lives in pyinstrument's renderers, which
    are not used, and ``speedscope.load`` turns the records into a sampled profile. With
    ``session_path`` the session is also saved there (a ``.pyisession``), for pyinstrument's
    HTML view (``pyinstrument --load FILE``). Async targets get ``async_mode="enabled"`` so time
    spent awaiting is attributed to the awaiting coroutine.
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
    if session_path is not None:
        session_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        session.save(str(session_path))
    data: dict[str, Any] = session.to_json()
    return data
