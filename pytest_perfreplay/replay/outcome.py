"""The captured call's outcome kind (returned or raised), checked without a kept result.

Every snapshot written since the header grew an ``outcome`` field says whether the call
returned or raised, and which exception type; older files say nothing and are replayed as
before (a raising replay fails the item).
"""

from __future__ import annotations

from ..snapshot.format import Header
from .call import CallOutcome
from .results import ResultMismatch

SETUP_HINT = (
    "If the class builds state lazily on its first construction (pygments lexers build "
    "their token tables that way), unpickling skips that step: define a "
    "`perf_replay_setup` fixture in the rootdir conftest.py that constructs one instance "
    "once, e.g.\n\n"
    "    @pytest.fixture\n"
    "    def perf_replay_setup():\n"
    "        PythonLexer()  # builds PythonLexer._tokens before the arguments are unpickled"
)


def setup_hint(exc: BaseException | None) -> str:
    """The pointer to ``perf_replay_setup`` when an AttributeError may come from lazy state."""
    while exc is not None:
        if isinstance(exc, AttributeError):
            return "\n" + SETUP_HINT
        exc = exc.__cause__
    return ""


def type_name(exc: BaseException) -> str:
    t = type(exc)
    return f"{t.__module__}.{t.__qualname__}"


def captured_outcome(header: Header) -> tuple[str, str | None] | None:
    """``("return", None)``, ``("raise", "pkg.Error")``, or None when not recorded."""
    kind = header.get("outcome")
    if kind == "return":
        return "return", None
    if kind == "raise":
        raised = header.get("raised")
        return "raise", raised if isinstance(raised, str) else None
    return None


def check_outcome(header: Header, first: CallOutcome) -> str:
    """Compare the replayed outcome's kind with the captured one; return the check's text.

    Raises ResultMismatch when they differ. Without a recorded outcome, a raising replay
    is re-raised as before, since nothing says production raised too.
    """
    captured = captured_outcome(header)
    if captured is None:
        if not first.ok:
            raise first.value
        return "returned (the captured outcome was not recorded)"
    kind, raised = captured
    if kind == "raise":
        if first.ok:
            raise ResultMismatch(
                f"captured call raised {raised}; the replayed call returned instead"
            )
        got = type_name(first.value)
        if raised is not None and got != raised:
            raise ResultMismatch(
                f"captured call raised {raised}; the replayed call raised {got}: {first.value}"
            )
        return f"raised {got}, as captured"
    if not first.ok:
        exc = first.value
        message = f"captured call returned; the replayed call raised {type_name(exc)}: {exc}"
        raise ResultMismatch(message + setup_hint(exc))
    return "returned, as captured"


def cannot_replay(header: Header | None) -> str | None:
    """Why capture's round-trip check found this snapshot unloadable, or None."""
    verdict = header.get("roundtrip") if header is not None else None
    if not isinstance(verdict, dict) or verdict.get("ok") is not False:
        return None
    what = verdict.get("class") or "an object in its arguments"
    return (
        f"cannot replay: at capture, unpickling {what} failed ({verdict.get('error')}); "
        "for a method whose receiver does not survive pickling, capture with "
        'receiver = "NAME" and define the fixture NAME'
    )
