"""``perfreplay list|show|verify|prune``: inspect and clean the snapshot store.

The store is a local folder or a remote URL (``s3://bucket/prefix``); both are reached
through the same small ``_Files`` view. Nothing here unpickles a snapshot, except
``show --args``, which verifies it first.
"""

from __future__ import annotations

import argparse
import json
import os
import reprlib
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import PerfReplayError, SnapshotError, StoreError, printable
from ..snapshot.format import Header, Keyring, read_header_file, verify
from ..snapshot.keys import legacy_key_hint
from ..snapshot.store import Store


def register(sub: Any) -> None:
    store_help = "store folder or URL (default $PERFREPLAY_STORE or .perfreplay)"

    p = sub.add_parser("list", help="targets in the store: counts, sizes, slowest calls")
    p.add_argument("--store", default=None, help=store_help)
    p.set_defaults(func=run_list)

    p = sub.add_parser("show", help="a snapshot's header; --args also prints its arguments")
    p.add_argument("id", help="snapshot id (or a unique prefix), or a file path")
    p.add_argument("--store", default=None, help=store_help)
    p.add_argument(
        "--args", action="store_true", help="verify the signature, then print the arguments"
    )
    p.add_argument("--allow-unsigned", action="store_true", help="accept an unsigned snapshot")
    p.set_defaults(func=run_show)

    p = sub.add_parser("verify", help="verify every snapshot; exits 1 if any fails")
    p.add_argument("--store", default=None, help=store_help)
    p.add_argument("--allow-unsigned", action="store_true", help="accept unsigned snapshots")
    p.add_argument(
        "--load",
        action="store_true",
        help="also unpickle each verified snapshot (in a child process) and report those "
        "that cannot replay",
    )
    p.set_defaults(func=run_verify)

    p = sub.add_parser("prune", help="delete snapshots by age, count or target")
    p.add_argument("--store", default=None, help=store_help)
    p.add_argument(
        "--older-than",
        type=duration_arg,
        metavar="AGE",
        help="captured before AGE ago (30m, 12h, 7d)",
    )
    p.add_argument(
        "--keep", type=count_arg, metavar="N", help="per target, keep only the N slowest calls"
    )
    p.add_argument("--target", action="append", default=[], help="delete this target's snapshots")
    p.add_argument("--invalid", action="store_true", help="delete files that fail verification")
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    p.set_defaults(func=run_prune)


# -- argument types ---------------------------------------------------------

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def duration_arg(text: str) -> float:
    raw = text.strip().lower()
    try:
        value = float(raw[:-1]) * _UNITS[raw[-1]] if raw and raw[-1] in _UNITS else float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an age; use seconds or a number with s, m, h, d or w (e.g. 7d)"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative; ages are >= 0")
    return value


def count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative; give a count >= 0")
    return value


# -- helpers ------------------------------------------------------------------


@dataclass
class _Files:
    """The snapshot files of a local or a remote store, addressed by a reference string
    (a path for a folder, an object key for a URL)."""

    store: Any  # Store | remote.RemoteStore
    label: str

    @property
    def remote(self) -> bool:
        return not isinstance(self.store, Store)

    def headers(self) -> Iterator[tuple[str, Header | SnapshotError]]:
        if not self.remote:
            for path, header in self.store.headers():
                yield str(path), header
            return
        for entry in self.store.iter_snapshots():
            try:
                yield entry.key, self.store.read_header(entry.key)
            except SnapshotError as exc:
                yield entry.key, exc

    def refs(self) -> list[str]:
        if not self.remote:
            return [str(p) for p in self.store.snapshot_paths()]
        return [entry.key for entry in self.store.iter_snapshots()]

    def read(self, ref: str) -> bytes:
        if not self.remote:
            with open(ref, "rb") as f:
                return f.read()
        data: bytes = self.store.read(ref)
        return data

    def delete(self, ref: str) -> None:
        if not self.remote:
            try:
                os.unlink(ref)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StoreError(f"cannot delete {ref}: {exc}") from exc
        else:
            self.store.delete(ref)

    def find(self, ref: str) -> str:
        if not self.remote:
            return str(self.store.find(ref))
        matches = [
            key
            for key, header in self.headers()
            if isinstance(header, Header) and (header.id.startswith(ref) or key.endswith(ref))
        ]
        if len(matches) != 1:
            what = "no snapshot" if not matches else f"{len(matches)} snapshots match"
            raise StoreError(f"{what} {ref!r} in {self.label}; see `perfreplay list`")
        return matches[0]

    def keyring(self) -> Keyring | None:
        keyring: Keyring | None = self.store.keyring()
        return keyring

    def sweep_tmp(self) -> int:
        return 0 if self.remote else int(self.store.sweep_tmp())

    def display(self, ref: str) -> str:
        if self.remote:
            return ref
        try:
            return os.path.relpath(ref, self.store.root)
        except ValueError:
            return ref


