"""Rate-limit buckets on the result backend's server, for brokers that cannot keep them.

RabbitMQ has no server-side counters a script could update atomically, so with an
``amqp://`` broker the token buckets of global rate limits live on the result backend's
server when it has one that can: a SQLite file, Redis or PostgreSQL. See
``celeriac.brokers.buckets``.
"""

from __future__ import annotations

from celeriac.backends.base import ResultBackend
from celeriac.brokers.buckets import TokenBuckets


def backend_token_buckets(backend: ResultBackend) -> TokenBuckets | None:
    """Token buckets on ``backend``'s server (sqlite, redis, postgresql), or None
    (memory, rpc)."""
    if backend.scheme == "sqlite":
        from celeriac.brokers.buckets_sqlite import SQLiteBuckets

        return SQLiteBuckets(backend.url)
    if backend.scheme in ("redis", "rediss", "sentinel"):
        from celeriac.brokers.buckets_redis import RedisBuckets

        return RedisBuckets(backend.url, backend.options)
    if backend.scheme == "postgresql":
        from celeriac.backends.postgresql import PostgreSQLBackend
        from celeriac.brokers.buckets_postgresql import PostgreSQLBuckets

        assert isinstance(backend, PostgreSQLBackend)
        return PostgreSQLBuckets(backend.settings)
    return None
