"""Functions the capture tests decorate. Importable, so cloudpickle keeps them by reference."""

from __future__ import annotations

import dataclasses
import time
from collections import namedtuple
from typing import Any

SECRET_TOKEN = "tok-GLOBAL-never-on-disk-1f2e3d"

Creds = namedtuple("Creds", ["user", "password"])


@dataclasses.dataclass
class Client:
    base_url: str
    headers: dict[str, str]


@dataclasses.dataclass(frozen=True)
class FrozenConfig:
    name: str
    api_key: str


class Holder:
    def __init__(self, session_cookie: str, payload: list[int]) -> None:
        self.session_cookie = session_cookie
        self.payload = payload


class Secret:
    """A user type redacted by type."""

    def __init__(self, value: str) -> None:
        self.value = value


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


clock: Any = None  # set by the fake_clock fixture


def takes(seconds: float) -> None:
    """A call that lasts exactly ``seconds`` on the fake clock (see fixtures.fake_clock)."""
    clock.advance(seconds)


def sort_and_truncate(xs: list[int]) -> list[int]:
    xs.sort()
    del xs[1:]
    return xs


def echo(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def login(user: str, password: str) -> str:
    return f"{user}:{len(password)}"


def varied(i: int, payload: bytes) -> int:
    # Durations that vary with i, so keep-slowest has something to choose from.
    busy(((i * 7919) % 13) * 1e-5)
    return len(payload) + i


def make_closure() -> Any:
    def uses_global(x: int) -> int:
        return x + len(SECRET_TOKEN)

    return uses_global
