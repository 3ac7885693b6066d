"""Argument types whose pickling misbehaves, for the containment tests."""

from __future__ import annotations

import threading
import time
from typing import Any


class ExitOnPickle:
    def __reduce__(self) -> Any:
        raise SystemExit("raised by __reduce__")


class InterruptOnPickle:
    def __reduce__(self) -> Any:
        raise KeyboardInterrupt


class LockedState:
    """``__getstate__`` takes a lock: pickling it while the caller holds the lock blocks."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value = 1

    def __getstate__(self) -> dict[str, Any]:
        with self.lock:
            return {"value": self.value}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.lock = threading.Lock()
        self.value = state["value"]


class SlowReduce:
    calls = 0

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> Any:
        SlowReduce.calls += 1
        time.sleep(self.seconds)
        return (SlowReduce, (self.seconds,))


def body(x: Any) -> str:
    return "body ran"


def interrupted(x: Any) -> None:
    raise KeyboardInterrupt


def returns(x: Any) -> Any:
    return x


def with_lock_held(state: LockedState, f: Any) -> Any:
    with state.lock:
        return f(state)


def make_returner(value: Any) -> Any:
    def returner(x: Any) -> Any:
        return value

    returner.__module__ = __name__
    returner.__qualname__ = "returner"
    return returner
