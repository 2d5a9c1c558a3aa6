"""Redis Sentinel: the master that the sentinels name, found again after a failover.

``sentinel://host:26379;sentinel://host2:26380/0`` names the sentinels, not the data
server: every connection first asks them where the master of ``master_name`` is (and
the data node's password and database come from the URL, as in Celery). What this
module builds is only a *connection pool*: the Redis broker, result backend, bus,
rate-limit buckets and everything else built on ``RedisSettings`` use it as they use a
plain ``redis://`` pool, so they all follow a failover the same way:

- a connection to the old master that breaks (the master died: refused or reset) is
  replaced, and the new one asks the sentinels again; while the sentinels still name
  the dead master, or name none (it is marked down, the failover is under way),
  connecting fails as a refused connection does and is retried with the same capped
  backoff as a restart of a plain server, until the call's deadline
  (``connection_timeout``);
- a master that was demoted to a replica answers writes with READONLY (and unblocks
  blocking reads with UNBLOCKED): redis-py's sentinel-managed connection turns those
  into a connection error, which is retried the same way, on a connection to the
  master the sentinels name now.

So a failover looks to celeriac exactly like a restart of the server: a worker's
fetches fail (BrokerUnavailable, logged) until the new master is named, then go on;
a producer's send either returns (stored on the master of the moment) or raises once
its deadline passes. What a failover can lose is the replication lag:
``docs/brokers.md`` (Sentinel) has the measured figures and the ``wait_for_replicas``
option that narrows it.

Options (``broker_transport_options`` / ``result_backend_transport_options``, Celery's
names): ``master_name`` (required), ``sentinel_kwargs`` (connection options of the
sentinels themselves, such as their ``password``: Sentinel's own ``requirepass`` is
separate from the data nodes'), ``min_other_sentinels`` (ignore a sentinel that sees
fewer peers: one cut off from the others may name a stale master).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as async_sentinel
import redis.sentinel as sync_sentinel

from celeriac.errors import ConfigurationError

SCHEME = "sentinel"
DEFAULT_SENTINEL_PORT = 26379
OPTIONS = frozenset({"master_name", "sentinel_kwargs", "min_other_sentinels"})
# How long one sentinel may take to answer "where is the master" before the next one is
# asked; it answers from memory, so a longer wait only means a sentinel that is gone.
SENTINEL_ANSWER_TIMEOUT = 1.0


@dataclass(frozen=True)
class SentinelSpec:
    """Where the sentinels are, which master to ask them for, how to log in to both."""

    hosts: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # the data nodes'
    sentinel_kwargs: dict[str, Any] = field(default_factory=dict, repr=False)
    min_other_sentinels: int = 0

    def describe(self) -> str:
        """Where the data is, for log lines and errors (no password)."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.hosts)
        return f"master {self.master_name!r} of sentinels {hosts}, db {self.db}"

    def _sentinel_kwargs(self, timeout: float) -> dict[str, Any]:
        answer = min(timeout, SENTINEL_ANSWER_TIMEOUT)
        return {"socket_connect_timeout": answer, "socket_timeout": answer,
                **self.sentinel_kwargs}

    def _node_kwargs(self) -> dict[str, Any]:
        # No address: the sentinels give it. Port 0 until then, so that a connection
        # that ever skipped asking them would fail rather than reach a local server.
        return {"db": self.db, "username": self.username, "password": self.password,
                "host": "127.0.0.1", "port": 0}

    def make_pool(self, timeout: float, pool_limit: int | None,
                  kwargs: Mapping[str, Any]) -> aioredis.ConnectionPool:
        """An async pool whose connections go to the master the sentinels name now.

        ``kwargs``: the connection options a plain pool of the same settings gets
        (timeouts, retry policy), less the connection class.
        """
        manager = async_sentinel.Sentinel(
            self.hosts, min_other_sentinels=self.min_other_sentinels,
            sentinel_kwargs=self._sentinel_kwargs(timeout))
        options = {**kwargs, **self._node_kwargs(), "connection_class": _AsyncConnection}
        if pool_limit is not None:
            options.update(max_connections=pool_limit, timeout=timeout)
        # redis-py's sentinel pools are unannotated.
        pool_class: Any = _AsyncPool if pool_limit is None else _AsyncLimitedPool
        pool: aioredis.ConnectionPool = pool_class(self.master_name, manager, **options)
        return pool

    def make_sync_pool(self, timeout: float, pool_limit: int | None,
                       kwargs: Mapping[str, Any]) -> redis.ConnectionPool:
        """``make_pool`` for blocking callers."""
        manager = sync_sentinel.Sentinel(
            self.hosts, min_other_sentinels=self.min_other_sentinels,
            sentinel_kwargs=self._sentinel_kwargs(timeout))
        options = {**kwargs, **self._node_kwargs(), "connection_class": _SyncConnection}
        if pool_limit is not None:
            options.update(max_connections=pool_limit, timeout=timeout)
        pool_class: Any = _SyncPool if pool_limit is None else _SyncLimitedPool
        pool: redis.ConnectionPool = pool_class(self.master_name, manager, **options)
        return pool


