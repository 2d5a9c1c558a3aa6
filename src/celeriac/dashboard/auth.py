"""Who may use the dashboard, CSRF on every action, and which addresses it may bind.

Authentication (any configured method that accepts a request lets it in):

- ``--basic-auth user:password``: HTTP Basic. The expected and the offered credentials
  are both hashed (SHA-256) and compared with ``hmac.compare_digest``, so neither their
  length nor their content leaks through timing;
- ``--auth-token T``: ``Authorization: Bearer T``, compared the same way;
- ``--auth-header NAME``: reverse-proxy mode. An authenticating proxy in front (oauth2-
  proxy, an SSO gateway) checks the user and sets ``NAME`` (e.g. ``X-Forwarded-User``);
  the dashboard trusts it as the user's identity. Only safe when the dashboard is
  reachable through that proxy alone (and the proxy removes the header from what clients
  send), since anyone who reaches the dashboard directly can set it.

Failures are 401 JSON, with ``WWW-Authenticate`` for Basic and Bearer. ``/healthz`` is
open, for load balancers. Credentials are never logged nor shown: ``describe`` names the
methods only.

CSRF: a browser sends a site's cookies and Basic credentials with a request another
site makes it send, so every POST must also carry a token that only the dashboard's own
pages and scripts can know: ``X-CSRF-Token`` (scripts: ``GET /api/csrf``) or a
``csrf_token`` form field (pages: ``request.state.csrf_token``, also in
``<meta name="csrf-token">``). The token is an HMAC of a secret (``--secret`` /
``CELERIAC_DASHBOARD_SECRET``, shared by several dashboard processes behind one address,
else random per process) and the authenticated identity, so one user's token is no use
to another. A missing or wrong token is 403 JSON. Another site cannot read the token:
the API sends no CORS headers.

Binding: a dashboard on a loopback address serves this machine only; on any other
address it refuses to start without authentication unless ``--insecure`` says that is
meant (``check_bind``). Without authentication (and without ``--insecure``) it also
answers only requests whose ``Host`` is a loopback name: a web page whose own name was
made to resolve to 127.0.0.1 (DNS rebinding) would otherwise be same-origin with it,
read a CSRF token and act.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from celeriac.errors import ConfigurationError

CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
OPEN_PATHS = frozenset({"/healthz"})  # load balancers' checks carry no credentials
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_MAX = 1 << 20  # bytes of a form body read to find its CSRF field
ANONYMOUS = "anonymous"


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class AuthConfig:
    """The dashboard's authentication; ``repr`` and ``describe`` show no secret."""

    basic: str | None = field(default=None, repr=False)  # "user:password"
    token: str | None = field(default=None, repr=False)
    header: str | None = None
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    # Without authentication: answer loopback Host names only (see the module).
    loopback_hosts_only: bool = True

    def __post_init__(self) -> None:
        if self.basic is not None:
            user, colon, password = self.basic.partition(":")
            if not colon or not user or not password:
                raise ConfigurationError("--basic-auth must be USER:PASSWORD, both non-empty")
        if self.token is not None and (not self.token or self.token != self.token.strip()):
            raise ConfigurationError("--auth-token must be non-empty, without spaces around")
        if self.header is not None and not _is_header_name(self.header):
            raise ConfigurationError(f"--auth-header must be an HTTP header name "
                                     f"(letters, digits, '-'), not {self.header!r}")

    @property
    def enabled(self) -> bool:
        return self.basic is not None or self.token is not None or self.header is not None

    def describe(self) -> str:
        """The methods, for the startup line: never a credential."""
        methods = [name for name, on in (("basic", self.basic), ("token", self.token),
                                         (f"header {self.header}", self.header)) if on]
        return "auth: " + (", ".join(methods) if methods else "none")

    def identity(self, headers: dict[str, str]) -> str | None:
        """Who sent a request with these (lower-cased) headers; None: not authenticated."""
        if not self.enabled:
            return ANONYMOUS
        if self.header is not None:
            user = headers.get(self.header.lower(), "").strip()
            if user:
                return f"header:{user}"
        scheme, _, value = headers.get("authorization", "").partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if self.basic is not None and scheme == "basic":
            offered = _basic_credentials(value)
            if offered is not None and hmac.compare_digest(_digest(offered),
                                                           _digest(self.basic)):
                return f"basic:{offered.partition(':')[0]}"
        if self.token is not None and scheme == "bearer" and value \
                and hmac.compare_digest(_digest(value), _digest(self.token)):
            return "token"
        return None

    def csrf_token(self, identity: str) -> str:
        return hmac.new(self.secret, identity.encode("utf-8", "surrogatepass"),
                        hashlib.sha256).hexdigest()

    def csrf_ok(self, identity: str, offered: str | None) -> bool:
        return offered is not None and hmac.compare_digest(
            offered.encode("utf-8", "surrogatepass"), self.csrf_token(identity).encode())

    def challenge(self) -> str | None:
        """The ``WWW-Authenticate`` of a 401 (Basic first: browsers then ask for it)."""
        if self.basic is not None:
            return 'Basic realm="celeriac dashboard", charset="UTF-8"'
        if self.token is not None:
            return 'Bearer realm="celeriac dashboard"'
        return None


