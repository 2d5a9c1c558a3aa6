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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqs_server

from celeriac.backends import ResultBackend, create_backend
from celeriac.brokers import Broker, create_broker

# Short enough that lease-expiry tests take a fraction of a second, long enough that a
# loaded CI machine does not lose a lease the test means to hold.
LEASE_SECONDS = 0.5

BROKER_KINDS = ["memory", "sqlite", "redis", "amqp", "postgresql", "sentinel", "sqs", "kafka"]
BACKEND_KINDS = ["memory", "sqlite", "redis", "postgresql", "sentinel"]

# The contract suites' own database on the local server; each test gets a key prefix of
# its own, whose keys are deleted after the test.
REDIS_URL = "redis://127.0.0.1:6379/13"
# RabbitMQ: each test gets a queue-name prefix (namespace) of its own, deleted afterwards.
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
# PostgreSQL: a database of this test session's own (made on first use, dropped at the
# end), and a schema of each test's own in it, dropped after the test.
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
_pg_database: list[str] = []
# Redis Sentinel: a primary, a replica and one sentinel of this test session's own
# (tests/integration/redis/sentinel_harness.py), started on first use, stopped at the
# end; each test gets a key prefix of its own, as on the shared server.
_sentinel_cluster: list[Any] = []


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests with ``asyncio.run``."""
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    names = inspect.signature(func).parameters
    asyncio.run(func(**{name: pyfuncitem.funcargs[name] for name in names}))
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A contract module leaves out the broker kinds it does not apply to (its
    ``LEAVES_OUT``): they are deselected, not skipped."""
    kept, dropped = [], []
    for item in items:
        left_out = getattr(getattr(item, "module", None), "LEAVES_OUT", ())
        callspec = getattr(item, "callspec", None)
        kind = callspec.params.get("broker_url") if callspec is not None else None
        (dropped if kind in left_out else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def url_for(kind: str, tmp_path: Path) -> str:
    """The URL of a fresh store of this kind (sqlite: a file in the test's directory)."""
    if kind == "redis":
        return REDIS_URL
    if kind == "amqp":
        return AMQP_URL
    if kind == "postgresql":
        return f"{PG_SERVER}/{pg_database()}"
    if kind == "sentinel":
        return sentinel_cluster().url()
    if kind == "sqs":
        return sqs_server.broker_url()
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
    if url.startswith("sentinel://"):
        yield from _sentinel_prefix()
        return
    if url.startswith("sqs://"):
        # Idle fetches poll every 0.1 s: a lease that runs out or an eta that comes due
        # is seen within the suite's slack.
        with sqs_server.namespace(polling_interval=0.1) as options:
            yield options
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


@pytest.fixture
def place(tmp_path: Path) -> Iterator[Callable[[str], tuple[str, dict[str, Any]]]]:
    """Gives the URL and isolating options (``isolated``) of a store of a kind, for
    suites that make their own objects; what it isolated is cleaned up after the test."""
    with contextlib.ExitStack() as stack:
        def make(kind: str) -> tuple[str, dict[str, Any]]:
            url = url_for(kind, tmp_path)
            return url, stack.enter_context(isolated(url))

        yield make


@pytest.fixture
def pg_isolated(tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """A PostgreSQL URL and the options of a schema of this test's own (dropped after):
    for suites whose stores are made from a URL rather than by ``broker``/``backend``."""
    url = url_for("postgresql", tmp_path)
    with isolated(url) as options:
        yield url, options


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
    sqs_server.stop()
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


def sentinel_cluster() -> Any:
    """This session's Sentinel deployment, started now if need be (skipped without
    redis-server, except under CI)."""
    if not _sentinel_cluster:
        import sys
        import tempfile

        integration = Path(__file__).parents[1] / "integration"
        sys.path[:0] = [str(integration), str(integration / "redis")]
        from sentinel_harness import SentinelCluster

        directory = Path(tempfile.mkdtemp(prefix="celeriac-contract-sentinel-"))
        _sentinel_cluster.append(SentinelCluster(directory, sentinels=1))
    return _sentinel_cluster[0]


@pytest.fixture(scope="session", autouse=True)
def _stop_sentinel_cluster() -> Iterator[None]:
    """Stop the session's Sentinel deployment, if a test started it."""
    yield
    if _sentinel_cluster:
        import shutil

        cluster = _sentinel_cluster.pop()
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


def _sentinel_prefix() -> Iterator[dict[str, Any]]:
    """Sentinel: the master's name and a key prefix of the test's own, its keys deleted
    after (on the primary, which no test fails over)."""
    import redis
    from sentinel_harness import MASTER_NAME

    cluster = sentinel_cluster()
    prefix = f"contract:{uuid.uuid4().hex[:12]}:"
    try:
        yield {"key_prefix": prefix, "master_name": MASTER_NAME}
    finally:
        client = redis.Redis(port=cluster.primary.port, socket_timeout=5)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


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
