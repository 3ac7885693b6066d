"""Real third-party model types that hold secrets (importable, so pickled by reference)."""

from __future__ import annotations

import functools
from typing import Any

import attrs
import pydantic


class DbSettings(pydantic.BaseModel):
    host: str
    password: str
    tokens: list[str] = []  # a parser's output, not a secret


class FrozenSettings(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True)

    name: str
    dsn: str


class Child(DbSettings):
    pin: str = "0000"


@attrs.define
class SlottedCreds:
    user: str
    passphrase: str


@attrs.frozen
class FrozenKey:
    key_id: str
    private: str


@attrs.define(slots=False)
class PlainAttrs:
    name: str
    signature: str


class Slotted:
    __slots__ = ("jwt",)

    def __init__(self, jwt: str) -> None:
        self.jwt = jwt


class SlottedWithDict(Slotted):
    """A subclass of a slotted class has a __dict__ too: both must be walked."""

    def __init__(self, jwt: str, password: str) -> None:
        super().__init__(jwt)
        self.password = password


class AttrDict(dict[str, Any]):
    """A dict subclass that also carries attributes."""


def deco(func: Any) -> Any:
    @functools.wraps(func)
    def inner(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return inner


@deco
def connect(host: str, secret: str) -> str:
    return f"{host}:{len(secret)}"


def get_token(user: str) -> str:
    return f"opaque-{user}-RESULT-1a2b3c"


def login_result(user: str) -> dict[str, Any]:
    return {"user": user, "access_token": f"tok-RESULT-{user}-9z8y", "tokens": 3}


UPSTREAM_KEY = "AKIA" + "IOSFODNN7EXAMPLE"  # split, so the source file is not the secret


def fail_with(code: int) -> None:
    raise ValueError(f"upstream refused key {UPSTREAM_KEY} (code {code})")


def tokenize(text: str, tokensource: Any = None, toc_tokens: Any = None) -> int:
    return len(text)


class Envelope(pydantic.BaseModel):
    """A pydantic model that carries arbitrary nested data beside a secret field."""

    payload: Any = None
    password: str = ""


@attrs.define
class Box:
    data: Any
    token: str = ""


class Node:
    def __init__(self, data: Any, **secrets: Any) -> None:
        self.data = data
        for k, v in secrets.items():
            setattr(self, k, v)
