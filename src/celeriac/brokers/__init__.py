"""Brokers, chosen by URL scheme. Each lives in its own module, imported only when used."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celeriac.brokers.base import Broker, DeadLetter, Delivery, Outgoing, QueueStats
from celeriac.config import suggest
from celeriac.errors import ConfigurationError
from celeriac.extras import import_for_url
from celeriac.urls import safe_url

# scheme -> "module:Class"; resolved lazily so that optional client libraries are
# imported only by the apps that use them.
BROKERS: dict[str, tuple[str, str]] = {
    "memory": ("celeriac.brokers.memory", "MemoryBroker"),
    "sqlite": ("celeriac.brokers.sqlite", "SQLiteBroker"),
    "redis": ("celeriac.brokers.redis", "RedisBroker"),
    "rediss": ("celeriac.brokers.redis", "RedissBroker"),
    "sentinel": ("celeriac.brokers.redis", "SentinelBroker"),
    "amqp": ("celeriac.brokers.amqp", "AMQPBroker"),
    "amqps": ("celeriac.brokers.amqp", "AMQPBroker"),
    "postgresql": ("celeriac.brokers.postgresql", "PostgreSQLBroker"),
    "postgres": ("celeriac.brokers.postgresql", "PostgreSQLBroker"),
    "sqs": ("celeriac.brokers.sqs", "SQSBroker"),
    "kafka": ("celeriac.brokers.kafka", "KafkaBroker"),
}


def broker_class(url: str) -> type[Broker]:
    """The Broker class of a URL's scheme (its module imported now)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in BROKERS:
        raise ConfigurationError(
            f"no broker for URL {safe_url(url)!r}{suggest(scheme, list(BROKERS))}; "
            f"known schemes: {', '.join(s + '://' for s in BROKERS)}"
        )
    module_name, class_name = BROKERS[scheme]
    cls: type[Broker] = getattr(import_for_url(module_name, url, "broker"), class_name)
    return cls


def create_broker(url: str, options: Mapping[str, Any] | None = None) -> Broker:
    return broker_class(url)(url, options)


__all__ = ["BROKERS", "Broker", "DeadLetter", "Delivery", "Outgoing", "QueueStats",
           "broker_class", "create_broker"]
