"""Property test: secrets hidden at random depths, in random container shapes (including
real pydantic and attrs models), never reach the disk, and the snapshot still loads."""

from __future__ import annotations

import importlib
import itertools
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_perfreplay.capture.decorator import capture
from pytest_perfreplay.replay.call import read_snapshot
from pytest_perfreplay.snapshot.format import Keyring
from pytest_perfreplay.snapshot.store import Store
from tests.capture_helpers import secret_models, targets
from tests.capture_helpers.fixtures import KEY

capmod = importlib.import_module("pytest_perfreplay.capture.decorator")

SECRET_KEYS = ["password", "access_token", "x-auth-token", "pin", "dsn", "jwt", "apiKey",
               "Authorization", "client_secret", "passphrase"]  # fmt: skip
PLAIN_KEYS = ["a", "items", "tokens", "toc_tokens", "author", "name", "max_tokens"]
_counter = itertools.count()


def secret() -> str:
    return f"SEKRIT{next(_counter):06d}zq"


plain_leaf = st.one_of(st.integers(), st.sampled_from(["x", "tokens", "v1"]), st.none())


@st.composite
def trees(draw: st.DrawFn, depth: int = 0) -> Any:
    """A random graph; every secret sits under a secret name at some depth."""
    if depth > 5 or draw(st.integers(0, 4)) == 0:
        if draw(st.booleans()):
            return draw(plain_leaf)
        key = draw(st.sampled_from(SECRET_KEYS))
        as_bytes = draw(st.booleans())
        value: Any = secret().encode() if as_bytes else secret()
        if draw(st.booleans()):  # sometimes a container of secrets under the secret name
            value = (value, secret()) if draw(st.booleans()) else {"user": secret()}
        return {key.encode() if as_bytes else key: value}
    kids = draw(st.lists(trees(depth + 1), min_size=1, max_size=3))
    shape = draw(st.sampled_from(["dict", "list", "tuple", "pydantic", "attrs", "object"]))
    if shape == "dict":
        keys = draw(st.lists(st.sampled_from(PLAIN_KEYS), min_size=len(kids),
                             max_size=len(kids), unique=True))  # fmt: skip
        return dict(zip(keys, kids, strict=True))
    if shape == "list":
        return kids
    if shape == "tuple":
        return tuple(kids)
    if shape == "pydantic":
        return secret_models.Envelope(payload=kids, password=secret())
    if shape == "attrs":
        return secret_models.Box(kids, token=secret())
    attribute = draw(st.sampled_from(SECRET_KEYS)).replace("-", "_")
    return secret_models.Node(kids, **{attribute: secret()})


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees(), by_keyword=st.booleans())
def test_no_secret_reaches_the_disk(tree: Any, by_keyword: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        capmod._reset()
        capmod.configure(enabled=True, store=root, key=KEY)
        try:
            f = capture(targets.echo)
            if by_keyword:
                f(data=tree)
            else:
                f(tree)
            assert capmod.stats()["captured"] == 1, capmod.stats()
            raw = b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())
            assert b"SEKRIT" not in raw
            [path] = Store(root).snapshot_paths()
            read_snapshot(path, keyring=Keyring.from_secrets(KEY)).load_call()
        finally:
            capmod._reset()
