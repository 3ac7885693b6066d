"""Round-trip check at capture: does the first snapshot of a target unpickle at all?

A receiver or argument whose class cannot be rebuilt from its pickle (a ``__new__`` that
needs arguments, state built lazily by a metaclass) makes every snapshot of that target
useless, and nothing would say so until replay. So the first snapshot kept of each target in
a process is unpickled once more, in a background thread, with a time bound. A failure is
logged in one line naming the class, marked in that file's header (re-signed; replay skips
such a file with the reason), and no more snapshots of that target are kept.

A remote store cannot rewrite an upload, so there capture holds the first snapshot (and any
kept during its check) in the upload queue until the check settles: the first is released
marked or not, the later ones are released, or dropped when the check failed.

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

# Settles a kept snapshot: called once, with the failed check's verdict, or None when the
# payload loads (or was too slow to tell).
Settle = Callable[[dict[str, Any] | None], None]


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
        self.checking: dict[str, list[Settle]] = {}  # target -> snapshots kept meanwhile
        # (thread, joined at exit?): a remote store's exit flush bounds its own checks.
        self.threads: list[tuple[threading.Thread, bool]] = []
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

    def unclaim(self, target: str) -> None:
        """The claimed snapshot was not kept after all: the next one is the first."""
        with self.lock:
            if target not in self.checking:
                self.started.discard(target)

    def also(self, target: str, settle: Settle) -> None:
        """A later snapshot of a target: settled with the first one's check.

        One kept after the check finished (its arguments were pickled before) is settled at
        once: the check has already said what it would say.
        """
        with self.lock:
            if target in self.checking:
                self.checking[target].append(settle)
                return
            verdict = self.verdicts.get(target)
        self._settle(target, settle, verdict)

    def submit(
        self,
        target: str,
        payload: bytes,
        settle: Settle,
        hint: str = "",
        *,
        wait_at_exit: bool = True,
    ) -> None:
        """Check ``payload`` off the call path; on failure, log and block; then ``settle``.

        ``wait_at_exit=False``: the interpreter's exit does not join this check (a remote
        store's exit flush waits for it within its own bound instead).
        """
        with self.lock:
            self.checking[target] = [settle]
        thread = threading.Thread(
            target=self._run,
            args=(target, payload, hint),
            name=f"perfreplay-roundtrip-{target}",
            daemon=True,
        )
        with self.lock:
            self.threads.append((thread, wait_at_exit))
            if not self._exit_hook:
                self._exit_hook = True
                atexit.register(self.drain, at_exit=True)
        thread.start()

    def _run(self, target: str, payload: bytes, hint: str) -> None:
        verdict: dict[str, Any] = {}
        try:
            loader = threading.Thread(
                target=lambda: verdict.update(unpickle_check(payload)),
                name=f"perfreplay-unpickle-{target}",
                daemon=True,
            )
            loader.start()
            loader.join(TIME_BOUND)
            failed = not loader.is_alive() and verdict.get("ok") is False
        except BaseException:  # containment: whatever happened, every snapshot is settled
            failed = False
        if not failed:
            with self.lock:
                waiting = self.checking.pop(target, [])
            for settle in waiting:
                self._settle(target, settle, None)
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
        for settle in markers:
            self._settle(target, settle, verdict)

    @staticmethod
    def _settle(target: str, settle: Settle, verdict: dict[str, Any] | None) -> None:
        try:
            settle(verdict)
        except Exception as exc:  # containment: the service never sees this
            log.warning("perfreplay: settling a snapshot of %s failed: %r", target, exc)

    def drain(self, timeout: float = TIME_BOUND + 1.0, *, at_exit: bool = False) -> None:
        """Let pending checks settle their snapshots (bounded); at exit, only local ones."""
        for thread, wait_at_exit in list(self.threads):
            if wait_at_exit or not at_exit:
                thread.join(timeout)
