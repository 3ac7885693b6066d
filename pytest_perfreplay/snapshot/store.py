"""Where snapshots live: a local folder, with atomic writes and owner-only permissions.

Layout under the store root (default ``.perfreplay/``, folders 0700, files 0600)::

    .gitignore              "*": results never end up in git by accident
    key                     the store's own signing key when none is configured (0600)
    snapshots/<target>/slot-NNN.prsnap    captured snapshots, one file per quota slot
    snapshots/<target>/<id>.prsnap        snapshots written by id (pulled, or by hand)
    profiles/<target>/<iteration>-<id>.speedscope.json
    history/<target>/<id>.jsonl

Quota without a coordinator. A target with ``max_snapshots=N`` owns the file names
``slot-000`` .. ``slot-{N-1}``. A writer claims a free slot by *exclusive create* (a hard
link from its finished temp file, which fails if the name exists), so no number of
processes can ever make more than N files, and a crash never leaves a half file visible.
When every slot is taken, the writer may *replace* the slot holding the fastest call, if
its own call was slower (keep the slowest). On an object store the same idea maps onto
conditional writes: claim = ``PUT slot-k If-None-Match: *``; replace = ``PUT slot-k
If-Match: <etag of the fastest>``, so two racing replacers cannot both win. Locally, a
replacement re-reads the victim just before the atomic rename; the remaining race can
at worst drop one slow call for another, never exceed the quota.

The store-wide byte budget is a shared counter (``.usage``, under ``flock``): a writer
reserves its bytes before writing, so the budget holds across processes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SnapshotError, StoreError
from .format import SUFFIX, Header, Keyring, header_is_signed_by, read_header_file
from .keys import local_keyring

log = logging.getLogger("pytest_perfreplay.capture")

DEFAULT_ROOT = ".perfreplay"
STORE_ENV = "PERFREPLAY_STORE"
BUDGET_ENV = "PERFREPLAY_STORE_BUDGET"
TMP_PREFIX = ".tmp-"
SLOT_PREFIX = "slot-"
DEFAULT_BUDGET = 1 << 30  # 1 GiB for the whole store
STALE_TMP_SECONDS = 3600.0
_USAGE_RESCAN_SECONDS = 60.0

_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def target_slug(target: str) -> str:
    """``pkg.mod:Class.meth`` -> ``pkg.mod-Class.meth``: stable, filesystem-safe.

    Names longer than a file name may be (255 bytes) keep a prefix and a hash of the whole.
    """
    slug = _SLUG.sub("_", target.replace(":", "-")).strip("._") or "target"
    if len(slug) > _MAX_SLUG:
        digest = hashlib.sha256(target.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        slug = f"{slug[: _MAX_SLUG - 17]}-{digest}"
    return slug


_MAX_SLUG = 200


def slot_name(k: int) -> str:
    return f"{SLOT_PREFIX}{k:03d}{SUFFIX}"


@dataclass(frozen=True)
class PutResult:
    """What ``Store.put_snapshot`` did: ``written``, ``replaced`` or a skip reason."""

    outcome: str  # written | replaced | duplicate | not_slower | over_budget
    path: Path | None = None
    freed: int = 0  # bytes of the file a replacement overwrote

    @property
    def stored(self) -> bool:
        return self.outcome in ("written", "replaced")


@dataclass
class _Entry:
    key: tuple[int, int, int]  # (inode, size, mtime_ns): changes on every rewrite
    duration: float  # -1 for unreadable files, which are the first to be replaced
    digest: str | None
    size: int


@dataclass
class _View:
    """A process-local, possibly stale picture of one target folder."""

    entries: dict[str, _Entry] = field(default_factory=dict)
    refreshed: float = -1e18
    hint: int = 0  # where to start looking for a free slot (the one after the last claimed)


def parse_budget(text: str) -> int:
    """``500M``, ``2G``, ``1048576`` -> bytes."""
    raw = text.strip().upper().removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if raw and raw[-1] in scale:
            return int(float(raw[:-1]) * scale[raw[-1]])
        return int(raw)
    except ValueError:
        raise StoreError(
            f"{text!r} is not a byte size; use a number of bytes or e.g. 500M, 2G"
        ) from None


def _default_budget() -> int | None:
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if not raw:
        return DEFAULT_BUDGET
    if raw.lower() in ("0", "none", "off", "unlimited"):
        return None
    return parse_budget(raw)


PROJECT_MARKERS = ("pyproject.toml", "pytest.ini", "tox.ini", "setup.cfg", "setup.py", ".git")


def discover_root(start: str | os.PathLike[str] | None = None) -> Path:
    """Where the local store is when none is configured: found upwards, like git.

    The nearest ``.perfreplay`` folder from ``start`` (the current directory) up to the
    project root (the first folder holding one of PROJECT_MARKERS, as pytest's rootdir);
    with none, ``.perfreplay`` in that project root, else in ``start``. The CLI, the
    pytest plugin and capture all use this one rule, so they meet in one store.
    """
    here = Path(start) if start is not None else Path.cwd()
    here = here.absolute()
    for folder in (here, *here.parents):
        if (folder / DEFAULT_ROOT).is_dir():
            return folder / DEFAULT_ROOT
        if any((folder / marker).exists() for marker in PROJECT_MARKERS):
            return folder / DEFAULT_ROOT
    return here / DEFAULT_ROOT


@dataclass(frozen=True)
class Store:
    root: Path
    budget_bytes: int | None = field(default_factory=_default_budget, compare=False)
    view_ttl: float = field(default=1.0, compare=False)
    _views: dict[str, _View] = field(default_factory=dict, init=False, repr=False, compare=False)
    _swept: set[str] = field(default_factory=set, init=False, repr=False, compare=False)
    _keys: list[Keyring | None] = field(default_factory=list, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    @classmethod
    def from_env(cls, default: str | os.PathLike[str] | None = None) -> Store:
        explicit = default or os.environ.get(STORE_ENV)
        return cls(Path(explicit) if explicit else discover_root())

    # -- folders ------------------------------------------------------------

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "snapshots"

    @property
    def profiles_dir(self) -> Path:
        return self.root / "profiles"

    @property
    def history_dir(self) -> Path:
        return self.root / "history"

    def ensure(self) -> None:
        """Create the root (0700) with a ``.gitignore`` on first use."""
        if not self.root.is_dir():
            make_private_dirs(self.root)
        ignore = self.root / ".gitignore"
        if not ignore.exists():
            with contextlib.suppress(FileExistsError):
                write_atomic(ignore, b"# created by pytest-perfreplay\n*\n", mode=0o644)

    def target_dir(self, target: str) -> Path:
        return self.snapshots_dir / target_slug(target)

    # -- keys ---------------------------------------------------------------

    @property
    def key_path(self) -> Path:
        """Where older versions kept the store's own key (now never trusted by itself)."""
        return self.root / "key"

    def trust_durations_from(self, keyring: Keyring | None) -> None:
        """Only files signed with these keys may claim a ``duration`` in slot replacement."""
        self._keys[:] = [keyring]

    def _slot_keyring(self) -> Keyring | None:
        if not self._keys:
            try:
                self._keys.append(self.keyring())
            except StoreError:
                self._keys.append(None)
        return self._keys[0]

    def keyring(self, *, create: bool = False) -> Keyring | None:
        """The keys this store signs and verifies with (see ``snapshot.keys``).

        The default key lives with the user (``$XDG_STATE_HOME/perfreplay/keys``), never
        in the store, so a folder brought from elsewhere cannot bring its own trust.
        """
        return local_keyring(create=create)

    # -- snapshots ----------------------------------------------------------

    def _target_folder(self, target: str) -> Path:
        folder = self.target_dir(target)
        if not folder.is_dir():
            if self._views and not self.root.is_dir():
                # Deleted under a running process. The key lives with the user, so files
                # written from now on still verify; say so once, and start afresh.
                log.warning("perfreplay: the store %s was deleted; recreating it", self.root)
                self._views.clear()
            self.ensure()
            make_private_dirs(folder)
        return folder

    def write_snapshot(
        self, target: str, snapshot_id: str, data: bytes, *, fsync: bool = True
    ) -> Path:
        """Write a snapshot named by its id (no quota). Atomic; replaces a same-id file."""
        path = self._target_folder(target) / f"{snapshot_id}{SUFFIX}"
        write_atomic(path, data, fsync=fsync)
        return path

    def put_snapshot(
        self,
        target: str,
        data: bytes,
        *,
        quota: int,
        duration: float,
        digest: str | None = None,
        fsync: bool = False,
    ) -> PutResult:
        """Store a captured call under the target's quota, keeping the slowest calls.

        ``digest`` (of the args section) deduplicates: an identical payload already kept
        for this target is not written again.
        """
        folder = self._target_folder(target)
        with self._lock:  # threads of one process share the cached view
            return self._put(folder, data, quota, duration, digest, fsync)

    def _put(
        self,
        folder: Path,
        data: bytes,
        quota: int,
        duration: float,
        digest: str | None,
        fsync: bool,
    ) -> PutResult:
        if folder.name not in self._swept:
            self._swept.add(folder.name)
            self.sweep_tmp(folder)
        view = self._view(folder)
        if digest is not None and any(e.digest == digest for e in view.entries.values()):
            return PutResult("duplicate")
        if not self._reserve(len(data)):
            return PutResult("over_budget")
        result = self._put_reserved(folder, view, data, quota, duration, digest, fsync)
        # Settle the reservation: nothing written gives it back, a replacement frees the
        # victim's bytes.
        if result.outcome == "written":
            self._settle(0)
        elif result.outcome == "replaced":
            self._settle(-result.freed)
        else:
            self._settle(-len(data))
        return result

    def _put_reserved(
        self,
        folder: Path,
        view: _View,
        data: bytes,
        quota: int,
        duration: float,
        digest: str | None,
        fsync: bool,
    ) -> PutResult:
        if len(view.entries) < quota:
            start = view.hint if view.hint < quota else 0
            for k in itertools.chain(range(start, quota), range(start)):
                name = slot_name(k)
                if name in view.entries:
                    continue
                path = folder / name
                try:
                    st = write_atomic(path, data, exclusive=True, fsync=fsync)
                except FileExistsError:
                    continue  # another process took it a moment ago
                view.hint = k + 1
                self._remember(view, path, duration, digest, len(data), st)
                return PutResult("written", path)
            view = self._view(folder, force=True)
            if len(view.entries) < quota:
                return PutResult("not_slower")  # lost every race; rare, and harmless
        return self._replace_fastest(folder, view, data, duration, digest, fsync)

    def would_keep(self, target: str, quota: int, duration: float) -> bool:
        """A cheap, cache-only guess whether a call this slow would be kept (no I/O)."""
        view = self._views.get(target_slug(target))
        if view is None or len(view.entries) < quota:
            return True
        return duration > min(e.duration for e in view.entries.values())

    def after_fork(self) -> None:
        """In a forked child: a lock held by another thread at fork time is never released."""
        object.__setattr__(self, "_lock", threading.Lock())

    def _replace_fastest(
        self,
        folder: Path,
        view: _View,
        data: bytes,
        duration: float,
        digest: str | None,
        fsync: bool,
    ) -> PutResult:
        if not view.entries:
            return PutResult("not_slower")
        name, victim = min(view.entries.items(), key=lambda kv: kv[1].duration)
        if duration <= victim.duration:
            return PutResult("not_slower")
        path = folder / name
        # Re-read the victim right before replacing it: another process may have just put
        # a slower call there.
        fresh = self._entry(path)
        if fresh is None:
            view.entries.pop(name, None)
            return PutResult("not_slower")
        view.entries[name] = fresh
        if duration <= fresh.duration:
            return PutResult("not_slower")
        st = write_atomic(path, data, fsync=fsync)
        self._remember(view, path, duration, digest, len(data), st)
        return PutResult("replaced", path, freed=fresh.size)

    def _remember(
        self,
        view: _View,
        path: Path,
        duration: float,
        digest: str | None,
        size: int,
        st: os.stat_result,
    ) -> None:
        view.entries[path.name] = _Entry(
            (st.st_ino, st.st_size, st.st_mtime_ns), duration, digest, size
        )

    def _view(self, folder: Path, *, force: bool = False) -> _View:
        view = self._views.setdefault(folder.name, _View())
        now = time.monotonic()
        if not force and now - view.refreshed < self.view_ttl:
            return view
        seen: dict[str, _Entry] = {}
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    if not entry.name.endswith(SUFFIX) or entry.name.startswith(TMP_PREFIX):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    key = (st.st_ino, st.st_size, st.st_mtime_ns)
                    old = view.entries.get(entry.name)
                    if old is not None and old.key == key:
                        seen[entry.name] = old
                        continue
                    fresh = self._entry(Path(entry.path))
                    if fresh is not None:
                        seen[entry.name] = fresh
        except FileNotFoundError:
            pass
        view.entries = seen
        view.refreshed = now
        return view

    def _entry(self, path: Path) -> _Entry | None:
        try:
            st = path.stat()
        except OSError:
            return None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        try:
            header = read_header_file(path)
        except SnapshotError:
            return _Entry(key, -1.0, None, st.st_size)  # unreadable: replaced first
        if not header_is_signed_by(header, self._slot_keyring()):
            # A file nobody here signed cannot claim a long duration to squat a slot.
            return _Entry(key, -1.0, None, st.st_size)
        duration = header.duration
        return _Entry(key, -1.0 if duration is None else duration, header.args_digest, st.st_size)

    # -- byte budget --------------------------------------------------------

    def usage(self) -> int:
        """Bytes used by snapshot files (a fresh scan)."""
        total = 0
        for p in self.snapshot_paths():
            with contextlib.suppress(OSError):
                total += p.stat().st_size
        return total

    # The budget holds across processes: usage lives in a shared counter file,
    # ``.usage``, read and updated under an exclusive ``flock``; a writer reserves its
    # bytes before writing and settles after. The counter is rebuilt from a scan when
    # missing or older than a minute (so deletions by ``prune`` are seen); between scans
    # it can only over-count, which under-fills the budget and never overshoots it.

    def _adjust_usage(self, delta: int, *, cap: int | None = None, recount: bool = False) -> bool:
        """Add ``delta`` to the shared counter under its ``flock``, unless that passes
        ``cap`` (then nothing changes: False). ``recount`` sets it from a fresh scan.

        Opened per use, never held: a descriptor kept open would pin a deleted store and
        stop an administrator remounting the disk read-only. The open is the only path
        lookup; the store folder is made only when it is missing (ENOENT), not checked
        on every call (two stats per kept snapshot).
        """
        path = os.path.join(self.root, ".usage")
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:
            self.ensure()
            fd = os.open(path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 64, 0).split()
            fresh = (
                not recount
                and len(raw) == 1
                and raw[0].isdigit()
                and time.time() - os.fstat(fd).st_mtime < _USAGE_RESCAN_SECONDS
            )
            value = int(raw[0]) if fresh else self.usage()
            if cap is not None and value + delta > cap:
                if not fresh:
                    os.pwrite(fd, b"%020d" % max(0, value), 0)
                return False
            if delta or not fresh:
                # Fixed width, so an in-place write needs no truncate (slow on some
                # filesystems: milliseconds on overlayfs).
                os.pwrite(fd, b"%020d" % max(0, value + delta), 0)
            return True
        finally:
            os.close(fd)  # closing releases the flock too

    def _reserve(self, size: int) -> bool:
        if self.budget_bytes is None:
            return True
        return self._adjust_usage(size, cap=self.budget_bytes)

    def _settle(self, delta: int) -> None:
        if self.budget_bytes is None or delta == 0:
            return
        with contextlib.suppress(OSError):
            self._adjust_usage(delta)

    # -- listing and cleaning -----------------------------------------------

    def snapshot_paths(self) -> list[Path]:
        if not self.snapshots_dir.is_dir():
            return []
        return sorted(
            p for p in self.snapshots_dir.glob(f"*/*{SUFFIX}") if not p.name.startswith(TMP_PREFIX)
        )

    def headers(self) -> Iterator[tuple[Path, Header | SnapshotError]]:
        """Every snapshot file with its header, or the error that stops it being read."""
        for path in self.snapshot_paths():
            try:
                yield path, read_header_file(path)
            except SnapshotError as exc:
                yield path, exc

    def find(self, ref: str) -> Path:
        """A snapshot by id (or unique id prefix), file name or path."""
        candidate = Path(ref)
        if candidate.is_file():
            return candidate
        matches = []
        for path, header in self.headers():
            sid = header.id if isinstance(header, Header) else None
            if ref in (sid, path.stem, path.name) or (sid or "").startswith(ref):
                matches.append(path)
        if not matches:
            raise StoreError(f"no snapshot {ref!r} in {self.snapshots_dir}; see `perfreplay list`")
        if len(matches) > 1:
            raise StoreError(f"{ref!r} matches {len(matches)} snapshots; give more of the id")
        return matches[0]

    def iter_tmp_files(self) -> Iterator[Path]:
        if self.snapshots_dir.is_dir():
            yield from self.snapshots_dir.glob(f"*/{TMP_PREFIX}*")

    def sweep_tmp(self, folder: Path | None = None, *, max_age: float = STALE_TMP_SECONDS) -> int:
        """Remove temp files left by dead writers (or older than ``max_age``)."""
        paths = folder.glob(f"{TMP_PREFIX}*") if folder is not None else self.iter_tmp_files()
        removed = 0
        now = time.time()
        for tmp in paths:
            try:
                age = now - tmp.stat().st_mtime
            except OSError:
                continue
            if age > max_age or not _writer_alive(tmp.name):
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    removed += 1
        return removed

    def forget(self) -> None:
        """Drop cached views (after pruning or other out-of-band changes)."""
        self._views.clear()
        if self.budget_bytes is not None and self.root.is_dir():
            with contextlib.suppress(OSError):
                self._adjust_usage(0, recount=True)  # files were deleted: count again


def _writer_alive(tmp_name: str) -> bool:
    """Temp names carry the writer's pid: ``.tmp-<name>.<pid>.<random>``."""
    parts = tmp_name.rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return True  # not ours to judge by pid; the age rule still applies
    pid = int(parts[1])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def make_private_dirs(path: Path) -> None:
    """``mkdir -p`` where every folder this call creates is 0700 (``parents=True`` is not)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise


def write_atomic(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o600,
    exclusive: bool = False,
    fsync: bool = True,
) -> os.stat_result:
    """Write to a temp file in the destination folder, then rename (or link) into place.

    The temp file lives beside the destination (same filesystem, so the rename is atomic)
    and is removed on any failure: a crash never leaves a half-written file visible.
    ``exclusive`` refuses to replace an existing file (FileExistsError). ``fsync`` makes
    the data durable before it becomes visible (needed against power loss, not crashes).
    Returns the file's stat (the link and rename keep its inode, size and mtime).
    """
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if fsync:
                os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, path)  # fails with FileExistsError if someone got there first
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return st
