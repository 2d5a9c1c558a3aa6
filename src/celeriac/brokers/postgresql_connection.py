"""Reaching PostgreSQL: URLs, schemas, per-loop connection pools and LISTEN connections.

Shared by the ``postgresql://`` broker and result backend (``celeriac.brokers.postgresql``,
``celeriac.backends.postgresql``):

- ``PgSettings``: the URL (``postgresql://``, ``postgres://``, Celery's
  ``db+postgresql://`` for results) made into a libpq conninfo, and the schema the
  tables live in (``?schema=name`` or the ``schema`` option; ``public`` by default).
  The schema is our own query parameter, so it is taken out before libpq sees the URL.
- ``LoopPools``: a few async connections per event loop (``LoopPool``). A psycopg
  async connection belongs to the loop that opened it, and a broker object is used from
  several loops (the worker's, the app's bridge loop, ``asyncio.run`` in tests). Sync
  callers (``publish_blocking``) share one thread-safe ``ConnectionPool`` per process.
- ``Listener``: one connection per loop that ``LISTEN``\\ s and hands every
  notification to a callback, so idle fetchers and result waiters sleep on the server
  instead of polling. A listener whose connection drops is opened again by the next
  waiter; waits in between fall back to their timeouts (callers bound them).

Every connection is in autocommit: each statement is its own transaction, which is
what ``FOR UPDATE SKIP LOCKED`` leasing wants (the row locks last one statement).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from celeriac.errors import BackendError, BrokerUnavailable, CeleriacError, ConfigurationError
from celeriac.urls import safe_url

logger = logging.getLogger(__name__)

SCHEMES = ("postgresql", "postgres", "db+postgresql", "db+postgres")
DEFAULT_SCHEMA = "public"
# A schema name put into SQL text as is: so only plain lower-case identifiers.
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")
DEFAULT_CONNECTION_TIMEOUT = 5.0
DEFAULT_POOL_LIMIT = 4  # per event loop: a worker fetches, acks and extends at once


@dataclass(frozen=True)
class PgSettings:
    """Where the server is, which schema holds the tables, how many connections."""

    url: str  # as given, for messages (printed through safe_url)
    conninfo: str  # what libpq gets: the URL without our own query parameters
    schema: str
    connection_timeout: float
    pool_limit: int

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> PgSettings:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise ConfigurationError(f"not a postgresql:// URL: {safe_url(url)!r}")
        query = parse_qsl(parts.query, keep_blank_values=True)
        ours = dict(query)
        schema = ours.get("schema", options.get("schema", DEFAULT_SCHEMA))
        if not isinstance(schema, str) or not SCHEMA_NAME.fullmatch(schema):
            raise ConfigurationError(
                f"schema must be a lower-case SQL identifier (letters, digits, _; at most "
                f"48 characters), not {schema!r}")
        timeout = options.get("connection_timeout", DEFAULT_CONNECTION_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigurationError(f"connection_timeout must be a number of seconds > 0, "
                                     f"not {timeout!r}")
        limit = options.get("pool_limit", DEFAULT_POOL_LIMIT)
        if limit is None:
            limit = DEFAULT_POOL_LIMIT
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"pool_limit must be a whole number >= 1, not {limit!r}")
        rest = [(k, v) for k, v in query if k != "schema"]
        if not any(k == "connect_timeout" for k, _ in rest):
            rest.append(("connect_timeout", str(max(1, round(timeout)))))
        conninfo = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(rest)))
        return cls(url, conninfo, schema, float(timeout), limit)

    def unavailable(self, exc: BaseException, error: type[CeleriacError]) -> CeleriacError:
        """The error to raise for a failed connection or statement (password masked)."""
        return error(f"PostgreSQL at {safe_url(self.url)} failed: "
                     f"{type(exc).__name__}: {str(exc).strip() or 'no detail'}")


def qualify(sql: str, schema: str) -> str:
    """``sql`` with ``{s}`` replaced by the quoted schema (checked by ``SCHEMA_NAME``)."""
    return sql.replace("{s}", f'"{schema}"')


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.autocommit = True


class LoopPool:
    """A few connections for one event loop, opened as needed and kept while idle.

    Not psycopg_pool's ``AsyncConnectionPool``: its background tasks are cancelled by
    ``asyncio.run`` before a loop's async generators are finalised, so a pool of a loop
    that ends without closing it (a test's, the bridge's) leaves tasks pending. This one
    has none: a connection is made in the caller's task, and closing is plain awaits.
    """

    def __init__(self, settings: PgSettings) -> None:
        self.settings = settings
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(settings.pool_limit)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with asyncio.timeout(self.settings.connection_timeout):
            await self._slots.acquire()
        try:
            conn = self._idle.pop() if self._idle else await psycopg.AsyncConnection.connect(
                self.settings.conninfo, autocommit=True)
            try:
                yield conn
            finally:
                # Only a connection at rest goes back: not one broken, or mid-transaction
                # (cancelled in the middle of one).
                if conn.closed or conn.broken \
                        or conn.info.transaction_status != TransactionStatus.IDLE:
                    with contextlib.suppress(Exception):
                        await conn.close()
                else:
                    self._idle.append(conn)
        finally:
            self._slots.release()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close()


class LoopPools:
    """A ``LoopPool`` per event loop, and one sync psycopg pool per process."""

    def __init__(self, settings: PgSettings, error: type[CeleriacError]) -> None:
        self.settings = settings
        self.error = error
        self._lock = threading.Lock()
        self._pools: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop,
            tuple[LoopPool, AsyncGenerator[None, None]]] = weakref.WeakKeyDictionary()
        self._sync: ConnectionPool | None = None

    async def pool(self) -> LoopPool:
        loop = asyncio.get_running_loop()
        entry = self._pools.get(loop)
        if entry is not None:
            return entry[0]
        pool = LoopPool(self.settings)
        keeper = _close_with_loop(pool.close)
        # Runs to the generator's first yield without suspending, so no other task of
        # this loop can get here in between and make a second pool.
        await keeper.asend(None)
        with self._lock:
            self._pools[loop] = (pool, keeper)
        return pool

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection of this loop's pool; connection failures raise ``error``."""
        try:
            pool = await self.pool()
            async with pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, TimeoutError) as exc:
            raise self.settings.unavailable(exc, self.error) from exc

    @contextlib.contextmanager
    def blocking(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of this process's sync pool, for callers without a loop."""
        with self._lock:
            if self._sync is None:
                self._sync = ConnectionPool(
                    self.settings.conninfo, min_size=1, max_size=self.settings.pool_limit,
                    open=True, configure=_configure, timeout=self.settings.connection_timeout,
                    name="celeriac-sync")
            pool = self._sync
        try:
            with pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise self.settings.unavailable(exc, self.error) from exc

    async def close(self) -> None:
        """Close this loop's pool (others close when their own loops shut down)."""
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            with self._lock:
                entry = self._pools.pop(loop, None)
            if entry is not None:
                await entry[1].aclose()

    def close_blocking(self) -> None:
        with self._lock:
            pool, self._sync = self._sync, None
        if pool is not None:
            pool.close()


async def _close_with_loop(close: Callable[[], Awaitable[None]]) -> AsyncGenerator[None, None]:
    """Parked at its ``yield`` on the loop that made a pool or listener: closed by
    ``close()``, or when the loop finalises its async generators on shutdown (as
    ``asyncio.run`` and ``asyncio.Runner`` do), while that loop still runs."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # closing a broken connection may fail too
            await close()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


class Listener:
    """One ``LISTEN`` connection per event loop, calling ``on_notify(payload)`` for each
    notification on ``channel``; ``ensure`` (re)opens it for the running loop."""

    def __init__(self, settings: PgSettings, channel: str,
                 on_notify: Callable[[str], None]) -> None:
        self.settings = settings
        self.channel = channel
        self.on_notify = on_notify
        self._lock = threading.Lock()
        self._tasks: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop,
            tuple[asyncio.Task[None], AsyncGenerator[None, None]]] = weakref.WeakKeyDictionary()

    async def ensure(self) -> bool:
        """Make sure this loop listens; False if the server cannot be reached now."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._tasks.get(loop)
        if entry is not None and not entry[0].done():
            return True
        try:
            conn = await psycopg.AsyncConnection.connect(self.settings.conninfo,
                                                         autocommit=True)
            await conn.execute(f'LISTEN "{self.channel}"')
        except psycopg.OperationalError as exc:
            logger.warning("cannot listen on PostgreSQL at %s: %s", safe_url(self.settings.url),
                           exc)
            return False
        task = loop.create_task(self._read(conn), name=f"celeriac-listen-{self.channel}")
        keeper = _close_with_loop(lambda: _cancel(task))
        await keeper.asend(None)
        with self._lock:
            self._tasks[loop] = (task, keeper)
        return True

    async def _read(self, conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            async for notify in conn.notifies():
                self.on_notify(notify.payload)
        except psycopg.OperationalError as exc:
            logger.warning("lost the LISTEN connection to PostgreSQL at %s: %s",
                           safe_url(self.settings.url), exc)
        finally:
            with contextlib.suppress(Exception):
                await conn.close()
            self.on_notify("*")  # wake everyone: what they wait for may have come meanwhile

    async def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            with self._lock:
                entry = self._tasks.pop(loop, None)
            if entry is not None:
                await entry[1].aclose()


# -- the tables, made once per database and schema -----------------------------------

# Taken while making tables: CREATE ... IF NOT EXISTS from several processes at once can
# still collide in the catalogs.
SCHEMA_LOCK = 0x63656C6572696163  # "celeriac"
BASE = (
    "CREATE SCHEMA IF NOT EXISTS {s}",
    """CREATE TABLE IF NOT EXISTS {s}.celeriac_schema (
        component text PRIMARY KEY,
        version integer NOT NULL
    )""",
)
RECORDED = "SELECT version FROM {s}.celeriac_schema WHERE component = %s"
RECORD = "INSERT INTO {s}.celeriac_schema (component, version) VALUES (%s, %s)"


async def create_schema(conn: psycopg.AsyncConnection[Any], settings: PgSettings,
                        component: str, version: int, statements: Sequence[str],
                        error: type[CeleriacError]) -> None:
    """Make ``component``'s tables in the schema unless they are there; refuse tables of
    another version (made by another celeriac release)."""
    schema = settings.schema
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            for statement in BASE:
                await conn.execute(qualify(statement, schema).encode())
            cursor = await conn.execute(qualify(RECORDED, schema).encode(), (component,))
            row = await cursor.fetchone()
            if row is None:
                for statement in statements:
                    await conn.execute(qualify(statement, schema).encode())
                await conn.execute(qualify(RECORD, schema).encode(), (component, version))
    except psycopg.Error as exc:
        raise _schema_error(exc, settings, error) from exc
    _check_version(row, settings, component, version)


def create_schema_blocking(conn: psycopg.Connection[Any], settings: PgSettings,
                           component: str, version: int, statements: Sequence[str],
                           error: type[CeleriacError]) -> None:
    """``create_schema`` on a sync connection."""
    schema = settings.schema
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            for statement in BASE:
                conn.execute(qualify(statement, schema).encode())
            row = conn.execute(qualify(RECORDED, schema).encode(), (component,)).fetchone()
            if row is None:
                for statement in statements:
                    conn.execute(qualify(statement, schema).encode())
                conn.execute(qualify(RECORD, schema).encode(), (component, version))
    except psycopg.Error as exc:
        raise _schema_error(exc, settings, error) from exc
    _check_version(row, settings, component, version)


def _check_version(row: tuple[Any, ...] | None, settings: PgSettings, component: str,
                   version: int) -> None:
    if row is not None and row[0] != version:
        raise ConfigurationError(
            f"the {component} tables in schema {settings.schema} of "
            f"{safe_url(settings.url)} are version {row[0]}; this celeriac reads version "
            f"{version}")


def _schema_error(exc: psycopg.Error, settings: PgSettings,
                  error: type[CeleriacError]) -> CeleriacError:
    if isinstance(exc, psycopg.OperationalError):
        error = BrokerUnavailable if error is not BackendError else BackendError
    return settings.unavailable(exc, error)
