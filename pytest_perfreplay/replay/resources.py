"""Fresh live resources every round, and the ``perf_replay_setup`` fixture.

A placeholder bound to a fixture is re-created before every unpickling, outside the
timer: a generator or an open file is used up by one call, and a benchmark that reuses it
times an empty loop. A function-scoped fixture is re-run for each round (its teardown runs
before the next one); a fixture named ``<name>_factory`` returning a zero-argument
function is called instead when present. A fixture of wider scope cannot be re-created:
that is fine for a connection, and refused for a resource that one call uses up.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from ..errors import PerfReplayError

Made = tuple[Any, Callable[[], None] | None]  # a value and its teardown
_CONSUMABLE = ("builtins.generator", "builtins.coroutine", "builtins.async_generator")


def consumable(type_name: str) -> bool:
    """Whether one call may use the resource up (iterators and files)."""
    return type_name in _CONSUMABLE or type_name.startswith(("_io.", "io.", "tempfile."))


class FreshResources(Mapping[str, Any]):
    """The bindings for one round; :meth:`renew` makes the next round's values."""

    def __init__(self, makers: Mapping[str, Callable[[], Made]]) -> None:
        self._makers = dict(makers)
        self._values: dict[str, Any] = {}
        self._teardowns: list[Callable[[], None]] = []

    def renew(self) -> None:
        self.close()
        for name, make in self._makers.items():
            value, teardown = make()
            self._values[name] = value
            if teardown is not None:
                self._teardowns.append(teardown)

    def close(self) -> None:
        teardowns, self._teardowns = self._teardowns, []
        for teardown in reversed(teardowns):
            teardown()
        self._values.clear()

    def __getitem__(self, name: str) -> Any:
        if not self._values:
            self.renew()
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)


def _fixture_def(request: pytest.FixtureRequest, name: str) -> Any:
    manager = getattr(request, "_fixturemanager", None)
    getdefs = getattr(manager, "getfixturedefs", None)
    if getdefs is None:  # pragma: no cover - a pytest without this internal
        return None
    try:
        defs: Sequence[Any] | None = getdefs(name, request.node)
    except Exception:  # pragma: no cover - internal API drift
        return None
    return defs[-1] if defs else None


def _rerun(request: pytest.FixtureRequest, fixturedef: Any) -> Callable[[], Made]:
    """Call a function-scoped fixture's function again, with its own fixtures resolved."""
    func = fixturedef.func
    argnames = tuple(getattr(fixturedef, "argnames", ()))

    def make() -> Made:
        kwargs = {a: request if a == "request" else request.getfixturevalue(a) for a in argnames}
        if inspect.isgeneratorfunction(func):
            gen = func(**kwargs)
            value = next(gen)

            def teardown() -> None:
                with contextlib.suppress(StopIteration):
                    next(gen)

            return value, teardown
        return func(**kwargs), None

    return make


def _calling(factory: Callable[[], Any]) -> Callable[[], Made]:
    return lambda: (factory(), None)


def _constant(value: Any) -> Callable[[], Made]:
    return lambda: (value, None)


def fresh_resources(
    request: pytest.FixtureRequest, placeholders: Sequence[Mapping[str, Any]]
) -> FreshResources | None:
    """Makers for every fixture-bound placeholder, or None when one has no fixture at all."""
    makers: dict[str, Callable[[], Made]] = {}
    for ph in placeholders:
        if ph.get("auto"):
            continue  # rebuilt by the unpickling hook itself (e.g. a fresh lock)
        name = str(ph.get("name", ""))
        type_name = str(ph.get("type", ""))
        try:
            factory = request.getfixturevalue(f"{name}_factory")
        except pytest.FixtureLookupError:
            factory = None
        if factory is not None:
            if not callable(factory):
                raise PerfReplayError(
                    f"fixture {name}_factory must return a function that creates a fresh "
                    f"{name}; it returned a {type(factory).__name__}"
                )
            makers[name] = _calling(factory)
            continue
        fixturedef = _fixture_def(request, name)
        if fixturedef is None:
            return None  # the caller names the fixture to write
        scope = str(getattr(getattr(fixturedef, "_scope", None), "value", fixturedef.scope))
        if scope == "function":
            makers[name] = _rerun(request, fixturedef)
            continue
        if consumable(type_name):
            raise PerfReplayError(
                f"cannot give every round a fresh {name!r} ({type_name}): its fixture is "
                f"{scope}-scoped, and one call uses such a resource up, so later rounds would "
                f"time an empty call. Make the fixture function-scoped, or add a fixture "
                f"`{name}_factory` that returns a function creating a fresh one."
            )
        shared = request.getfixturevalue(name)
        makers[name] = _constant(shared)
    return FreshResources(makers)


def run_setup(request: pytest.FixtureRequest) -> bool:
    """Run the ``perf_replay_setup`` fixture, if defined, before anything is unpickled."""
    try:
        request.getfixturevalue("perf_replay_setup")
    except pytest.FixtureLookupError:
        return False
    return True
