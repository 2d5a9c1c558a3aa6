"""Telling a plain ``redis://`` client that the port it reached speaks TLS.

A Redis server's TLS port answers plain text by dropping the connection, which looks
exactly like a server restarting: it would be retried until the connection timeout and
reported as unavailable. So the plain connections used here check, when their very
first exchange is cut off, whether the port completes a TLS handshake; if it does, the
URL is wrong (``redis://`` where ``rediss://`` was meant), which no retry can fix, and
``PlainTextToTLS`` says so at once (``redis_failures.refusal`` treats it as a refusal).
The check costs nothing while connections work: it runs only on that failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.exceptions as redis_errors

PROBE_TIMEOUT = 1.0  # seconds for the TLS handshake of the check


class PlainTextToTLS(redis_errors.ConnectionError):
    """A ``redis://`` (plain) client reached a port that speaks TLS."""


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False  # any TLS server at all is the answer
    context.verify_mode = ssl.CERT_NONE
    return context


def _refusal(host: str, port: int) -> PlainTextToTLS:
    return PlainTextToTLS(f"{host}:{port} speaks TLS but the URL is a plain redis:// "
                          "one: use rediss:// (with broker_use_ssl / "
                          "redis_backend_use_ssl for the certificates)")


def speaks_tls(host: str, port: int) -> bool:
    """Whether ``host:port`` completes a TLS handshake (blocking, bounded)."""
    try:
        with socket.create_connection((host, port), PROBE_TIMEOUT) as sock, \
                _context().wrap_socket(sock, server_hostname=host):
            return True
    except (OSError, ssl.SSLError):
        return False


async def speaks_tls_async(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=_context()), PROBE_TIMEOUT)
    except (OSError, ssl.SSLError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return True


class PlainConnection(aioredis.Connection):
    """redis.asyncio's plain connection, checking for a TLS port when cut off at once."""

    async def on_connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().on_connect_check_health(*args, **kwargs)
        except redis_errors.ConnectionError as exc:
            if await speaks_tls_async(self.host, self.port):
                raise _refusal(self.host, self.port) from exc
            raise


class PlainSyncConnection(redis.Connection):
    """redis-py's sync plain connection, with the same check."""

    def on_connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().on_connect_check_health(*args, **kwargs)
        except redis_errors.ConnectionError as exc:
            if speaks_tls(self.host, self.port):
                raise _refusal(self.host, self.port) from exc
            raise
