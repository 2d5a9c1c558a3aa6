"""Telling a plain ``redis://`` client that the port it reached speaks TLS.

A Redis server's TLS port answers plain text by dropping the connection, which looks
exactly like a server restarting: it would be retried until the connection timeout and
reported as unavailable. So the plain connections used here check, when their very
first exchange is cut off, whether the port answers a TLS ClientHello in TLS; if so, the
URL is wrong (``redis://`` where ``rediss://`` was meant), which no retry can fix, and
``PlainTextToTLS`` says so at once (``redis_failures.refusal`` treats it as a refusal).
The check costs nothing while connections work: it runs only on that failure.

The TLS connections ask the opposite question on the same failure (``TLSRefused``):
whether the server refuses this client, its alert (TLS 1.3: "certificate required")
lost to the server's reset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from celeriac.errors import ConfigurationError
from celeriac.tls import client_context, handshake_refusal, speaks_tls, speaks_tls_async

# host:port pairs this process has talked plain Redis to: never checked again, so a
# server that restarts or a flapping link costs no check (a plain server may take the
# whole PROBE_TIMEOUT to not answer).
_reached: set[tuple[str, int]] = set()


class PlainTextToTLS(redis_errors.ConnectionError):
    """A ``redis://`` (plain) client reached a port that speaks TLS."""


def _refusal(host: str, port: int) -> PlainTextToTLS:
    return PlainTextToTLS(f"{host}:{port} speaks TLS but the URL is a plain redis:// "
                          "one: use rediss:// (with broker_use_ssl / "
                          "redis_backend_use_ssl for the certificates)")


def _unknown(host: str, port: int, exc: redis_errors.ConnectionError) -> bool:
    """Whether to check: a dropped connection (not an answer: AuthenticationError is a
    ConnectionError too) to a server this process has never talked plain Redis to."""
    return (host, port) not in _reached and not isinstance(
        exc, redis_errors.AuthenticationError | redis_errors.AuthorizationError)


class PlainConnection(aioredis.Connection):
    """redis.asyncio's plain connection, checking for a TLS port when cut off at once."""

    async def on_connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().on_connect_check_health(*args, **kwargs)
        except redis_errors.ConnectionError as exc:
            if _unknown(self.host, self.port, exc) and await speaks_tls_async(
                    self.host, self.port):
                raise _refusal(self.host, self.port) from exc
            raise
        _reached.add((self.host, self.port))


class PlainSyncConnection(redis.Connection):
    """redis-py's sync plain connection, with the same check."""

    def on_connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().on_connect_check_health(*args, **kwargs)
        except redis_errors.ConnectionError as exc:
            if _unknown(self.host, self.port, exc) and speaks_tls(self.host, self.port):
                raise _refusal(self.host, self.port) from exc
            raise
        _reached.add((self.host, self.port))


# -- the same question the other way round: why did the TLS server drop us? ---------------

# host:port pairs this process has talked TLS to: never diagnosed again (see _reached).
_reached_tls: set[tuple[str, int]] = set()


class TLSRefused(redis_errors.ConnectionError):
    """The TLS server refused this client after the handshake (``celeriac.tls.
    handshake_refusal``: a client certificate it requires, say)."""


class _TLSCheck:
    """Mixed into the TLS connections: a connection to a server never reached that is
    dropped while opening is diagnosed (``handshake_refusal``), since TLS 1.3's alert
    saying why can be lost to the server's reset."""

    host: str
    port: int
    diagnosis_options: Mapping[str, Any] = {}  # set per RedisSettings

    def _check(self, exc: redis_errors.ConnectionError) -> bool:
        return (self.host, self.port) not in _reached_tls and not isinstance(
            exc, redis_errors.AuthenticationError | redis_errors.AuthorizationError)

    def _why(self) -> str | None:
        try:
            context = client_context(self.diagnosis_options)
        except ConfigurationError:
            return None  # the connection itself says what is wrong with the files
        return handshake_refusal(self.host, self.port, context)


class TLSConnection(_TLSCheck, aioredis.SSLConnection):
    async def on_connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().on_connect_check_health(*args, **kwargs)
        except redis_errors.ConnectionError as exc:
            if self._check(exc) and (why := await asyncio.to_thread(self._why)):
                raise TLSRefused(why) from exc
            raise
        _reached_tls.add((self.host, self.port))


class TLSSyncConnection(_TLSCheck, redis.SSLConnection):
    def on_connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().on_connect_check_health(*args, **kwargs)
        except redis_errors.ConnectionError as exc:
            if self._check(exc) and (why := self._why()):
                raise TLSRefused(why) from exc
            raise
        _reached_tls.add((self.host, self.port))


def tls_connection_classes(options: Mapping[str, Any]
                           ) -> tuple[type[TLSConnection], type[TLSSyncConnection]]:
    """The async and sync TLS connection classes, diagnosing with ``options``."""
    values = {"diagnosis_options": dict(options)}
    return (type("TLSConnection", (TLSConnection,), values),
            type("TLSSyncConnection", (TLSSyncConnection,), values))
