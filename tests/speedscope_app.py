"""pytest plugin: check speedscope files against the official schema and the real speedscope app.

Fixtures:

* ``speedscope_schema``: the JSON schema shipped in the npm ``speedscope`` package
  (``file-format-schema.json``), found through ``npm root -g``.
* ``assert_valid_speedscope(doc)``: validates with ``jsonschema`` against that schema AND with
  :func:`pytest_perfreplay.profile.speedscope.validate`.
* ``speedscope_app``: ``speedscope_app.load(path)`` opens the file in the package's offline app
  (``dist/release/index.html``) in headless Chromium, exactly the way ``speedscope FILE`` does it
  (the file is wrapped in a JS file calling ``speedscope.loadFileFromBase64`` and passed as
  ``#localProfilePath=``), and returns an :class:`AppLoad` describing what the app did.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: fds 3/4,
NUL-separated JSON), so no port, websocket library or browser download is needed.

Missing tools skip the test locally and FAIL it when ``CI=true``, so CI can't go green by skipping.
Environment overrides: ``PERFREPLAY_CHROMIUM`` (browser binary), ``PERFREPLAY_SPEEDSCOPE_DIR``
(the npm package folder).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_perfreplay.profile import speedscope

MARKERS = {
    "browser": "loads files into the real speedscope app in headless Chromium",
    "slow": "takes more than a few seconds",
    "pyspy": "runs py-spy (needs ptrace)",
    "s3": "needs the local S3 server",
}
_PROFILE_INDEX = re.compile(r"\s*\((\d+)/(\d+)\)\s*$")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # speedscope draws with WebGL; without a GPU Chromium only offers SwiftShader, and its
    # silent fallback is deprecated. Without a GL canvas the app ignores the file silently.
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--remote-debugging-pipe",
)
# Returns everything the loader needs to judge the page in one round trip.
_PAGE_STATE_JS = r"""(() => {
  const text = document.body ? document.body.innerText : "";
  // the innermost div holding the three view tabs; the profile name sits right after it
  const tabs = Array.from(document.querySelectorAll("div")).filter(
    d => d.children.length === 3 && d.textContent.includes("Time Order")
      && d.textContent.includes("Sandwich")).pop();
  // between the tabs and the Export/Import/Help group: a bare text node for a lone profile,
  // a <span>name <span>(i/n)</span></span> plus the hidden picker when there are several
  let label = null;
  if (tabs && tabs.parentElement) {
    const parts = [];
    const end = tabs.parentElement.lastElementChild;
    for (let n = tabs.nextSibling; n && n !== end; n = n.nextSibling) {
      if (n.nodeType === Node.TEXT_NODE) parts.push(n.textContent);
      else if (n.nodeType === Node.ELEMENT_NODE) {
        const span = n.querySelector(":scope > span");
        parts.push(span ? span.textContent : "");
      }
    }
    label = parts.join("").trim() || null;
  }
  const rows = Array.from(document.querySelectorAll("tr[title]")).map(tr => ({
    name: tr.title, weight: tr.cells.length > 2 ? tr.cells[2].innerText : ""}));
  return JSON.stringify({title: document.title, text, label, rows,
    canvases: document.querySelectorAll("canvas").length,
    wrong: text.includes("Something went wrong")});
})()"""


def pytest_configure(config: pytest.Config) -> None:
    # Register the markers unless the project's ini already does (avoids duplicate help lines).
    known = {
        str(line).split(":", 1)[0].split("(", 1)[0].strip() for line in config.getini("markers")
    }
    for name, help_text in MARKERS.items():
        if name not in known:
            config.addinivalue_line("markers", f"{name}: {help_text}")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip locally; fail under CI=true, where a missing tool is a broken environment."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: failing instead of skipping)", pytrace=False)
    pytest.skip(reason)


# ------------------------------------------------------------------------------------------
# locating the npm package and the browser


@functools.cache
def speedscope_package_dir() -> Path | None:
    override = os.environ.get("PERFREPLAY_SPEEDSCOPE_DIR")
    candidates: list[Path] = [Path(override)] if override else []
    npm = shutil.which("npm")
    if npm and not override:
        try:
            out = subprocess.run(
                [npm, "root", "-g"], capture_output=True, text=True, timeout=60, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            candidates.append(Path(out) / "speedscope")
    if not override:
        for folder in ("/usr/lib/node_modules", "/usr/local/lib/node_modules"):
            candidates.append(Path(folder) / "speedscope")
    for candidate in candidates:
        if (candidate / "package.json").is_file():
            return candidate
    return None


def _package_file(*names: str) -> Path | None:
    root = speedscope_package_dir()
    if root is None:
        return None
    for name in names:
        if (root / name).is_file():
            return root / name
    return None


def schema_path() -> Path | None:
    return _package_file("dist/release/file-format-schema.json", "file-format-schema.json")


def app_index_path() -> Path | None:
    return _package_file("dist/release/index.html")


def chromium_path() -> str | None:
    configured = os.environ.get("PERFREPLAY_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


# ------------------------------------------------------------------------------------------
# schema


@pytest.fixture(scope="session")
def speedscope_schema() -> dict[str, Any]:
    path = schema_path()
    if path is None:
        unavailable(
            "the npm package 'speedscope' (file-format-schema.json) is not installed; "
            "run: npm install -g speedscope"
        )
    assert path is not None
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def check_valid_speedscope(schema: Mapping[str, Any], doc: Mapping[str, Any]) -> None:
    """AssertionError listing every problem found by jsonschema and by speedscope.validate()."""
    import jsonschema  # type: ignore[import-untyped, unused-ignore]

    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema)
    schema_errors = sorted(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(doc)
    )
    ours = speedscope.validate(doc)
    problems = [f"schema: {m}" for m in schema_errors[:20]] + [f"validate(): {m}" for m in ours]
    if problems:
        raise AssertionError("invalid speedscope document:\n  " + "\n  ".join(problems))


@pytest.fixture(scope="session")
def assert_valid_speedscope(
    speedscope_schema: dict[str, Any],
) -> Callable[[Mapping[str, Any]], None]:
    return functools.partial(check_valid_speedscope, speedscope_schema)


# ------------------------------------------------------------------------------------------
# the real app


@dataclass
class AppLoad:
    """What the speedscope app did with one file."""

    path: Path
    ok: bool  # imported and rendered, with no error screen, alert or uncaught exception
    reason: str  # "imported" or why not
    title: str  # document.title: "<file name> - speedscope" after an import
    importer: str | None  # e.g. "Importing as speedscope json file"
    profile_label: str | None  # the toolbar's profile name, e.g. 'Thread 1 (1/2)'
    profiles: list[tuple[str, str]]  # (name, total weight as shown) from the profile picker
    canvases: int
    dialogs: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def current_profile(self) -> tuple[str, int, int] | None:
        """The toolbar label split: 'Thread 1 (2/3)' -> ('Thread 1', 2, 3); a lone profile
        shows no '(i/n)' -> (name, 1, 1)."""
        if self.profile_label is None:
            return None
        m = _PROFILE_INDEX.search(self.profile_label)
        if m is None:
            return self.profile_label.strip(), 1, 1
        return self.profile_label[: m.start()].strip(), int(m.group(1)), int(m.group(2))

    @property
    def profile_count(self) -> int:
        """Profiles the app built (its picker lists them when there is more than one)."""
        if self.profiles:
            return len(self.profiles)
        return 1 if self.ok else 0

    def describe(self) -> str:
        lines = [
            f"speedscope app on {self.path}: {'OK' if self.ok else 'FAILED'} ({self.reason})",
            f"  title={self.title!r} importer={self.importer!r} label={self.profile_label!r}",
        ]
        lines += [f"  alert: {d}" for d in self.dialogs]
        lines += [f"  exception: {e}" for e in self.exceptions]
        lines += [f"  console: {c}" for c in self.console[-15:]]
        return "\n".join(lines)

    def assert_ok(self, importer: str | None = "speedscope json file") -> None:
        """Imported cleanly, and (by default) through speedscope's own file-format importer."""
        assert self.ok, self.describe()
        if importer is not None:
            assert self.importer == f"Importing as {importer}", self.describe()


