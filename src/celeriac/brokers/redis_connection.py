"""Connections to Redis shared by the Redis broker and result backend.

Three things every Redis-facing object here needs, written once:

- ``RedisSettings``: the URL and the connection options (timeouts, pool size, TLS),
  read from ``broker_transport_options``-style mappings and the URL's query string.
- ``LoopClients``: one ``redis.asyncio`` client per event loop. A redis.asyncio
  connection belongs to the loop that opened it, and a broker object is used from
  several loops (the worker's, the app's bridge loop, ``asyncio.run`` in tests), so each
  loop gets its own client, created on first use and closed when that loop shuts down.
- ``BlockingClient``: plain blocking calls for sync callers (``delay()``, ``get()``
  from a thread with no event loop), on one sync redis-py connection pool per process,
  shared by its threads. A sync call costs one round trip and no thread hop, where the
  bridge costs two hops and redis.asyncio's heavier command path.
- ``Script``: Lua scripts run by their SHA1 with a fallback to their text when the
  server's script cache is empty (after a restart).

How failures become celeriac errors: ``redis_failures``.

The client library is ``redis`` (redis-py >= 5, asyncio and sync APIs) with ``hiredis``
as its parser; both are imported only by the apps that use a ``redis://`` URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
import redis.retry
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from celeriac import tls as tls_options
from celeriac.brokers import redis_sentinel
from celeriac.brokers.redis_durability import server_name
from celeriac.brokers.redis_failures import authentication_failed, describe, refusal, retryable
from celeriac.brokers.redis_plain import (
    PlainConnection,
    PlainSyncConnection,
    tls_connection_classes,
)
from celeriac.config import suggest
from celeriac.errors import CeleriacError, ConfigurationError, refused_error

# Packs a command in C, where redis-py's packer encodes each argument in Python.
_pack_command: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack_command

    _pack_command = _hiredis_pack_command
except ImportError:  # pragma: no cover - hiredis comes with celeriac's redis extra
    _pack_command = None

DEFAULT_CONNECTION_TIMEOUT = 4.0  # as the broker_connection_timeout setting
# Connections per event loop: none by default. redis.asyncio opens connections only as
# concurrent calls need them (a worker process uses three or four), and its bounded pool
# costs a wait on a condition variable per command (measured: a quarter more CPU per
# publish). ``pool_limit`` (Celery's broker_pool_limit) bounds it where many concurrent
# producers share one process.
DEFAULT_POOL_LIMIT: int | None = None

# A command that fails on a dead connection (the server restarted, an idle connection
# was dropped, the port is closed for now) is retried on a fresh one, with a capped
# backoff, until the call's deadline (the connection timeout) passes: a restart of a
# second or two is ridden out, an outage is reported as *Unavailable with its last cause.
# (Async calls: no count at all, the deadline ends them; sync calls: the same, counted
# against the timeout by ``BlockingClient.call``.)
RETRY_BACKOFF_BASE = 0.05
RETRY_BACKOFF_CAP = 0.5

# TLS options passed through to redis-py's SSLConnection, under Celery's and redis-py's
# names (``broker_use_ssl`` keys and ``rediss://...?ssl_cert_reqs=none`` query values).
SSL_OPTIONS = tls_options.OPTIONS
CONNECTION_OPTIONS = frozenset({"connection_timeout", "pool_limit", "ssl", "require_noeviction",
                                *SSL_OPTIONS, *redis_sentinel.OPTIONS})
DEFAULT_KEY_PREFIX = "celeriac:"

def check_options(options: Mapping[str, Any], known: frozenset[str], what: str) -> None:
    """Reject an unknown option name, suggesting the closest known one."""
    for name in options:
        if name not in known:
            raise ConfigurationError(f"unknown {what} option {name!r}{suggest(name, known)}; "
                                     f"known: {', '.join(sorted(known))}")


def positive_number(options: Mapping[str, Any], name: str, default: float) -> float:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigurationError(f"{name} must be a number of seconds > 0, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class RedisSettings:
    """Where the server is and how to talk to it; builds a client for one event loop."""

    url: str
    key_prefix: str = DEFAULT_KEY_PREFIX
    connection_timeout: float = DEFAULT_CONNECTION_TIMEOUT
    pool_limit: int | None = DEFAULT_POOL_LIMIT
    tls_options: dict[str, Any] = field(default_factory=dict)
    # Refuse to connect to a server that could evict our keys (redis_durability).
    require_noeviction: bool = False
    # For a sentinel:// URL: the sentinels to ask for the master (redis_sentinel).
    sentinel: redis_sentinel.SentinelSpec | None = None

    @classmethod
    def from_options(cls, url: str, options: Mapping[str, Any]) -> RedisSettings:
        """Read the connection options of a broker or backend (unknown names are ignored).

        ``key_prefix``, ``require_noeviction`` and the TLS options may also be given in
        the URL's query string (``redis://host/0?key_prefix=app1:``), which wins, as in
        redis-py (a result backend gets its options from its URL only). TLS options
        may be given flat (``ssl_cert_reqs``) or as one ``ssl`` mapping in the shape of
        Celery's ``broker_use_ssl``.
        """
        if redis_sentinel.is_sentinel_url(url):
            return cls._from_sentinel(url, options)
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ConfigurationError(f"not a redis:// or rediss:// URL: {url!r}")
        for name in redis_sentinel.OPTIONS & set(options):
            raise ConfigurationError(f"{name} is an option of sentinel:// URLs; "
                                     f"{parts.scheme}:// connects to one server")
        _pool_limit(options)  # checked first, as before the URL's options
        # Celery's broker_use_ssl / redis_backend_use_ssl, under either spelling.
        nested = tls_options.normalize(options.get("ssl"), "the ssl option") or {}
        tls = {**{k: v for k, v in options.items() if k in SSL_OPTIONS}, **nested}
        check_options(tls, SSL_OPTIONS, "TLS")
        query = parse_qsl(parts.query, keep_blank_values=True)
        if (tls or any(k in SSL_OPTIONS for k, _ in query)) and parts.scheme != "rediss":
            raise ConfigurationError(f"TLS options given for a plain redis:// URL ({url!r}); "
                                     "use rediss:// to connect with TLS")
        from_query = dict(query)
        if "ssl_cert_reqs" in from_query:  # the URL wins, as redis-py has it
            tls["ssl_cert_reqs"] = from_query["ssl_cert_reqs"]
        if "ssl_cert_reqs" in tls:
            tls["ssl_cert_reqs"] = tls_options.cert_reqs(tls["ssl_cert_reqs"])
        prefix = from_query.get("key_prefix", options.get("key_prefix", DEFAULT_KEY_PREFIX))
        if not isinstance(prefix, str):
            raise ConfigurationError(f"key_prefix must be a string, not {prefix!r}")
        noeviction = _flag(from_query.get("require_noeviction",
                                          options.get("require_noeviction", False)),
                           "require_noeviction")
        # The URL keeps the query options redis-py parses itself, minus the ones read
        # here: it would reject key_prefix, and pass "CERT_NONE" through unconverted.
        rest = [(k, v) for k, v in query
                if k not in ("ssl_cert_reqs", "key_prefix", "require_noeviction")]
        clean = urlunsplit(parts._replace(query=urlencode(rest)))
        return cls(clean, prefix,
                   positive_number(options, "connection_timeout", DEFAULT_CONNECTION_TIMEOUT),
                   _pool_limit(options), tls, noeviction)

    @classmethod
    def _from_sentinel(cls, url: str, options: Mapping[str, Any]) -> RedisSettings:
        """``from_options`` for a ``sentinel://`` URL (``redis_sentinel``).

        The query string (after the last sentinel) may give ``key_prefix``,
        ``require_noeviction``, ``master_name`` and ``min_other_sentinels``, and wins
        over the options, as for ``redis://``.
        """
        base, _, query = url.partition("?")
        from_query: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
        check_options(from_query, frozenset({"key_prefix", "require_noeviction",
                                             "master_name", "min_other_sentinels"}),
                      "sentinel URL query")
        if "min_other_sentinels" in from_query:
            text = from_query["min_other_sentinels"]
            from_query["min_other_sentinels"] = int(text) if text.isdigit() else text
        merged = {**options, **from_query}
        if "ssl" in merged or any(name in SSL_OPTIONS for name in merged):
            raise ConfigurationError("TLS options are not supported with a sentinel:// URL "
                                     "yet; connect to the sentinels and the master in "
                                     "plain text, or use rediss:// to one server")
        prefix = merged.get("key_prefix", DEFAULT_KEY_PREFIX)
        if not isinstance(prefix, str):
            raise ConfigurationError(f"key_prefix must be a string, not {prefix!r}")
        return cls(base, prefix,
                   positive_number(merged, "connection_timeout", DEFAULT_CONNECTION_TIMEOUT),
                   _pool_limit(merged), {},
                   _flag(merged.get("require_noeviction", False), "require_noeviction"),
                   redis_sentinel.parse(base, merged))

    def where(self) -> str:
        """The server, for log lines: host:port/db, or the sentinels' master."""
        if self.sentinel is not None:
            return self.sentinel.describe()
        return server_name(self.url)

    def make_pool(self) -> aioredis.ConnectionPool:
        """A connection pool for the running event loop (no connection is opened yet)."""
        kwargs: dict[str, Any] = {
            "socket_connect_timeout": self.connection_timeout,
            # No socket timeout: with one, redis-py sends each command through
            # asyncio.wait_for, which on Python 3.11 loses a cancellation that arrives as
            # the send completes (the task then runs on as if never cancelled, and a
            # worker hangs in shutdown). Every call here is bounded by asyncio.timeout
            # instead (``deadline``), which also bounds the retries as a whole.
            "socket_timeout": None,
            "socket_keepalive": True,
            # Retried until ``deadline`` cancels the call (retries=-1: no count); a refusal
            # is not retried at all, and each failure is remembered for the error message.
            "retry": Retry(ExponentialBackoff(cap=RETRY_BACKOFF_CAP, base=RETRY_BACKOFF_BASE),
                           -1, is_retryable=retryable),
            **self.tls_options,
        }
        if self.sentinel is not None:
            return self.sentinel.make_pool(self.connection_timeout, self.pool_limit, kwargs)
        if not self.tls:
            kwargs["connection_class"] = PlainConnection  # a TLS port: said at once
        else:  # a refusal after the handshake: said at once
            kwargs["connection_class"] = self._tls_classes[0]
        if self.pool_limit is None:
            return aioredis.ConnectionPool.from_url(self.url, **kwargs)
        # Waits for a free connection (up to the timeout) instead of failing at once.
        return aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=self.pool_limit, timeout=self.connection_timeout,
            **kwargs)

    @functools.cached_property
    def _tls_classes(self) -> tuple[type[Any], type[Any]]:
        """The TLS connection classes of these options, made once."""
        return tls_connection_classes(self.tls_options)

    @property
    def tls(self) -> bool:
        return self.url.startswith("rediss://")

    def make_client(self) -> aioredis.Redis:
        return aioredis.Redis.from_pool(self.make_pool())

    def make_sync_pool(self) -> redis.ConnectionPool:
        """A sync connection pool (thread-safe; no connection is opened yet).

        There is no event loop to bound a call as a whole, so the sockets bound each
        step instead: connecting and every read or write take at most the connection
        timeout (a blocking read gets its own, longer limit: ``BlockingClient.call``).
        Only a refused or reset connection is retried, until the timeout; a timeout is
        not, so a server that stops answering is reported within about the timeout, not
        a multiple of it.
        """
        kwargs: dict[str, Any] = {
            "socket_connect_timeout": self.connection_timeout,
            "socket_timeout": self.connection_timeout,
            "socket_keepalive": True,
            # Connecting is retried by ``BlockingClient.call`` (within the timeout), not here.
            "retry": redis.retry.Retry(
                ExponentialBackoff(cap=RETRY_BACKOFF_CAP, base=RETRY_BACKOFF_BASE), 0,
                supported_errors=(redis_errors.ConnectionError,)),
            **self.tls_options,
        }
        if self.sentinel is not None:
            return self.sentinel.make_sync_pool(self.connection_timeout, self.pool_limit,
                                                kwargs)
        if not self.tls:
            kwargs["connection_class"] = PlainSyncConnection
        else:
            kwargs["connection_class"] = self._tls_classes[1]
        if self.pool_limit is None:
            return redis.ConnectionPool.from_url(self.url, **kwargs)
        return redis.BlockingConnectionPool.from_url(
            self.url, max_connections=self.pool_limit, timeout=self.connection_timeout,
            **kwargs)

    def deadline(self, extra: float = 0.0) -> asyncio.Timeout:
        """The time limit of one call: the connection timeout, plus ``extra`` for a
        call that is meant to wait (a blocking read).

        A lost server then surfaces as an error within about the timeout, whether its
        connections are refused, reset, or silently never answered.
        """
        return asyncio.timeout(self.connection_timeout + extra)


