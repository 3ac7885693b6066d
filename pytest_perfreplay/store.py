"""Where snapshots live: a local folder, with atomic writes and owner-only permissions.

Layout under the store root (default ``.perfreplay/``)::

    .gitignore              "*": results never end up in git by accident
    key                     the store's own signing key when none is configured (0600)
    snapshots/<target>/<id>.prsnap
    profiles/<target>/<iteration>-<id>.speedscope.json
    history/<target>/<id>.jsonl
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import StoreError
from .snapshot import SUFFIX, Keyring

DEFAULT_ROOT = ".perfreplay"
STORE_ENV = "PERFREPLAY_STORE"
TMP_PREFIX = ".tmp-"

_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def target_slug(target: str) -> str:
    """``pkg.mod:Class.meth`` -> ``pkg.mod-Class.meth``: stable, filesystem-safe."""
    return _SLUG.sub("_", target.replace(":", "-")).strip("._") or "target"


@dataclass(frozen=True)
class Store:
    root: Path

    @classmethod
    def from_env(cls, default: str | os.PathLike[str] | None = None) -> Store:
        return cls(Path(os.environ.get(STORE_ENV) or default or DEFAULT_ROOT))

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
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        ignore = self.root / ".gitignore"
        if not ignore.exists():
            with contextlib.suppress(FileExistsError):
                write_atomic(ignore, b"# created by pytest-perfreplay\n*\n", mode=0o644)

    def target_dir(self, target: str) -> Path:
        return self.snapshots_dir / target_slug(target)

    # -- keys ---------------------------------------------------------------

    @property
    def key_path(self) -> Path:
        return self.root / "key"

    def keyring(self, *, create: bool = False) -> Keyring | None:
        """The configured keyring, else this store's own key (created 0600 on first capture).

        A store-local key means a file that was not written by a process able to read this
        store's key is refused: foreign or tampered files never get unpickled.
        """
        configured = Keyring.from_env()
        if configured is not None:
            return configured
        try:
            secret = self.key_path.read_bytes().strip()
        except FileNotFoundError:
            if not create:
                return None
            self.ensure()
            try:
                write_atomic(self.key_path, secrets.token_hex(32).encode(), exclusive=True)
            except FileExistsError:
                pass  # another process won the race; use its key
            secret = self.key_path.read_bytes().strip()
        except OSError as exc:
            raise StoreError(f"cannot read the store key {self.key_path}: {exc}") from exc
        return Keyring.from_secrets(secret)

    # -- snapshots ----------------------------------------------------------

    def write_snapshot(self, target: str, snapshot_id: str, data: bytes) -> Path:
        folder = self.target_dir(target)
        if not folder.is_dir():
            self.ensure()
            self.snapshots_dir.mkdir(mode=0o700, exist_ok=True)
            folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / f"{snapshot_id}{SUFFIX}"
        write_atomic(path, data)
        return path

    def snapshot_paths(self) -> list[Path]:
        if not self.snapshots_dir.is_dir():
            return []
        return sorted(
            p for p in self.snapshots_dir.glob(f"*/*{SUFFIX}") if not p.name.startswith(TMP_PREFIX)
        )

    def iter_tmp_files(self) -> Iterator[Path]:
        if self.snapshots_dir.is_dir():
            yield from self.snapshots_dir.glob(f"*/{TMP_PREFIX}*")


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, exclusive: bool = False) -> None:
    """Write to a temp file in the destination folder, fsync, then rename into place.

    The temp file lives beside the destination (same filesystem, so the rename is atomic)
    and is removed on any failure: a crash never leaves a half-written file visible.
    ``exclusive`` refuses to replace an existing file (FileExistsError).
    """
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
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