class _CdpPipe:
    """A Chromium process driven over --remote-debugging-pipe."""

    def __init__(self, chromium: str, workdir: Path) -> None:
        self.profile_dir = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=workdir))
        self.stderr_path = workdir / f"{self.profile_dir.name}.stderr"
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire_pipes() -> None:  # runs in the child: Chromium reads fd 3, writes fd 4
            reader, writer = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(reader, 3)
            os.dup2(writer, 4)

        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile_dir}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=wire_pipes,  # the only way to place the pipe on fds 3/4
                close_fds=False,  # the dup2'd fds 3/4 are inheritable; other fds are not
                start_new_session=True,  # so close() can end renderer/GPU children too
            )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next_id = 0
        self.events: deque[dict[str, Any]] = deque()

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, method: str, params: Mapping[str, Any] | None = None, session: str = "") -> int:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        return self._next_id

    def receive(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self._from_child], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the DevTools pipe; see {self.stderr_path}")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        message: dict[str, Any] = json.loads(raw)
        if message.get("method") == "Page.javascriptDialogOpening":
            # An open alert() blocks every later command (even Runtime.evaluate) on that page,
            # so dismiss it at once; the event is still delivered so the caller can record it.
            self.send("Page.handleJavaScriptDialog", {"accept": True}, message.get("sessionId", ""))
        return message

    def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        session: str = "",
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        wanted = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            message = self.receive(max(0.0, deadline - time.monotonic()))
            if message is None:
                raise TimeoutError(f"no answer to {method} within {timeout}s")
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        if self.events:
            return self.events.popleft()
        while True:
            message = self.receive(timeout)
            if message is None or "method" in message:
                return message  # replies to fire-and-forget commands are dropped

    def close(self) -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            if self.alive():
                self.send("Browser.close")
                self.process.wait(timeout=5)
        # The browser's own process group (start_new_session): ends helpers that outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.profile_dir, ignore_errors=True)


