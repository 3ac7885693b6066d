"""The per-user signing key of local stores, and the migration of old store keys.

A local store signs with a key that lives with the *user*, never in the store:
``$XDG_STATE_HOME/perfreplay/keys/local.key`` (``~/.local/state/...`` when unset). A
folder that arrives from elsewhere (a tarball, a CI artifact) can bring snapshots and
even a ``key`` file of its own, but neither is trusted: its files do not verify against
this user's key, so they are never unpickled.

Older versions kept the key in the store (``.perfreplay/key``). Such a key is trusted
only when the user says so, with ``perfreplay key migrate``: the key is then copied to
``keys/verify/<key id>.key`` (verify only; new files are signed with the user key) and
removed from the store. Nothing is migrated automatically, because a store's own key
file cannot prove who wrote it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from ..errors import StoreError
from .format import KEY_ENV, VERIFY_KEYS_ENV, Keyring

STATE_ENV = "XDG_STATE_HOME"
LEGACY_KEY_NAME = "key"  # inside a store: read only by ``perfreplay key migrate``
MIN_KEY_BYTES = 16
_MAX_KEY_BYTES = 4096


def key_home(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/perfreplay/keys``, else ``~/.local/state/perfreplay/keys``."""
    env = os.environ if environ is None else environ
    base = env.get(STATE_ENV, "").strip()
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "perfreplay" / "keys"


def user_key_path() -> Path:
    return key_home() / "local.key"


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or (
        hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o077)
    ):
        raise StoreError(
            f"refusing the key folder {path}: it must be a directory owned by this user, "
            f"mode 0700 (it is {stat.S_IMODE(st.st_mode):04o})"
        )


def read_key_file(path: Path, what: str = "key") -> bytes:
    """A key file's secret, or ``FileNotFoundError``.

    Opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked with ``fstat`` before any read, so a
    symlink, a FIFO or a device at the key path is refused instead of blocking or leaking.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StoreError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"refusing the {what} {path}: it is not a regular file")
        if hasattr(os, "getuid") and (
            st.st_uid != os.getuid() or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
        ):
            raise StoreError(
                f"refusing the {what} {path}: it must be owned by this user and mode 0600 "
                f"(it is {stat.S_IMODE(st.st_mode):04o}, uid {st.st_uid}); a key others can "
                "read or write cannot vouch for anything"
            )
        secret = os.read(fd, _MAX_KEY_BYTES).strip()
    finally:
        os.close(fd)
    if len(secret) < MIN_KEY_BYTES:
        raise StoreError(f"the {what} {path} is shorter than {MIN_KEY_BYTES} bytes; delete it")
    return secret


def _create_key(path: Path) -> None:
    _private_dir(path.parent)
    data = secrets.token_hex(32).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        with contextlib.suppress(FileExistsError):  # another process won: use its key
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def user_key(*, create: bool) -> bytes | None:
    """This user's local signing key; created (0600, exclusive) when ``create``."""
    path = user_key_path()
    try:
        return read_key_file(path, "user key")
    except FileNotFoundError:
        if not create:
            return None
    _create_key(path)
    return read_key_file(path, "user key")


def _migrated_keys() -> dict[str, tuple[bytes, str]]:
    """Verify-only keys the user migrated from old stores: key id -> (secret, file)."""
    folder = key_home() / "verify"
    out: dict[str, tuple[bytes, str]] = {}
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return out
    for name in names:
        if name.endswith(".key"):
            with contextlib.suppress(FileNotFoundError, StoreError):
                secret = read_key_file(folder / name, "migrated key")
                out[Keyring.key_id(secret)] = (secret, str(folder / name))
    return out


def local_keyring(*, create: bool = False) -> Keyring | None:
    """The keys a local store signs and verifies with.

    ``PERFREPLAY_KEY`` signs when set, else the user key does. Verifying keys are all of:
    ``PERFREPLAY_KEY``, ``PERFREPLAY_VERIFY_KEYS``, the user key and migrated keys; so
    adding verify keys never turns the local key off. ``Keyring.origins`` says where each
    key lives, for ``perfreplay verify``.
    """
    env = Keyring.from_env()
    own = user_key(create=create and (env is None or env.signing is None))
    verifying: dict[str, bytes] = {}
    origins: dict[str, str] = {}
    for key_id, (secret, where) in _migrated_keys().items():
        verifying[key_id] = secret
        origins[key_id] = f"migrated key {where}"
    if own is not None:
        own_id = Keyring.key_id(own)
        verifying[own_id] = own
        origins[own_id] = f"user key {user_key_path()}"
    signing = (Keyring.key_id(own), own) if own is not None else None
    if env is not None:
        verifying.update(env.verifying)
        origins.update(env.origins)
        if env.signing is not None:
            signing = env.signing
    if signing is None and not verifying:
        return None
    return Keyring(signing=signing, verifying=verifying, origins=origins)


def migrate_store_key(store_root: Path) -> tuple[str, Path]:
    """Trust an old store's own key for verifying: move it under the user's key folder."""
    legacy = store_root / LEGACY_KEY_NAME
    try:
        secret = read_key_file(legacy, "store key")
    except FileNotFoundError:
        raise StoreError(f"{legacy} does not exist: nothing to migrate") from None
    key_id = Keyring.key_id(secret)
    dest_dir = key_home() / "verify"
    _private_dir(dest_dir.parent)
    _private_dir(dest_dir)
    dest = dest_dir / f"{key_id}.key"
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.write(fd, secret)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(legacy)
    return key_id, dest


def legacy_key_hint(store_root: Path) -> str | None:
    """A hint when a store still holds an old in-store key (never trusted by itself)."""
    legacy = store_root / LEGACY_KEY_NAME
    if not os.path.lexists(legacy):
        return None
    return (
        f"{legacy} is a key kept inside the store by an older version; it is not trusted. "
        f"If you created this store yourself, run: perfreplay key migrate --store {store_root}"
    )


__all__ = [
    "KEY_ENV",
    "VERIFY_KEYS_ENV",
    "key_home",
    "legacy_key_hint",
    "local_keyring",
    "migrate_store_key",
    "read_key_file",
    "user_key",
    "user_key_path",
]
