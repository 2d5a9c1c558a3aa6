"""How Redis failures become celeriac errors, shared by the Redis broker and backend.

Errors, in three kinds (``refusal`` tells them apart):

- *refused* (``BrokerRefused`` / ``BackendRefused``): causes retrying cannot fix, raised
  at once with the server's own words: a refused password (WRONGPASS, NOAUTH), a user
  not permitted a command (NOPERM), an unknown database index, a TLS certificate that
  is not trusted or a TLS handshake that fails;
- *unavailable* (``BrokerUnavailable`` / ``BackendError``): a refused, reset or silent
  connection. Every command is retried on a fresh connection with a capped backoff
  until the call's deadline (the connection timeout) passes; the error then names the
  last real cause (``ConnectionRefusedError ...``), not only the deadline;
- anything else Redis reports (an error reply): ``BrokerError`` / ``BackendError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ssl
from collections.abc import Iterator

import redis.exceptions as redis_errors

from celeriac.brokers.redis_plain import PlainTextToTLS, TLSRefused
from celeriac.errors import CeleriacError, refused_error

# The last failure of a retried command in this task (set by ``retryable``, which
# redis-py calls in the caller's task), so that a call cut off by its deadline reports
# what actually went wrong rather than only that time ran out.
_last_failure: contextvars.ContextVar[BaseException | None] = contextvars.ContextVar(
    "celeriac_redis_last_failure", default=None)

_REFUSED_REPLIES = ("WRONGPASS", "NOAUTH", "NOPERM", "DB index is out of range",
                    "invalid DB index")
# TLS failures that are a condition of the link, not of the configuration.
_TRANSIENT_TLS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError,
                  ssl.SSLWantReadError, ssl.SSLWantWriteError)


def refusal(exc: BaseException) -> str | None:
    """Why the server refused us for good, or None if retrying may help.

    Refusals: a password or user the server rejects, a command the user may not run, a
    database index the server does not have, a certificate that is not trusted or a TLS
    handshake that fails (say, TLS against a plain port). The text is the server's or
    the TLS library's own, with a hint where the fix is ours to name.
    """
    for cause in _chain(exc):
        if isinstance(cause, PlainTextToTLS | TLSRefused):
            return str(cause)
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (f"TLS certificate verification failed: {cause.verify_message or cause} "
                    "(ssl_ca_certs names the CA to trust; ssl_cert_reqs=none turns "
                    "verification off)")
        if isinstance(cause, ssl.SSLError) and not isinstance(cause, _TRANSIENT_TLS):
            return f"TLS handshake failed: {cause}"
    if isinstance(exc, redis_errors.AuthenticationError | redis_errors.AuthorizationError):
        return (f"{type(exc).__name__}: {exc} (check the user name and password in the "
                "URL)")
    if isinstance(exc, redis_errors.ResponseError):
        text = str(exc)
        if any(mark in text for mark in _REFUSED_REPLIES):
            hint = " (the URL's path names the database)" if "DB index" in text else ""
            return f"{type(exc).__name__}: {text}{hint}"
    return None


def authentication_failed(exc: BaseException) -> bool:
    """Whether the server rejected the user name or password (not a permission)."""
    if isinstance(exc, redis_errors.AuthenticationError):
        return True
    return isinstance(exc, redis_errors.ResponseError) and any(
        mark in str(exc) for mark in ("WRONGPASS", "NOAUTH", "invalid password"))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def retryable(exc: Exception) -> bool:
    """For redis-py's Retry: remember the failure; retry anything but a refusal."""
    _last_failure.set(exc)
    return refusal(exc) is None


def describe(exc: BaseException) -> str:
    """``Type: text`` of an exception, readable even when its text is empty."""
    text = str(exc)
    if text:
        return f"{type(exc).__name__}: {text}"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "TimeoutError: no answer within the connection timeout"
    return f"{type(exc).__name__} (no message)"


@contextlib.contextmanager
def translate_errors(unavailable: type[CeleriacError], error: type[CeleriacError],
                     what: str, refused: type[CeleriacError] | None = None) -> Iterator[None]:
    """Translate Redis failures into celeriac errors (see the module docstring).

    ``refused`` for a refusal (``error`` when not given), ``unavailable`` for a lost,
    unreachable or silent server, naming the last failure a retry saw, ``error`` for
    anything else Redis reports.
    """
    token = _last_failure.set(None)
    try:
        yield
    except (redis_errors.RedisError, OSError, TimeoutError) as exc:
        reason = refusal(exc)
        if reason is not None:
            raise refused_error(refused or error, authentication_failed(exc),
                                f"{what}: Redis refused the connection: {reason}") from exc
        if not isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError
                          | OSError | TimeoutError):
            raise error(f"{what}: {describe(exc)}") from exc
        last = _last_failure.get()
        if last is None or last is exc:
            raise unavailable(f"{what}: Redis is unavailable ({describe(exc)})") from exc
        # Cut off by the deadline after failures: the real cause is the chained one
        # (__cause__); the deadline's TimeoutError stays the __context__.
        raise unavailable(f"{what}: Redis is unavailable ({describe(exc)}; the last "
                          f"failure before it: {describe(last)})") from last
    finally:
        _last_failure.reset(token)


def is_missing_group(exc: BaseException) -> bool:
    """A stream or its consumer group vanished (a flushed or restarted server)."""
    text = str(exc)
    return isinstance(exc, redis_errors.ResponseError) and (
        "NOGROUP" in text or "UNBLOCKED" in text or "no such key" in text)


