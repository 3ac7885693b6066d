"""Round-trip check at capture: does the first snapshot of a target unpickle at all?

A receiver or argument whose class cannot be rebuilt from its pickle (a ``__new__`` that
needs arguments, state built lazily by a metaclass) makes every snapshot of that target
useless, and nothing would say so until replay. So the first snapshot kept of each target in
a process is unpickled once more, in a background thread, with a time bound. A failure is
logged in one line naming the class, marked in that file's header (re-signed; replay skips
such a file with the reason), and no more snapshots of that target are kept.

Only the standard library: this runs inside services.
"""

from __future__ import annotations

import atexit
import io
import logging
import pickle
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("pytest_perfreplay.capture")

TIME_BOUND = 5.0  # seconds an unpickling may take before the snapshot is written unchecked
_OWN = ("pytest_perfreplay.", "copyreg.", "builtins.", "cloudpickle.", "_codecs.")

OnFailure = Callable[[dict[str, Any]], None]  # marks the kept snapshot with the verdict


class _Recorder(pickle.Unpickler):
    """Remembers the classes and functions looked up, to name the one that failed."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.found: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        self.found.append(f"{module}.{name}")
        return super().find_class(module, name)


def unpickle_check(data: bytes) -> dict[str, Any]:
    """``{"ok": True}``, or ``{"ok": False, "class": ..., "error": ...}`` (never raises)."""
    recorder = _Recorder(data)
    try:
        recorder.load()
    except Exception as exc:
        suspects = [n for n in recorder.found if not n.startswith(_OWN)]
        culprit = _culprit(exc, suspects)
        return {"ok": False, "class": culprit, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True}


def _culprit(exc: BaseException, suspects: list[str]) -> str | None:
    text = str(exc)
    for name in reversed(suspects):  # the class the message names, else the last one loaded
        short = name.rsplit(".", 1)[-1]
        if short and short in text:
            return name
    return suspects[-1] if suspects else None


class RoundTrips:
    """Per process: which targets were checked, which are being checked, which failed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: set[str] = set()
        self.failed: dict[str, str] = {}  # target -> the one-line reason
        self.verdicts: dict[str, dict[str, Any]] = {}  # target -> the failed check's verdict
        self.checking: dict[str, list[OnFailure]] = {}  # target -> files kept meanwhile
        self.threads: list[threading.Thread] = []
        self._exit_hook = False

    def reset(self) -> None:
        with self.lock:
            self.started.clear()
            self.failed.clear()
            self.verdicts.clear()
            self.checking.clear()
            self.threads = []

    def after_fork(self) -> None:
        self.lock = threading.Lock()
        self.threads = []  # the parent's checks do not exist here; re-check in this process
        self.started.clear()
        self.checking.clear()

    def blocked(self, target: str) -> bool:
        return target in self.failed

    def claim(self, target: str) -> bool:
        """True for the first snapshot of ``target`` in this process: check it."""
        with self.lock:
            if target in self.started:
                return False
            self.started.add(target)
            return True

    def also(self, target: str, on_failure: OnFailure) -> None:
        """A later file of a target still being checked: marked too if the check fails.

        A file kept just after the check failed (its arguments were pickled before) is
        marked at once: the check has already said what it would say.
        """
        with self.lock:
            if target in self.checking:
                self.checking[target].append(on_failure)
                return
            verdict = self.verdicts.get(target)
        if verdict is not None:
            self._mark(target, on_failure, verdict)

    def submit(self, target: str, payload: bytes, on_failure: OnFailure, hint: str = "") -> None:
        """Check ``payload`` off the call path; on failure, log, block and ``on_failure``."""
        with self.lock:
            self.checking[target] = [on_failure]
        thread = threading.Thread(
            target=self._run,
            args=(target, payload, on_failure, hint),
            name=f"perfreplay-roundtrip-{target}",
            daemon=True,
        )
        with self.lock:
            self.threads.append(thread)
            if not self._exit_hook:
                self._exit_hook = True
                atexit.register(self.drain)
        thread.start()

    def _run(self, target: str, payload: bytes, on_failure: OnFailure, hint: str) -> None:
        verdict: dict[str, Any] = {}
        loader = threading.Thread(
            target=lambda: verdict.update(unpickle_check(payload)),
            name=f"perfreplay-unpickle-{target}",
            daemon=True,
        )
        loader.start()
        loader.join(TIME_BOUND)
        if loader.is_alive() or verdict.get("ok") is not False:
            with self.lock:
                self.checking.pop(target, None)
            return  # loads (or too slow to tell): nothing to say
        what = verdict.get("class") or "an object in the arguments"
        reason = (
            f"snapshots of {target} cannot replay: unpickling {what} fails ({verdict.get('error')})"
        )
        with self.lock:
            self.failed[target] = reason
            self.verdicts[target] = verdict
            markers = self.checking.pop(target, [])
        log.warning("perfreplay: %s; no more are kept for it.%s", reason, hint)
        for mark in markers:
            self._mark(target, mark, verdict)

    @staticmethod
    def _mark(target: str, mark: OnFailure, verdict: dict[str, Any]) -> None:
        try:
            mark(verdict)
        except Exception as exc:  # containment: the service never sees this
            log.warning("perfreplay: marking a snapshot of %s failed: %r", target, exc)

    def drain(self, timeout: float = TIME_BOUND + 1.0) -> None:
        """At exit: let pending checks write their snapshot (bounded)."""
        for thread in list(self.threads):
            thread.join(timeout)
