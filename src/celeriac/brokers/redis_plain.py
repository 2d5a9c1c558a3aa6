"""Telling a plain ``redis://`` client that the port it reached speaks TLS.

A Redis server's TLS port answers plain text by dropping the connection, which looks
exactly like a server restarting: it would be retried until the connection timeout and
reported as unavailable. So the plain connections used here check, when their very
first exchange is cut off, whether the port answers a TLS ClientHello in TLS; if so, the
URL is wrong (``redis://`` where ``rediss://`` was meant), which no retry can fix, and
``PlainTextToTLS`` says so at once (``redis_failures.refusal`` treats it as a refusal).
The check costs nothing while connections work: it runs only on that failure.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from celeriac.tls import speaks_tls, speaks_tls_async

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