def _console_text(params: Mapping[str, Any]) -> str:
    parts = []
    for arg in params.get("args", []):
        value = arg.get("value", arg.get("description", arg.get("type", "")))
        parts.append(value if isinstance(value, str) else json.dumps(value))
    return " ".join(parts)


def _exception_text(params: Mapping[str, Any]) -> str:
    details = params.get("exceptionDetails", {})
    exception = details.get("exception", {})
    return str(exception.get("description") or details.get("text") or details)


class _PageLog:
    """What the page said: console lines, alerts, uncaught exceptions, the import milestone."""

    def __init__(self, session: str) -> None:
        self.session = session
        self.console: list[str] = []
        self.dialogs: list[str] = []
        self.exceptions: list[str] = []
        self.importer: str | None = None
        self.imported_at: float | None = None
        self.failed = False

    def handle(self, event: Mapping[str, Any] | None) -> None:
        if event is None or event.get("sessionId") != self.session:
            return
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = _console_text(params)
            self.console.append(f"{params.get('type')}: {text}")
            if text.startswith("Importing as "):
                self.importer = text
            elif text.startswith("Failed to load format"):
                self.failed = True
            elif params.get("type") == "timeEnd" and text.startswith("import:"):
                # console.timeEnd("import") runs only when loadProfile() succeeded
                self.imported_at = time.monotonic()
        elif method == "Runtime.exceptionThrown":
            self.exceptions.append(_exception_text(params))
        elif method == "Page.javascriptDialogOpening":
            self.dialogs.append(str(params.get("message")))  # _CdpPipe already dismissed it


