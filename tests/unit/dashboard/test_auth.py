"""The dashboard's authentication, CSRF tokens and bind rule (``dashboard.auth``)."""

from __future__ import annotations

import base64

import pytest

from celeriac.dashboard.auth import AuthConfig, check_bind, is_loopback
from celeriac.errors import ConfigurationError


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {token}"}


def test_each_method_accepts_its_credentials_and_nothing_else() -> None:
    auth = AuthConfig(basic="admin:s3cret:with:colons", token="tok-123", header="X-User")
    assert auth.identity(basic("admin", "s3cret:with:colons")) == "basic:admin"
    assert auth.identity({"authorization": "Bearer tok-123"}) == "token"
    assert auth.identity({"x-user": "alice"}) == "header:alice"
    for headers in ({}, basic("admin", "wrong"), basic("other", "s3cret:with:colons"),
                    {"authorization": "Bearer tok-1234"}, {"authorization": "Basic !!"},
                    {"authorization": "Bearer "}, {"x-user": "  "}):
        assert auth.identity(headers) is None, headers
    assert AuthConfig().identity({}) == "anonymous"


def test_csrf_tokens_belong_to_one_identity_and_one_secret() -> None:
    auth = AuthConfig(token="t")
    token = auth.csrf_token("basic:alice")
    assert auth.csrf_ok("basic:alice", token)
    assert not auth.csrf_ok("basic:bob", token)
    assert not auth.csrf_ok("basic:alice", None)
    altered = token[:-1] + ("1" if token.endswith("0") else "0")  # one character changed
    assert not auth.csrf_ok("basic:alice", altered)
    assert not AuthConfig(token="t").csrf_ok("basic:alice", token)  # another process
    shared = AuthConfig(token="t", secret=b"k" * 32)
    assert AuthConfig(token="t", secret=b"k" * 32).csrf_ok("x", shared.csrf_token("x"))


def test_no_secret_is_shown() -> None:
    auth = AuthConfig(basic="admin:hunter2", token="tok-hunter3", header="X-User")
    for text in (auth.describe(), repr(auth)):
        assert "hunter" not in text
    assert auth.describe() == "auth: basic, token, header X-User"
    assert AuthConfig().describe() == "auth: none"


@pytest.mark.parametrize("value", ["admin", ":pw", "admin:"])
def test_malformed_basic_auth_is_refused(value: str) -> None:
    with pytest.raises(ConfigurationError, match="USER:PASSWORD"):
        AuthConfig(basic=value)


def test_a_public_address_needs_auth_unless_insecure() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]",
                                        "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.com"))
    with pytest.raises(ConfigurationError, match="refusing to serve the dashboard on "
                                                 "0.0.0.0 without authentication"):
        check_bind("0.0.0.0", AuthConfig(), insecure=False)
    check_bind("0.0.0.0", AuthConfig(), insecure=True)
    check_bind("0.0.0.0", AuthConfig(token="t"), insecure=False)
    check_bind("127.0.0.1", AuthConfig(), insecure=False)