def parse(url: str, options: Mapping[str, Any]) -> SentinelSpec:
    """Read ``sentinel://[user:password@]host:port[;sentinel://host:port...][/db]``.

    The URLs are Celery's: one per sentinel, joined by ``;``. The password (and user)
    are the data nodes', and may stand in any one of them (Celery reads the first); the
    database may end any one of them. Given twice with different values, it is an error
    rather than a guess.
    """
    hosts: list[tuple[str, int]] = []
    found: dict[str, set[Any]] = {"db": set(), "username": set(), "password": set()}
    for part in url.split(";"):
        hosts.append(_read_part(part.strip(), found))
    for name, values in found.items():
        if len(values) > 1:
            raise ConfigurationError(f"a sentinel URL gives two different {name}s; give "
                                     "it once (Celery reads it from the first part)")
    master_name = options.get("master_name")
    if not master_name or not isinstance(master_name, str):
        raise ConfigurationError(
            "a sentinel:// URL needs the master_name transport option "
            "(broker_transport_options={'master_name': 'mymaster'}, or "
            "result_backend_transport_options for the result backend): the name the "
            f"sentinels monitor the master under, not {master_name!r}")
    sentinel_kwargs = options.get("sentinel_kwargs") or {}
    if not isinstance(sentinel_kwargs, Mapping):
        raise ConfigurationError(f"sentinel_kwargs must be a mapping of connection "
                                 f"options (such as {{'password': ...}}), not "
                                 f"{type(sentinel_kwargs).__name__}")
    minimum = options.get("min_other_sentinels", 0)
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 0:
        raise ConfigurationError(f"min_other_sentinels must be a whole number >= 0, "
                                 f"not {minimum!r}")
    return SentinelSpec(tuple(hosts), master_name, _one(found["db"], 0),
                        _one(found["username"], None), _one(found["password"], None),
                        dict(sentinel_kwargs), minimum)


def _read_part(part: str, found: dict[str, set[Any]]) -> tuple[str, int]:
    """One sentinel's host and port; its password, user and database into ``found``."""
    parts = urlsplit(part)
    if parts.scheme != SCHEME:
        raise ConfigurationError(
            f"every part of a sentinel URL starts with sentinel:// (parts are joined "
            f"by ';'), not {part.split('://', 1)[0]!r}")
    try:
        port = parts.port or DEFAULT_SENTINEL_PORT
    except ValueError as exc:
        raise ConfigurationError(f"a sentinel URL part has a bad port: {exc}") from None
    if not parts.hostname:
        raise ConfigurationError("a sentinel URL part names no host (sentinel://host:26379)")
    if parts.password is not None:
        found["password"].add(unquote(parts.password))
    if parts.username:
        found["username"].add(unquote(parts.username))
    path = parts.path.strip("/")
    if path:
        if not path.isdigit():
            raise ConfigurationError(f"the database of a sentinel URL is a number "
                                     f"(sentinel://host:26379/0), not {path!r}")
        found["db"].add(int(path))
    return parts.hostname, port


def _one(values: set[Any], default: Any) -> Any:
    return next(iter(values)) if values else default


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SCHEME + "://")


# -- connections that ask the sentinels every time they connect -----------------------------
#
# redis-py's sentinel-managed connection asks the sentinels in ``connect()``, but a
# connection that is (re)opened by sending a command (a retried command, or a connection
# made by ``make_connection`` and used at once, as ``BlockingClient`` does) reconnects
# to the address it had: the dead master, or the demoted one, for as long as the call is
# retried. These ask the sentinels again instead.


class _AsyncConnection(async_sentinel.SentinelManagedConnection):
    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:
            await self.connect()  # type: ignore[no-untyped-call]  # the sentinels' master
        await super().send_packed_command(command, check_health)


class _SyncConnection(sync_sentinel.SentinelManagedConnection):
    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()  # type: ignore[no-untyped-call]  # the sentinels' master now
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


# -- pools that also close the sentinels' connections --------------------------------------
#
# redis-py leaves the sentinels' own clients open when a master's pool is closed (they
# belong to the Sentinel object, which celeriac makes per pool): closing the pool for
# good (``disconnect()`` with in-use connections, as a client's close does) closes them
# too. A disconnect of idle connections only (a new master was named) leaves them be.


class _AsyncPool(async_sentinel.SentinelConnectionPool):
    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:
            with contextlib.suppress(Exception):  # a dead sentinel's socket may fail
                await self.sentinel_manager.aclose()


class _AsyncLimitedPool(_AsyncPool, aioredis.BlockingConnectionPool):
    """With ``pool_limit``: waits for a free connection as the plain pool does."""


class _SyncPool(sync_sentinel.SentinelConnectionPool):
    def disconnect(self, inuse_connections: bool = True) -> None:
        super().disconnect(inuse_connections)
        if inuse_connections:
            for client in self.sentinel_manager.sentinels:
                with contextlib.suppress(Exception):
                    client.connection_pool.disconnect()


class _SyncLimitedPool(_SyncPool, redis.BlockingConnectionPool):
    """With ``pool_limit``: waits for a free connection as the plain pool does."""
