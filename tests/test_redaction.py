"""Redaction by exact key names and secret shapes, through real model libraries.

Every case writes a real snapshot through ``@capture`` and reads the raw files: the
secret must not be on disk, the snapshot must still load, and non-secrets must survive.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any

import pytest
import requests
from requests.auth import HTTPBasicAuth

from pytest_perfreplay.capture.decorator import capture, stats
from pytest_perfreplay.capture.redact import Redact, Redactor, key_words
from tests.capture_helpers import fixtures, secret_models, targets
from tests.capture_helpers.fixtures import Cap

cap = fixtures.cap

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
AWS = "AKIAIOSFODNN7EXAMPLE"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"


def load_one(cap: Cap) -> tuple[tuple[Any, ...], dict[str, Any]]:
    [snap] = cap.snapshots()
    return snap.load_call()  # type: ignore[no-any-return]


def paths(cap: Cap) -> set[str]:
    return {r["path"] for s in cap.snapshots() for r in s.header["redactions"]}


def assert_not_on_disk(cap: Cap, *secrets: str | bytes) -> None:
    raw = cap.raw_bytes()
    for s in secrets:
        assert (s.encode() if isinstance(s, str) else s) not in raw, s


# -- the name rule ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["token", "access_token", "id_token", "refresh_token", "x-auth-token", "accessToken",
     "X-Amz-Security-Token", "password", "PASSWORD", "password_b64", "db_password2", "pin",
     "dsn", "jwt", "passphrase", "private", "signature", "api_key", "apiKey", "X-API-Key",
     "AWS_SECRET_ACCESS_KEY", "authorization", "HTTP_AUTHORIZATION", "Cookie", "set-cookie",
     "client_secret", "credentials", "auth", "sessionid", "session_id"],
)  # fmt: skip
def test_secret_names_match(key: str) -> None:
    r = Redactor()
    assert r.key_denied(key), key_words(key)
    # The byte pre-filter must see every name the exact rule denies.
    assert r.may_match(b"\x8c" + bytes([len(key)]) + key.encode())


@pytest.mark.parametrize(
    "key",
    ["tokens", "toc_tokens", "tokensource", "max_tokens", "tokenizer", "password_hash",
     "author", "authority", "session", "spinner", "pinned", "signatures_count", "privacy",
     "secretary", "keys", "key", "cookies_enabled_flag", "session_factory"],
)  # fmt: skip
def test_non_secret_names_do_not_match(key: str) -> None:
    assert not Redactor().key_denied(key), key_words(key)


def test_prefilter_ignores_substrings_of_words() -> None:
    r = Redactor()
    for blob in [b"toc_tokens", b"tokensource", b"mapping shipping typing", b"authority"]:
        assert not r.may_match(blob), blob
    for blob in [JWT.encode(), AWS.encode(), PEM.encode(), b"Bearer abcdefgh12345678"]:
        assert r.may_match(blob), blob


# -- shapes the old denylist missed ----------------------------------------------------


def test_pydantic_v2_models_and_subclasses(cap: Cap) -> None:
    f = capture(targets.echo)
    settings = secret_models.DbSettings(host="db", password="pw-PYDANTIC-1a2b", tokens=["a"])
    frozen = secret_models.FrozenSettings(name="x", dsn="postgres://u:pw-DSN-3c4d@db/x")
    child = secret_models.Child(host="h", password="pw-CHILD-5e6f", pin="pin-CHILD-7a8b")
    f(settings, frozen, child)
    assert_not_on_disk(cap, "pw-PYDANTIC-1a2b", "pw-DSN-3c4d", "pw-CHILD-5e6f", "pin-CHILD-7a8b")
    (a, b, c), _ = load_one(cap)
    assert a.host == "db" and a.password == "<redacted>" and a.tokens == ["a"]
    assert b.dsn == "<redacted>" and c.pin == "<redacted>" and c.host == "h"
    assert settings.password == "pw-PYDANTIC-1a2b"  # the caller's model is untouched


def test_attrs_slotted_frozen_and_dict_classes(cap: Cap) -> None:
    f = capture(targets.echo)
    f(
        secret_models.SlottedCreds("ann", "pp-ATTRS-1a2b"),
        secret_models.FrozenKey("k1", "pk-ATTRS-3c4d"),
        secret_models.PlainAttrs("n", "sig-ATTRS-5e6f"),
    )
    assert_not_on_disk(cap, "pp-ATTRS-1a2b", "pk-ATTRS-3c4d", "sig-ATTRS-5e6f")
    (a, b, c), _ = load_one(cap)
    assert (a.user, a.passphrase) == ("ann", "<redacted>")
    assert (b.key_id, b.private) == ("k1", "<redacted>")
    assert c.signature == "<redacted>"


def test_slotted_class_with_a_dict_subclass(cap: Cap) -> None:
    capture(targets.echo)(secret_models.SlottedWithDict("jwt-SLOT-1a2b", "pw-SUBDICT-3c4d"))
    assert_not_on_disk(cap, "jwt-SLOT-1a2b", "pw-SUBDICT-3c4d")
    (obj,), _ = load_one(cap)
    assert obj.jwt == "<redacted>" and obj.password == "<redacted>"


def test_partial_keywords_dict_subclass_attributes_and_bytes_keys(cap: Cap) -> None:
    f = capture(targets.echo)
    part = functools.partial(targets.login, "ann", password="pw-PARTIAL-1a2b")
    attr_dict = secret_models.AttrDict(user="ann")
    attr_dict.api_key = "key-ATTRDICT-3c4d"  # type: ignore[attr-defined]
    raw = {b"password": b"pw-BYTESKEY-5e6f", b"user": b"ann"}
    f(part, attr_dict, raw)
    assert_not_on_disk(cap, "pw-PARTIAL-1a2b", "key-ATTRDICT-3c4d", "pw-BYTESKEY-5e6f")
    (p, d, r), _ = load_one(cap)
    assert p.keywords == {"password": "<redacted>"} and p() == "ann:10"
    assert d == {"user": "ann"} and d.api_key == "<redacted>"
    assert r == {b"password": b"<redacted>", b"user": b"ann"}


def test_defaults_of_functions_pickled_by_value(cap: Cap) -> None:
    def connect(host: str, password: str = "pw-DEFAULT-1a2b", *, token: str = "tk-KW-3c4d") -> str:
        return host + password + token

    capture(targets.echo)(connect)
    assert_not_on_disk(cap, "pw-DEFAULT-1a2b", "tk-KW-3c4d")
    (fn,), _ = load_one(cap)
    assert fn("h") == "h<redacted><redacted>"


def test_parameter_names_follow_functools_wraps(cap: Cap) -> None:
    f = capture(secret_models.connect)  # @capture over another functools.wraps decorator
    assert f("db", "sec-WRAPPED-1a2b") == "db:16"
    assert_not_on_disk(cap, "sec-WRAPPED-1a2b")
    assert load_one(cap) == (("db", "<redacted>"), {})


def test_requests_session_auth_and_auth_tuples(cap: Cap) -> None:
    f = capture(targets.echo)
    session = requests.Session()
    session.auth = ("ann", "pw-SESSION-1a2b")
    session.headers["Authorization"] = "Bearer opaque-HEADER-3c4d"
    session.headers["X-Request-Id"] = "rid-1"
    f(session, auth=("bob", "pw-AUTHTUPLE-5e6f"), basic=HTTPBasicAuth("cy", "pw-BASIC-7a8b"))
    assert_not_on_disk(cap, "pw-SESSION-1a2b", "opaque-HEADER-3c4d", "pw-AUTHTUPLE-5e6f")
    (s,), kw = load_one(cap)
    assert isinstance(s, requests.Session)
    assert s.auth == ("<redacted>", "<redacted>")
    assert s.headers["Authorization"] == "<redacted>"
    assert s.headers["X-Request-Id"] == "rid-1"  # the header names and other headers stay
    assert kw["auth"] == ("<redacted>", "<redacted>")
    # An auth object under an innocent key is caught by its attribute name.
    assert kw["basic"].username == "cy"
    assert_not_on_disk(cap, "pw-BASIC-7a8b")


def test_asgi_and_wsgi_header_shapes(cap: Cap) -> None:
    f = capture(targets.echo)
    scope = {
        "type": "http",
        "headers": [(b"authorization", b"Basic b3BhcXVlLUFTR0k="), (b"accept", b"*/*"),
                    (b"x-forwarded-token", b"tok-ASGI-3c4d"), (b"x-trace", JWT.encode())],
    }  # fmt: skip
    environ = {"HTTP_AUTHORIZATION": "Digest wsgi-WSGI-5e6f", "PATH_INFO": "/x"}
    f(scope, environ)
    assert_not_on_disk(cap, "b3BhcXVlLUFTR0k=", "tok-ASGI-3c4d", JWT, "wsgi-WSGI-5e6f")
    (s, e), _ = load_one(cap)
    assert s["headers"][0] == (b"authorization", b"<redacted>")
    assert s["headers"][1] == (b"accept", b"*/*")
    assert s["headers"][3] == (b"x-trace", b"<redacted>")  # by shape, under headers
    assert e == {"HTTP_AUTHORIZATION": "<redacted>", "PATH_INFO": "/x"}


def test_keep_result_scrubs_results_and_exception_messages(cap: Cap) -> None:
    get_token = capture(keep_result=True)(secret_models.get_token)
    login = capture(keep_result=True)(secret_models.login_result)
    fail = capture(keep_result=True)(secret_models.fail_with)
    assert get_token("ann") == "opaque-ann-RESULT-1a2b3c"
    assert login("bob")["access_token"] == "tok-RESULT-bob-9z8y"
    with pytest.raises(ValueError):
        fail(7)
    assert_not_on_disk(cap, "opaque-ann-RESULT-1a2b3c", "tok-RESULT-bob-9z8y", AWS)
    results = {s.header.target.rsplit(":", 1)[1]: s.load_result() for s in cap.snapshots()}
    assert results["get_token"] == ("return", "<redacted>")  # named for what it returns
    assert results["login_result"] == (
        "return", {"user": "bob", "access_token": "<redacted>", "tokens": 3},
    )  # fmt: skip
    kind, (exc_type, message) = results["fail_with"]
    assert kind == "raise" and exc_type == "builtins.ValueError"
    assert message == "<redacted>"


def test_value_scan_is_opt_in_everywhere(cap: Cap) -> None:
    plain = capture(targets.echo)
    plain({"note": f"key {AWS}"})
    assert cap.raw_bytes().count(AWS.encode()) == 1  # off by default outside headers
    scanning = capture(redact=Redact(scan_values=True))(targets.login)
    scanning("ann", f"x {PEM}")  # caught twice over: by parameter name and by shape
    scanning(PEM, "x")
    (user, _), _ = [s.load_call() for s in cap.snapshots() if "login" in s.header.target][-1]
    assert user == "<redacted>" or "BEGIN" not in str(user)
    assert "RSA PRIVATE KEY" not in cap.raw_bytes().decode("latin-1")


# -- over-redaction: parser internals and placeholders stay ----------------------------


def test_tokens_and_generators_are_not_redacted(cap: Cap) -> None:
    f = capture(secret_models.tokenize)
    gen = (t for t in ["a", "b"])
    f("text", tokensource=gen, toc_tokens=[{"id": "h1", "name": "Intro"}])
    _, kw = load_one(cap)
    assert kw["toc_tokens"] == [{"id": "h1", "name": "Intro"}]
    assert "<redacted>" not in repr(kw["tokensource"])  # a placeholder, not a redaction
    assert paths(cap) == set()
    assert stats()["skipped"] == {}


def test_a_generator_under_a_secret_name_stays_a_placeholder(cap: Cap) -> None:
    capture(targets.echo)(token=(c for c in "abc"), secret=OrderedDict(v="sec-OD-1a2b"))
    assert_not_on_disk(cap, "sec-OD-1a2b")
    _, kw = load_one(cap)
    assert type(kw["token"]).__name__ == "Placeholder"
    assert kw["secret"] == OrderedDict(v="<redacted>")


def test_extra_names_use_the_same_exact_rule(cap: Cap) -> None:
    f = capture(redact=["url"])(targets.echo)
    f(url="postgres://pw-URL@db", database_url="redis://pw-DBURL@r", urls=["kept"])
    _, kw = load_one(cap)
    assert kw == {"url": "<redacted>", "database_url": "<redacted>", "urls": ["kept"]}


def test_bad_redact_spec_says_what_is_accepted() -> None:
    with pytest.raises(TypeError, match="'strict'"):
        capture(redact="loose")(targets.echo)
