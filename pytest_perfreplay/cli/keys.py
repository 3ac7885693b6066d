"""``perfreplay key show|migrate``: where the local signing key lives, and trusting an
old store's own key after the user vouches for it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..snapshot.keys import legacy_key_hint, local_keyring, migrate_store_key, user_key_path
from ..snapshot.store import Store


def register(sub: Any) -> None:
    p = sub.add_parser("key", help="the local signing key: show it, or migrate an old store's key")
    ksub = p.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    show = ksub.add_parser("show", help="which keys sign and verify here, and where they live")
    show.add_argument("--store", default=None, help="also check this store for an old key")
    show.set_defaults(func=run_show)
    mig = ksub.add_parser(
        "migrate",
        help="trust the key an older version kept inside a store you created yourself",
    )
    mig.add_argument("--store", default=None, help="store folder (default .perfreplay)")
    mig.set_defaults(func=run_migrate)


def run_show(args: argparse.Namespace) -> int:
    keyring = local_keyring(create=False)
    if keyring is None:
        print(f"no key yet; the first capture creates {user_key_path()}")
    else:
        signing = keyring.signing[0] if keyring.signing else None
        for key_id in sorted(keyring.verifying):
            role = "signs and verifies" if key_id == signing else "verifies"
            print(f"{key_id}  {role}  {keyring.origin(key_id)}")
    hint = legacy_key_hint(Store.from_env(args.store).root)
    if hint:
        print(hint)
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    store = Store.from_env(args.store)
    key_id, dest = migrate_store_key(Path(store.root))
    print(
        f"migrated key {key_id} from {store.root} to {dest} (verify only; new snapshots are "
        f"signed with {user_key_path()})"
    )
    return 0