def _files(args: argparse.Namespace) -> _Files:
    where = args.store or os.environ.get("PERFREPLAY_STORE") or ".perfreplay"
    from ..snapshot.remote import RemoteStore, describe_error, is_remote

    if not is_remote(where):
        store = Store.from_env(args.store)
        return _Files(store, str(store.snapshots_dir))
    remote = RemoteStore.from_url(where)
    try:
        remote.check()
    except Exception as exc:
        if isinstance(exc, StoreError):
            raise
        raise StoreError(describe_error(exc, where)) from None
    return _Files(remote, where)


def _remote_errors(func: Any) -> Any:
    """One clear line for network and credential errors, never a botocore traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            code: int = func(args)
        except (PerfReplayError, KeyboardInterrupt):
            raise
        except Exception as exc:
            where = args.store or os.environ.get("PERFREPLAY_STORE") or ".perfreplay"
            from ..snapshot.remote import describe_error, is_remote

            if not is_remote(where):
                raise
            raise StoreError(describe_error(exc, where)) from None
        return code

    return run


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _seconds(d: float | None) -> str:
    if d is None:
        return "-"
    if d >= 1:
        return f"{d:.2f} s"
    if d >= 1e-3:
        return f"{d * 1e3:.2f} ms"
    return f"{d * 1e6:.1f} µs"


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


# -- commands -----------------------------------------------------------------


@_remote_errors
def run_list(args: argparse.Namespace) -> int:
    files = _files(args)
    groups: dict[str, list[tuple[str, Header]]] = defaultdict(list)
    unreadable = 0
    for path, header in files.headers():
        if isinstance(header, Header):
            groups[header.target].append((path, header))
        else:
            unreadable += 1
    if not groups and not unreadable:
        print(f"no snapshots in {files.label}")
        return 0
    width = max([len(t) for t in groups] + [6])
    print(f"{'target':<{width}}  {'count':>5}  {'size':>9}  {'slowest':>10}  {'newest':<16}")
    for target in sorted(groups):
        items = groups[target]
        size = sum(h["payload"]["size"] for _, h in items)
        durations = [h.duration for _, h in items if h.duration is not None]
        newest = max((h.captured_at or 0.0) for _, h in items)
        print(
            f"{target:<{width}}  {len(items):>5}  {_size(size):>9}  "
            f"{_seconds(max(durations) if durations else None):>10}  {_when(newest):<16}"
        )
    total = sum(len(v) for v in groups.values())
    print(f"\n{total} snapshot(s) in {files.label}")
    if unreadable:
        print(f"{unreadable} unreadable file(s): run `perfreplay verify` to see why")
    return 0


@_remote_errors
def run_show(args: argparse.Namespace) -> int:
    files = _files(args)
    path = files.find(args.id)
    if not args.args:
        header = read_header_file(path) if not files.remote else files.store.read_header(path)
        print(printable(f"# {path}"))
        print(json.dumps(dict(header.fields), indent=2, sort_keys=True))
        _print_stand_ins(header)
        return 0
    snapshot = verify(
        files.read(path),
        keyring=files.keyring(),
        allow_unsigned=args.allow_unsigned,
        path=str(path),
    )
    state = "signature verified" if snapshot.signed else "UNSIGNED, not verified"
    print(printable(f"# {path} ({state})"))
    print(json.dumps(dict(snapshot.header.fields), indent=2, sort_keys=True))
    _print_stand_ins(snapshot.header)
    call_args, call_kwargs = snapshot.load_call()
    short = reprlib.Repr()
    short.maxstring = 200
    short.maxother = 200
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 20
    short.maxlevel = 4
    print("\nargs:")
    for i, value in enumerate(call_args):
        print(f"  [{i}] {short.repr(value)}")
    print("kwargs:")
    for key, value in call_kwargs.items():
        print(f"  {key}={short.repr(value)}")
    if snapshot.header.has_result:
        print(f"result: {short.repr(snapshot.load_result())}")
    return 0


def _print_stand_ins(header: Header) -> None:
    gaps = [g for g in header.get("unscrubbable") or [] if isinstance(g, dict)]
    if not gaps:
        return
    print(
        f"\n!! {len(gaps)} part(s) of the arguments could not be scrubbed; capture stored "
        "stand-ins instead of their values, so replay does not see production's input there:"
    )
    for g in gaps:
        print(printable(f"  {g.get('path', '?')}: {g.get('why', '?')}"))


@_remote_errors
def run_verify(args: argparse.Namespace) -> int:
    files = _files(args)
    keyring = files.keyring()
    paths = files.refs()
    failed = 0
    loadable: list[tuple[str, str, str]] = []
    payloads: list[bytes] = []
    for path in paths:
        try:
            snapshot = verify(
                files.read(path),
                keyring=keyring,
                allow_unsigned=args.allow_unsigned,
                allow_python_mismatch=True,  # a version mismatch is a replay-time matter
                path=str(path),
            )
        except (SnapshotError, OSError) as exc:
            failed += 1
            print(f"FAIL {printable(str(exc))}")
            continue
        sig = snapshot.header.get("sig")
        if snapshot.signed and isinstance(sig, dict) and keyring is not None:
            key_id = str(sig.get("key_id"))
            note = f" key {key_id} ({keyring.origin(key_id)})"
        else:
            note = " UNSIGNED (accepted by --allow-unsigned)"
        if getattr(args, "load", False):
            loadable.append((files.display(path), snapshot.header.target, note))
            payloads.append(snapshot.sections["args"])
            continue
        print(printable(f"ok   {files.display(path)} {snapshot.header.target}{note}"))
    if payloads:
        from .loadcheck import check_in_child

        for (shown, target, note), verdict in zip(loadable, check_in_child(payloads), strict=True):
            if verdict.get("ok") is False:
                failed += 1
                what = verdict.get("class") or "the arguments"
                print(
                    printable(f"FAIL {shown} {target}: cannot load {what}: {verdict.get('error')}")
                )
            else:
                print(printable(f"ok   {shown} {target}{note} (loads)"))
    swept = files.sweep_tmp()
    print(
        f"\n{len(paths) - failed} ok, {failed} failed"
        + (f"; swept {swept} temp file(s)" if swept else "")
    )
    if not paths:
        print(f"no snapshots in {files.label}")
    if failed and not files.remote:
        hint = legacy_key_hint(files.store.root)
        if hint:
            print(hint)
    return 1 if failed else 0


@_remote_errors
def run_prune(args: argparse.Namespace) -> int:
    if args.older_than is None and args.keep is None and not args.target and not args.invalid:
        raise PerfReplayError(
            "prune needs at least one of --older-than AGE, --keep N, --target T, --invalid"
        )
    files = _files(args)
    now = time.time()
    doomed: dict[str, str] = {}
    by_target: dict[str, list[tuple[str, Header]]] = defaultdict(list)
    keyring = files.keyring() if args.invalid else None
    for path, header in files.headers():
        if not isinstance(header, Header):
            if args.invalid:
                doomed[path] = f"unreadable: {header}"
            continue
        by_target[header.target].append((path, header))
        captured = header.captured_at
        if args.older_than is not None:
            when = captured if captured is not None else _mtime(path, files)
            if now - when > args.older_than:
                doomed[path] = "older than --older-than"
        if header.target in args.target:
            doomed[path] = "--target"
        if args.invalid and path not in doomed:
            try:
                verify(files.read(path), keyring=keyring, allow_python_mismatch=True, path=path)
            except (SnapshotError, OSError) as exc:
                doomed[path] = f"invalid: {exc}"
    if args.keep is not None:
        for items in by_target.values():
            alive = [(p, h) for p, h in items if p not in doomed]
            alive.sort(key=lambda ph: ph[1].duration or 0.0, reverse=True)
            for p, _ in alive[args.keep :]:
                doomed[p] = f"beyond the {args.keep} slowest"
    for path, why in sorted(doomed.items()):
        print(printable(f"{'would delete' if args.dry_run else 'deleted'} {path} ({why})"))
        if not args.dry_run:
            files.delete(path)
    swept = 0 if args.dry_run else files.sweep_tmp()
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(doomed)} snapshot(s)" + (f"; swept {swept} temp file(s)" if swept else ""))
    return 0


def _mtime(path: str, files: _Files) -> float:
    if files.remote:
        return time.time()  # no capture time in the header: never pruned by age alone
    try:
        return os.stat(path).st_mtime
    except OSError:
        return time.time()