def _pool_limit(options: Mapping[str, Any]) -> int | None:
    pool_limit = options.get("pool_limit", DEFAULT_POOL_LIMIT)
    if pool_limit is not None and (isinstance(pool_limit, bool)
                                   or not isinstance(pool_limit, int) or pool_limit < 1):
        raise ConfigurationError(f"pool_limit must be a whole number >= 1 or None, "
                                 f"not {pool_limit!r}")
    return pool_limit


def _flag(value: Any, name: str) -> bool:
    """A boolean option, given as a bool or (in a URL) as true/false, yes/no, 1/0."""
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ConfigurationError(f"{name} must be true or false, not {value!r}")


# -- one client per event loop ------------------------------------------------------------


class LoopClients:
    """One client per event loop, each closed on its own loop when that loop shuts down.

    The closing relies on the loop's async generator finalisation, which
    ``asyncio.run`` and ``asyncio.Runner`` perform before closing a loop: each client
    comes with a small async generator, started on its loop and parked at a ``yield``;
    when the loop finalises its async generators, the generator's ``finally`` closes the
    client while the loop still runs. Without it, every ``asyncio.run`` that touched
    the broker would leave open sockets behind on a closed loop.
    """

    def __init__(self, factory: Callable[[], aioredis.Redis]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._clients: dict[asyncio.AbstractEventLoop,
                            tuple[aioredis.Redis, AsyncGenerator[None, None]]] = {}

    async def get(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is not None:
            return entry[0]
        client = self._factory()
        keeper = _close_with_loop(client)
        # Runs to the generator's first yield without suspending, so no other task of
        # this loop can get here in between and make a second client.
        await keeper.asend(None)
        with self._lock:
            for old in [lp for lp in self._clients if lp.is_closed()]:
                del self._clients[old]  # closed by their loop's shutdown already
            self._clients[loop] = (client, keeper)
        return client

    async def close(self) -> None:
        """Close this loop's client now; others close when their own loops shut down."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._clients.pop(loop, None)
        if entry is not None:
            await entry[1].aclose()


async def _close_with_loop(client: aioredis.Redis) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # closing a broken connection may fail too
            await client.aclose()


# -- blocking calls for sync callers -----------------------------------------------------


class BlockingClient:
    """Blocking Redis calls, on one sync connection pool per process.

    For sync callers (``delay()``, ``get()`` in a plain thread): a call is one round
    trip on a pooled connection, with no event loop involved. redis-py's sync pool is
    thread-safe, so every thread of the process shares it; after a fork the child makes
    a pool of its own (the parent's sockets are never used by two processes).

    Commands go straight to a pooled connection rather than through ``redis.Redis``,
    whose per-command bookkeeping costs about a quarter of a round trip here. Errors are
    translated as ``translate_errors`` does: ``unavailable`` for a lost, refused or silent
    server, ``error`` for anything else Redis reports.
    """

    def __init__(self, settings: RedisSettings, unavailable: type[CeleriacError],
                 error: type[CeleriacError], what: str,
                 refused: type[CeleriacError] | None = None) -> None:
        self.settings = settings
        self._unavailable = unavailable
        self._error = error
        self._refused = refused or error
        self._what = what
        self._lock = threading.Lock()
        self._pool: redis.ConnectionPool | None = None
        self._pid = os.getpid()
        # Connections free for the next call, when the pool is unbounded. Taking one from
        # this list (pop and append are atomic) skips the pool's per-call bookkeeping
        # (its lock, its metrics hooks, a poll of the socket), a tenth of a send's time.
        # A bounded pool (pool_limit) is used as it is, to keep its bound.
        self._idle: list[Any] = []
        _BLOCKING_CLIENTS.add(self)

    def pool(self) -> redis.ConnectionPool:
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = self.settings.make_sync_pool()
                    self._pid = os.getpid()
                pool = self._pool
        return pool

    def _forked(self) -> None:
        """In a child process just forked: drop the parent's pool, without closing it.

        Its sockets are the parent's to use and close. (redis-py's pool checks the
        process id too; this also replaces a lock another thread may have held.)
        """
        self._lock = threading.Lock()
        self._pool = None
        self._idle = []

    def call(self, what: str, *args: Any, block: float | None = None) -> Any:
        """Run one command and return its reply; an error reply raises ``error``.

        ``block``: seconds the command may wait on the server (BLPOP's timeout), on top
        of which its reply may take the connection timeout. A connection that breaks
        under the command (the server restarted) is replaced and the command sent again,
        with a capped backoff, for up to about the connection timeout; a refusal (a
        wrong password, an untrusted certificate) is raised at once as ``refused``.
        """
        return self._exchange(what, (args,), block)[0]

    def script_then(self, what: str, script: Script, keys: Sequence[str],
                    args: Sequence[str | bytes | int | float], *after: tuple[Any, ...],
                    block: float | None = None) -> list[Any]:
        """Run a Lua script, then the ``after`` commands on the same connection, in one
        round trip (WAIT must follow the write on its connection); the replies of all.

        ``block``: as for ``call``, the time the last command may wait on the server.
        """
        for head in (("EVALSHA", script.sha), ("EVAL", script.source)):
            replies = self._exchange(what, ((*head, len(keys), *keys, *args), *after), block)
            if isinstance(replies[0], redis_errors.NoScriptError):
                continue  # first use on this server: EVAL also caches the script
            for reply in replies:
                if isinstance(reply, redis_errors.ResponseError):
                    raise self._error(f"{self._what} {what}: {describe(reply)}") from reply
            return replies
        raise AssertionError("unreachable: EVAL never answers NOSCRIPT")

    def _exchange(self, what: str, commands: Sequence[tuple[Any, ...]],
                  block: float | None) -> list[Any]:
        """Send commands on one connection and read their replies (see ``call``).

        One command: its error reply raises. Several: an error reply is returned in its
        place (every reply is read, so the connection stays in step), as the exception.
        """
        pool = self.pool()
        timeout = self.settings.connection_timeout
        attempt = 0
        started = 0.0
        while True:
            conn = self._connection(pool, what)
            try:
                if len(commands) == 1:
                    _send(conn, commands[0])
                    if block is None:
                        return [conn.read_response()]
                    return [conn.read_response(timeout=block + timeout)]
                for args in commands:
                    _send(conn, args)
                replies = [_reply(conn) for _ in commands[:-1]]
                last = None if block is None else block + timeout
                return [*replies, _reply(conn, last)]
            except redis_errors.NoScriptError:
                raise  # the connection is fine; ``script`` sends the script's text
            except (redis_errors.RedisError, OSError) as exc:
                failure = self._failure(what, conn, exc)
                if failure is not None:
                    raise failure from exc
                # A broken connection: try a fresh one until the timeout would pass.
                started = started or time.monotonic()
                attempt += 1
                pause = min(RETRY_BACKOFF_CAP, RETRY_BACKOFF_BASE * 2 ** attempt)
                if time.monotonic() - started + pause >= timeout:
                    raise self._unavailable_error(what, exc) from exc
                time.sleep(pause)
            except BaseException:
                conn.disconnect()  # a reply half read must not reach the next caller
                raise
            finally:
                if self.settings.pool_limit is None:
                    self._idle.append(conn)
                else:
                    pool.release(conn)

    def _failure(self, what: str, conn: Any, exc: BaseException) -> CeleriacError | None:
        """The error to raise for a failed command, or None to retry on a fresh connection."""
        reply = isinstance(exc, redis_errors.ResponseError)
        if not reply:
            conn.disconnect()
        if (refused := refusal(exc)) is not None:
            if reply:
                conn.disconnect()  # a half-made connection (AUTH or SELECT failed)
            return self._refused_error(what, refused, exc)
        if isinstance(exc, redis_errors.ConnectionError):
            return None
        if isinstance(exc, redis_errors.TimeoutError | OSError):
            return self._unavailable_error(what, exc)  # silent: retrying would wait again
        # An error reply (the connection is fine), or another failure of redis-py's.
        return self._error(f"{self._what} {what}: {describe(exc)}")

    def _connection(self, pool: redis.ConnectionPool, what: str) -> Any:
        """A connection of the pool (its methods are untyped in redis-py).

        An idle one of an unbounded pool may be unconnected (it was disconnected after an
        error): it connects when the command is sent, and a failure to connect is retried
        like any broken connection.
        """
        if self.settings.pool_limit is None:
            try:
                return self._idle.pop()
            except IndexError:
                return pool.make_connection()
        try:
            return pool.get_connection()
        except (redis_errors.RedisError, OSError) as exc:
            if (refused := refusal(exc)) is not None:
                raise self._refused_error(what, refused, exc) from exc
            if not isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError
                              | OSError):
                raise self._error(f"{self._what} {what}: {type(exc).__name__}: {exc}") \
                    from exc
            raise self._unavailable_error(what, exc) from exc

    def script(self, what: str, script: Script, keys: Sequence[str],
               args: Sequence[str | bytes | int | float]) -> Any:
        """Run a Lua script by SHA1, sending its text when the server lacks it."""
        try:
            return self.call(what, "EVALSHA", script.sha, len(keys), *keys, *args)
        except redis_errors.NoScriptError:
            # First use on this server, or it restarted: EVAL also caches the script.
            return self.call(what, "EVAL", script.source, len(keys), *keys, *args)

    def close(self) -> None:
        """Close this process's connections; the next call opens new ones."""
        with self._lock:
            pool, mine = self._pool, self._pid == os.getpid()
            idle, self._idle = self._idle, []
            self._pool = None
        if pool is not None and mine:
            for conn in idle:
                conn.disconnect()
            pool.disconnect()

    def _unavailable_error(self, what: str, exc: BaseException) -> CeleriacError:
        return self._unavailable(
            f"{self._what} {what}: Redis is unavailable ({describe(exc)})")

    def _refused_error(self, what: str, cause: str, exc: BaseException) -> CeleriacError:
        return refused_error(self._refused, authentication_failed(exc),
                             f"{self._what} {what}: Redis refused the connection: {cause}")


# Every BlockingClient of this process, so that a forked child drops their pools at once
# (checked at fork time, not with a getpid() system call on every command).
_BLOCKING_CLIENTS: weakref.WeakSet[BlockingClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_BLOCKING_CLIENTS):
        client._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _reply(conn: Any, timeout: float | None = None) -> Any:
    """The next reply on ``conn``; an error reply is returned, not raised (a refusal is
    raised: the connection is not usable)."""
    try:
        if timeout is None:
            return conn.read_response()
        return conn.read_response(timeout=timeout)
    except redis_errors.ResponseError as exc:
        if refusal(exc) is not None:
            raise
        return exc


def _send(conn: Any, args: tuple[Any, ...]) -> None:
    if _pack_command is not None:
        try:
            packed = _pack_command(args)
        except TypeError:
            pass  # a type only redis-py's packer takes (a bytearray): let it pack
        else:
            conn.send_packed_command((packed,))
            return
    conn.send_command(*args)


# -- Lua scripts --------------------------------------------------------------------------


class Script:
    """A Lua script run by SHA1, falling back to its text when the server lacks it."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def then(self, client: aioredis.Redis, keys: Sequence[str],
                   args: Sequence[str | bytes | int | float],
                   *after: tuple[Any, ...]) -> list[Any]:
        """Run the script, then ``after`` on the same connection (one pipeline: WAIT
        must follow the write on its connection); the replies of all. An error reply
        raises, as the script's own does."""
        for head in (("EVALSHA", self.sha), ("EVAL", self.source)):
            pipe = client.pipeline(transaction=False)
            command(pipe)(*head, len(keys), *keys, *args)
            for args_after in after:
                command(pipe)(*args_after)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
            if isinstance(replies[0], redis_errors.NoScriptError):
                continue  # first use on this server: EVAL also caches the script
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
            return replies
        raise AssertionError("unreachable: EVAL never answers NOSCRIPT")

    async def __call__(self, client: aioredis.Redis, keys: Sequence[str],
                       args: Sequence[str | bytes | int | float]) -> Any:
        execute = cast(Callable[..., Awaitable[Any]], client.execute_command)
        try:
            return await execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except redis_errors.NoScriptError:
            # First use on this server, or it restarted: EVAL also caches the script.
            return await execute("EVAL", self.source, len(keys), *keys, *args)


def command(client: aioredis.Redis | Any) -> Callable[..., Awaitable[Any]]:
    """``client.execute_command`` typed for mypy (redis-py leaves it unannotated)."""
    return cast(Callable[..., Awaitable[Any]], client.execute_command)