def _basic_credentials(value: str) -> str | None:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def _is_header_name(name: str) -> bool:
    return bool(name) and all(c.isascii() and (c.isalnum() or c in "-_") for c in name)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def check_bind(host: str, auth: AuthConfig, insecure: bool) -> None:
    """Refuse a non-loopback address without authentication, unless ``insecure``."""
    if not is_loopback(host) and not auth.enabled and not insecure:
        raise ConfigurationError(
            f"refusing to serve the dashboard on {host} without authentication: anyone "
            f"who reaches it could revoke tasks and stop workers; add --basic-auth, "
            f"--auth-token or --auth-header, bind 127.0.0.1, or pass --insecure")


class AuthMiddleware:
    """Authenticates every request and checks the CSRF token of every action (ASGI).

    Sets ``request.state.identity`` and ``request.state.csrf_token`` for the routes.
    """

    def __init__(self, app: ASGIApp, config: AuthConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1")
                   for key, value in scope.get("headers", ())}
        if not self.config.enabled and self.config.loopback_hosts_only \
                and not is_loopback(_hostname(headers.get("host", ""))):
            await _json(send, 403, "this dashboard has no authentication and answers "
                        "requests for localhost only")
            return
        identity = self.config.identity(headers)
        if identity is None:
            challenge = self.config.challenge()
            await _json(send, 401, "authentication required",
                        {"www-authenticate": challenge} if challenge else {})
            return
        token = self.config.csrf_token(identity)
        state = scope.setdefault("state", {})
        state["identity"], state["csrf_token"] = identity, token
        if scope["method"] not in SAFE_METHODS:
            offered = headers.get(CSRF_HEADER)
            if offered is None and _is_form(headers):
                body, receive = await _buffered(receive)
                offered = _form_field(body, headers)
            if not self.config.csrf_ok(identity, offered):
                await _json(send, 403, "missing or wrong CSRF token: send the X-CSRF-Token "
                            "header (GET /api/csrf) or the csrf_token form field")
                return
        await self.app(scope, receive, send)


def _hostname(host: str) -> str:
    """The name of a ``Host`` header, without its port (``[::1]:5555`` -> ``::1``)."""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_form(headers: dict[str, str]) -> bool:
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    return kind in ("application/x-www-form-urlencoded", "multipart/form-data")


async def _buffered(receive: Receive) -> tuple[bytes, Receive]:
    """The request body (up to FORM_MAX), and a ``receive`` that replays it."""
    chunks: list[bytes] = []
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > FORM_MAX:
            break
        chunks.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


def _form_field(body: bytes, headers: dict[str, str]) -> str | None:
    kind = headers.get("content-type", "").lower()
    if kind.startswith("application/x-www-form-urlencoded"):
        values = parse_qs(body.decode("latin-1"), keep_blank_values=True).get(CSRF_FIELD)
        return values[0] if values else None
    # multipart: find the field's part by its name (pages post small forms).
    marker = f'name="{CSRF_FIELD}"'.encode()
    at = body.find(marker)
    if at < 0:
        return None
    start = body.find(b"\r\n\r\n", at)
    end = body.find(b"\r\n", start + 4)
    if start < 0 or end < 0:
        return None
    return body[start + 4:end].decode("latin-1")


async def _json(send: Send, status: int, error: str,
                extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": error}).encode()
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json"),
                                          (b"content-length", str(len(body)).encode())]
    headers += [(key.encode(), value.encode()) for key, value in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def request_state(scope: Scope) -> dict[str, Any]:
    """What the middleware set for a request (identity, csrf_token)."""
    state: dict[str, Any] = scope.get("state", {})
    return state


def csrf_token(request: HTTPConnection) -> str:
    """The CSRF token of this request's user, for pages to embed (the middleware sets it)."""
    return str(request_state(request.scope).get("csrf_token", ""))