class SpeedscopeApp:
    """The offline speedscope app in one headless Chromium, a fresh browser context per load."""

    def __init__(self, index_html: Path, chromium: str, workdir: Path) -> None:
        self.index_html = index_html
        self.chromium = chromium
        self.workdir = workdir
        self._browser: _CdpPipe | None = None
        self._loads = 0

    def _ensure_browser(self) -> _CdpPipe:
        if self._browser is None or not self._browser.alive():
            if self._browser is not None:
                self._browser.close()
            self._browser = _CdpPipe(self.chromium, self.workdir)
            self._browser.call("Browser.getVersion")  # proves the pipe works
        return self._browser

    def close(self) -> None:
        if self._browser is not None:
            self._browser.close()
            self._browser = None

    def load_document(self, doc: Mapping[str, Any], name: str = "profile.json") -> AppLoad:
        """Write ``doc`` as JSON into the app's work folder and :meth:`load` it."""
        self._loads += 1
        path = self.workdir / f"{self._loads:03d}-{name}"
        path.write_text(json.dumps(doc), encoding="utf-8")
        return self.load(path)

    def load(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> AppLoad:
        """Open ``path`` the way ``speedscope FILE`` does and report the outcome."""
        path = Path(path)
        self._loads += 1
        # speedscope's CLI: a JS file that hands the base64 bytes to the app, named in the hash.
        payload = base64.b64encode(path.read_bytes()).decode("ascii")
        js_path = self.workdir / f"speedscope-{self._loads:03d}.js"
        js_path.write_text(
            f"speedscope.loadFileFromBase64({json.dumps(path.name)}, {json.dumps(payload)})",
            encoding="utf-8",
        )
        url = (
            f"{self.index_html.resolve().as_uri()}#localProfilePath="
            f"{urllib.parse.quote(str(js_path.resolve()), safe='/')}"
        )
        return self.load_url(url, path=path, timeout=timeout)

    def load_url(self, url: str, *, path: Path | None = None, timeout: float = 30.0) -> AppLoad:
        """Open an app URL built elsewhere (e.g. by ``perfreplay open --print-url``)."""
        if path is None:
            where = url.split("localProfilePath=", 1)[-1].split("&", 1)[0]
            path = Path(urllib.parse.unquote(where))
        browser = self._ensure_browser()
        context = browser.call("Target.createBrowserContext")["browserContextId"]
        try:
            target = browser.call(
                "Target.createTarget", {"url": "about:blank", "browserContextId": context}
            )["targetId"]
            session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            return self._watch(browser, session, path, url, timeout)
        finally:
            try:
                browser.call("Target.disposeBrowserContext", {"browserContextId": context})
            except (RuntimeError, TimeoutError, OSError):
                self.close()  # a wedged browser is replaced on the next load

    def _watch(
        self, browser: _CdpPipe, session: str, path: Path, url: str, timeout: float
    ) -> AppLoad:
        for method in ("Runtime.enable", "Page.enable"):
            browser.call(method, session=session)
        started = time.monotonic()
        browser.call("Page.navigate", {"url": url}, session=session)
        log = _PageLog(session)
        state: dict[str, Any] = {}
        reason = f"timed out after {timeout:.0f}s without an import"
        next_poll = 0.0
        while time.monotonic() - started < timeout:
            log.handle(browser.next_event(0.05))
            now = time.monotonic()
            if log.dialogs or log.exceptions:
                reason = (
                    f"alert: {log.dialogs[0]}" if log.dialogs else f"exception: {log.exceptions[0]}"
                )
                break
            if now < next_poll:
                continue
            next_poll = now + 0.1
            state = json.loads(
                browser.call(
                    "Runtime.evaluate",
                    {"expression": _PAGE_STATE_JS, "returnByValue": True},
                    session=session,
                )["result"]["value"]
            )
            if state["wrong"]:
                reason = "the app shows 'Something went wrong.'"
                break
            # Let the first frames render after the import, so late errors are seen too.
            if log.imported_at is not None and state["label"] and now - log.imported_at > 0.3:
                reason = "imported"
                break
        while (event := browser.next_event(0.05)) is not None:  # collect what is in flight
            log.handle(event)
        if reason == "imported" and (log.failed or log.dialogs or log.exceptions):
            reason = "the app reported an error after the import"
        console, dialogs, exceptions = log.console, log.dialogs, log.exceptions
        importer = log.importer
        ok = reason == "imported"
        return AppLoad(
            path=path,
            ok=ok,
            reason=reason,
            title=str(state.get("title", "")),
            importer=importer,
            profile_label=state.get("label"),
            profiles=[(r["name"], r["weight"]) for r in state.get("rows", [])],
            canvases=int(state.get("canvases", 0)),
            dialogs=dialogs,
            exceptions=exceptions,
            console=console,
            elapsed=time.monotonic() - started,
        )


@pytest.fixture(scope="session")
def speedscope_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpeedscopeApp]:
    index_html = app_index_path()
    if index_html is None:
        unavailable(
            "the npm package 'speedscope' (dist/release/index.html) is not installed; "
            "run: npm install -g speedscope"
        )
    chromium = chromium_path()
    if chromium is None:
        unavailable("Chromium is not installed (apt-get install chromium, or PERFREPLAY_CHROMIUM)")
    assert index_html is not None and chromium is not None
    app = SpeedscopeApp(index_html, chromium, tmp_path_factory.mktemp("speedscope-app"))
    try:
        yield app
    finally:
        app.close()


# ------------------------------------------------------------------------------------------
# the real py-spy


@pytest.fixture(scope="session")
def real_pyspy() -> str:
    """The py-spy executable, once it has been seen attaching to this very process.

    The one gate for every real-py-spy test: skips locally when attaching is refused (and says
    how to fix it), fails under CI=true.
    """
    from pytest_perfreplay.profile.passes import pyspy

    check = pyspy.preflight(pyspy.PySpyOptions())
    if check.refusal is not None or check.executable is None:
        unavailable(f"py-spy cannot attach here: {check.refusal}")
    try:
        deadline = time.perf_counter() + 0.2

        def spin() -> None:
            while time.perf_counter() < deadline:
                pass

        pyspy.record(spin, pyspy.PySpyOptions(rate=200))
    except pyspy.PySpyError as exc:
        unavailable(f"py-spy could not attach to the test process: {exc}")
    assert check.executable is not None
    return check.executable
