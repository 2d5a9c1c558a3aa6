"""Fixtures for the contract suites: every broker and backend, made the same way.

``async def`` tests run on a fresh event loop per test (pytest-asyncio is not used;
the ``pytest_pyfunc_call`` hook below is the whole of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac.backends import ResultBackend, create_backend
from celeriac.brokers import Broker, create_broker

# Short enough that lease-expiry tests take a fraction of a second, long enough that a
# loaded CI machine does not lose a lease the test means to hold.
LEASE_SECONDS = 0.5

BROKER_KINDS = ["memory", "sqlite", "redis", "amqp", "postgresql", "kafka"]
BACKEND_KINDS = ["memory", "sqlite", "redis", "postgresql"]

# The contract suites' own database on the local server; each test gets a key prefix of
# its own, whose keys are deleted after the test.
REDIS_URL = "redis://127.0.0.1:6379/13"
# RabbitMQ: each test gets a queue-name prefix (namespace) of its own, deleted afterwards.
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
# PostgreSQL: a database of this test session's own (made on first use, dropped at the
# end), and a schema of each test's own in it, dropped after the test.
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
_pg_database: list[str] = []


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests with ``asyncio.run``."""
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    names = inspect.signature(func).parameters
    asyncio.run(func(**{name: pyfuncitem.funcargs[name] for name in names}))
    return True


def url_for(kind: str, tmp_path: Path) -> str:
    """The URL of a fresh store of this kind (sqlite: a file in the test's directory)."""
    if kind == "redis":
        return REDIS_URL
    if kind == "amqp":
        return AMQP_URL
    if kind == "postgresql":
        return f"{PG_SERVER}/{pg_database()}"
    if kind == "kafka":
        from kafka_server import kafka_url

        return kafka_url()
    return "memory://" if kind == "memory" else f"sqlite:///{tmp_path / 'celeriac.db'}"


@contextlib.contextmanager
def isolated(url: str) -> Iterator[dict[str, Any]]:
    """Extra options giving a server-backed store a namespace of its own for one test.

    Redis: a fresh key prefix, its keys deleted afterwards. Skipped when the server is
    not running, except under CI (the ``CI`` environment variable), where that fails.
    """
    if url.startswith("amqp://"):
        yield from _amqp_namespace(url)
        return
    if url.startswith("postgresql://"):
        yield from _pg_schema(url)
        return
    if url.startswith("kafka://"):
        yield from _kafka_prefix(url)
        return
    if not url.startswith("redis://"):
        yield {}
        return
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        client.close()
        if os.environ.get("CI"):
            pytest.fail(f"Redis is not running at {url}: {exc}")
        pytest.skip(f"Redis is not running at {url}")
    prefix = f"contract:{uuid.uuid4().hex[:12]}:"
    try:
        yield {"key_prefix": prefix}
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture(params=BROKER_KINDS)
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return url_for(request.param, tmp_path)


@pytest.fixture
def broker(broker_url: str) -> Iterator[Broker]:
    with isolated(broker_url) as options:
        broker = create_broker(broker_url, {"lease_seconds": LEASE_SECONDS, **options})
        asyncio.run(broker.connect())
        yield broker
        asyncio.run(broker.close())


@pytest.fixture(params=BACKEND_KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultBackend]:
    url = url_for(request.param, tmp_path)
    with isolated(url) as options:
        backend = create_backend(url, options)
        asyncio.run(backend.connect())
        yield backend
        asyncio.run(backend.close())


def _amqp_namespace(url: str) -> Iterator[dict[str, Any]]:
    """RabbitMQ: a namespace (name prefix) of its own; its queues and exchanges deleted after."""
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"RabbitMQ is not running at {url}: {exc}")
        pytest.skip(f"RabbitMQ is not running at {url}")
    namespace = f"contract.{uuid.uuid4().hex[:12]}."
    try:
        yield {"namespace": namespace}
    finally:
        async def delete() -> None:
            cleaner = create_broker(url, {"namespace": namespace})
            try:
                await cleaner.delete_namespace()  # type: ignore[attr-defined]
            finally:
                await cleaner.close()

        asyncio.run(delete())


def pg_database() -> str:
    """This session's PostgreSQL database, made now if need be (skipped without a server,
    except under CI)."""
    if not _pg_database:
        import psycopg

        name = f"celeriac_contract_{uuid.uuid4().hex[:12]}"
        try:
            with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True,
                                 connect_timeout=2) as conn:
                conn.execute(f"CREATE DATABASE {name}")
        except psycopg.OperationalError as exc:
            if os.environ.get("CI"):
                pytest.fail(f"PostgreSQL is not running at {PG_SERVER}: {exc}")
            pytest.skip(f"PostgreSQL is not running at {PG_SERVER}")
        _pg_database.append(name)
    return _pg_database[0]


@pytest.fixture(scope="session", autouse=True)
def _stop_kafka_server() -> Iterator[None]:
    """Stop this process's Kafka server (Tansu), if a test started it."""
    yield
    from kafka_server import stop_server

    stop_server()


@pytest.fixture(scope="session", autouse=True)
def _drop_pg_database() -> Iterator[None]:
    """Drop the session's PostgreSQL database, if a test made it."""
    yield
    if _pg_database:
        import psycopg

        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {_pg_database.pop()} WITH (FORCE)")


def _pg_schema(url: str) -> Iterator[dict[str, Any]]:
    """PostgreSQL: a schema of the test's own in the session's database, dropped after."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        yield {"schema": schema}
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _kafka_prefix(url: str) -> Iterator[dict[str, Any]]:
    """Kafka: a topic and group prefix of the test's own; its topics deleted after."""
    prefix = f"t{uuid.uuid4().hex[:12]}."
    try:
        yield {"prefix": prefix}
    finally:
        async def delete() -> None:
            cleaner = create_broker(url, {"prefix": prefix})
            try:
                await cleaner.delete_topics()  # type: ignore[attr-defined]
            finally:
                await cleaner.close()

        asyncio.run(delete())
