"""How the Redis broker and backend read their URL and options (no server needed).

No TLS server runs here, so ``rediss://`` is checked where it can be: the connections
the client would open are built with the TLS settings given.
"""

from __future__ import annotations

import asyncio
import ssl

import pytest
import redis
import redis.connection
from redis.asyncio.connection import SSLConnection

from celeriac import App
from celeriac.backends import create_backend
from celeriac.backends.redis import RedisBackend
from celeriac.brokers import create_broker
from celeriac.brokers.redis import RedisBroker
from celeriac.errors import ConfigurationError


def tls_connection(url: str, options: dict[str, object]) -> SSLConnection:
    broker = create_broker(url, options)
    assert isinstance(broker, RedisBroker)

    async def make() -> SSLConnection:  # a pool belongs to an event loop
        connection = broker.settings.make_pool().make_connection()
        assert isinstance(connection, SSLConnection)
        return connection

    return asyncio.run(make())


def test_rediss_connects_with_tls_options_from_the_transport_options() -> None:
    connection = tls_connection("rediss://cache.example:6380/2", {
        "ssl_cert_reqs": "required", "ssl_ca_certs": "/etc/ssl/ca.pem",
        "ssl_certfile": "/etc/ssl/client.pem", "ssl_keyfile": "/etc/ssl/client.key",
    })

    assert (connection.host, connection.port, connection.db) == ("cache.example", 6380, 2)
    assert connection.cert_reqs == ssl.CERT_REQUIRED
    assert connection.ca_certs == "/etc/ssl/ca.pem"
    assert (connection.certfile, connection.keyfile) == ("/etc/ssl/client.pem",
                                                         "/etc/ssl/client.key")
    assert connection.check_hostname is True


def test_rediss_takes_celerys_broker_use_ssl_shape_and_the_url_query() -> None:
    # Celery's broker_use_ssl mapping, with ssl.CERT_* constants
    nested = tls_connection("rediss://cache.example/0",
                            {"ssl": {"ssl_cert_reqs": ssl.CERT_NONE,
                                     "ssl_check_hostname": False}})
    assert nested.cert_reqs == ssl.CERT_NONE
    assert nested.check_hostname is False
    # The URL's query string, in Celery's spelling; it wins over the options
    queried = tls_connection(
        "rediss://cache.example/0?ssl_cert_reqs=CERT_OPTIONAL&ssl_check_hostname=false",
        {"ssl_cert_reqs": "required"})
    assert queried.cert_reqs == ssl.CERT_OPTIONAL
    assert queried.check_hostname is False


def test_the_backend_takes_tls_options_too() -> None:
    backend = create_backend("rediss://cache.example/1?ssl_cert_reqs=none")
    assert isinstance(backend, RedisBackend)

    async def make() -> object:
        return backend.settings.make_pool().make_connection()

    connection = asyncio.run(make())
    assert isinstance(connection, SSLConnection)
    assert connection.cert_reqs == ssl.CERT_NONE


def test_sync_callers_connect_with_the_same_tls_options_and_pool_limit() -> None:
    # delay() and get() from a plain thread use a sync pool: same server, same TLS
    broker = create_broker("rediss://cache.example:6380/2?ssl_cert_reqs=required", {
        "ssl_ca_certs": "/etc/ssl/ca.pem", "ssl_certfile": "/etc/ssl/client.pem",
        "ssl_keyfile": "/etc/ssl/client.key", "pool_limit": 3, "connection_timeout": 2.5})
    assert isinstance(broker, RedisBroker)
    pool = broker.settings.make_sync_pool()
    connection = pool.make_connection()

    assert isinstance(connection, redis.connection.SSLConnection)
    assert (connection.host, connection.port, connection.db) == ("cache.example", 6380, 2)
    assert connection.cert_reqs == ssl.CERT_REQUIRED
    assert connection.ca_certs == "/etc/ssl/ca.pem"
    assert (connection.certfile, connection.keyfile) == ("/etc/ssl/client.pem",
                                                         "/etc/ssl/client.key")
    # At most pool_limit connections; a caller waits for one up to the timeout
    assert isinstance(pool, redis.BlockingConnectionPool)
    assert (pool.max_connections, pool.timeout) == (3, 2.5)
    # A silent server is reported within the timeout: every socket step is bounded
    assert connection.socket_timeout == connection.socket_connect_timeout == 2.5


def test_tls_options_on_a_plain_url_are_an_error() -> None:
    with pytest.raises(ConfigurationError, match="use rediss://"):
        create_broker("redis://cache.example/0", {"ssl_cert_reqs": "none"})
    with pytest.raises(ConfigurationError, match="use rediss://"):
        create_backend("redis://cache.example/0?ssl_ca_certs=/etc/ssl/ca.pem")


def test_a_bad_cert_reqs_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="ssl_cert_reqs must be"):
        create_broker("rediss://cache.example/0", {"ssl_cert_reqs": "sometimes"})


def test_an_unknown_transport_option_is_an_error_that_suggests_the_known_one() -> None:
    app = App("x", broker="redis://cache.example/0",
              broker_transport_options={"reclaim_intervall": 2})
    with pytest.raises(ConfigurationError, match='did you mean "reclaim_interval"'):
        _ = app.broker


def test_transport_options_shape_the_broker() -> None:
    broker = create_broker("redis://cache.example/0?key_prefix=app1:", {
        "lease_seconds": 8, "reclaim_interval": 0.5, "connection_timeout": 2.5,
        "pool_limit": 3})
    assert isinstance(broker, RedisBroker)

    assert broker.prefix == "app1:"
    assert broker.stream_key("emails", 7) == "app1:q:emails:7"
    assert (broker.lease_seconds, broker.reclaim_interval) == (8.0, 0.5)
    # A fetch that finds nothing wakes at least once per reclaim interval
    assert broker.max_block == 0.5

    async def pool_size() -> int | None:
        return broker.settings.make_pool().max_connections

    assert asyncio.run(pool_size()) == 3
    assert broker.settings.url == "redis://cache.example/0"  # redis-py never sees key_prefix


def test_defaults() -> None:
    broker = create_broker("redis://cache.example/0")
    assert isinstance(broker, RedisBroker)
    assert broker.prefix == "celeriac:"
    assert broker.lease_seconds == 10.0
    assert broker.reclaim_interval == 1.0  # reclaim passes every second, for 10 s leases
    assert broker.settings.connection_timeout == 4.0
    assert broker.settings.pool_limit is None  # connections opened as concurrency needs
