"""What celeriac declares on RabbitMQ, and how it is named and routed. No I/O here.

The AMQP broker (``celeriac.brokers.amqp``) keeps the *policy* of each queue in one
``QueueSpec`` (durable or transient, classic or quorum) and asks a ``Topology`` for every
name, argument and routing key, so the rules are written once and tested without a
server. For a namespace ``ns`` (empty by default) and a celeriac queue ``q``::

    queue     ns+q                              the work queue (x-max-priority=10)
    queue     ns+celeriac.delay.q.NN            delay level NN of q: a TTL of 2**NN
                                                units, dead-lettering to exchange NN-1
    exchange  ns+celeriac.delay.NN              topic: bit NN of a delayed message's key
    exchange  ns+celeriac.delivery              topic: delayed messages that are due
    exchange  ns+celeriac.dead  -> queue ns+celeriac.dead   every dead letter
    queue     ns+celeriac.queues                the registry of queue names (see amqp.py)

**Delays** (``eta``/``countdown``) wait in RabbitMQ, never in a worker. A delay is
rounded *up* to whole units of ``DELAY_UNIT_MS`` and written in binary in the routing
key, one word per level, highest level first, followed by a token naming the
destination queue: 0.40 s = 40 units = ``0.0.(...).1.0.1.0.0.0.<token>``. The message
is published to the exchange of its highest set bit. Each level's exchange routes a key
whose bit is 1 into that level's queue for the destination (where it waits out the
queue's TTL, then is dead-lettered to the next lower level's exchange, key unchanged),
and a key whose bit is 0 straight on to the next lower exchange. Below level 0 the
delivery exchange routes by the token into the work queue. So a message makes one
queue hop per set bit, and every queue holds messages of a single TTL: per-queue TTL
expires strictly from the head, with no message stuck behind a longer one. Nothing
runs outside RabbitMQ, so delays survive worker and broker restarts (a durable queue's
delay queues are durable and hold its persistent messages). Delays longer than the top
level (``MAX_DELAY_MS``, about 31 days) travel the whole ladder and are sent down it
again by the fetching worker, which never hands out a message before its ``eta``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celeriac.config import suggest
from celeriac.errors import ConfigurationError
from celeriac.tls import normalize

DELAY_LEVELS = 28
DELAY_UNIT_MS = 10  # the resolution of a delay; a delay is never rounded down
MAX_DELAY_UNITS = 2 ** DELAY_LEVELS - 1
MAX_DELAY_MS = MAX_DELAY_UNITS * DELAY_UNIT_MS

# Classic queue storage version 2 (RabbitMQ 3.10+, the only one from 4.0): it confirms a
# persistent message several times sooner than version 1, which waits on its message
# store's fsync (measured here: 0.3 ms against 0.5-1.3 ms per confirmed publish).
CLASSIC_QUEUE_VERSION = 2

# RabbitMQ priorities run 0..x-max-priority; celeriac uses 0-9. Ten levels as the issue
# asks; every extra level costs the classic queue another internal sub-queue.
X_MAX_PRIORITY = 10
# Celeriac's own priorities stop at 9, so RabbitMQ's top level is free for messages going
# back to a queue they were already delivered from (a dead worker's, a lease that ran
# out, a hand-back): published at this level, they come out before every waiting
# message, near the place they left (RabbitMQ puts a redelivery there too), instead of
# behind the whole backlog. Their own priority travels in HEADER_PRIORITY.
RETURN_PRIORITY = X_MAX_PRIORITY
MAX_TASK_PRIORITY = 9

# Headers celeriac reads and writes (RabbitMQ's own start with "x-" too: x-death,
# x-delivery-count).
HEADER_SENT = "x-celeriac-sent"  # first publish time, microseconds: age order in a batch
HEADER_ETA = "x-celeriac-eta"  # Unix time in milliseconds before which it must not run
HEADER_DELIVERIES = "x-celeriac-deliveries"  # deliveries counted before this copy
HEADER_REASON = "x-celeriac-reason"  # why it was dead-lettered
HEADER_QUEUE = "x-celeriac-queue"  # the celeriac queue a dead letter came from
HEADER_DEAD_AT = "x-celeriac-dead-at"  # Unix time in milliseconds it was dead-lettered
HEADER_PRIORITY = "x-celeriac-priority"  # its own priority, on a copy sent back at the top

DEFAULT_HEARTBEAT = 10  # seconds; a dead peer is noticed within about three of them
DEFAULT_CONNECT_TIMEOUT = 4.0
DEFAULT_PUBLISH_TIMEOUT = 10.0  # a publish is confirmed, or fails, within this

CLASSIC = "classic"
QUORUM = "quorum"
QUEUE_TYPES = (CLASSIC, QUORUM)

# task_delivery_limit's default, for a broker made without an app (the app passes its
# own setting as the ``delivery_limit`` transport option).
DEFAULT_DELIVERY_LIMIT = 5

# The arguments a quorum queue gets so that RabbitMQ enforces the delivery limit itself
# (see ``Topology.work_queue_arguments``); a queue declared before celeriac set them has
# none, and RabbitMQ refuses to redeclare it with them (``amqp_publish`` explains how to
# migrate).
QUORUM_LIMIT_ARGUMENTS = ("x-delivery-limit", "x-dead-letter-strategy", "x-overflow",
                          "x-dead-letter-routing-key")


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """How one celeriac queue lives on RabbitMQ.

    ``durable``: the queue survives a broker restart and its messages are persistent
    (delivery_mode 2). A transient queue (``durable=False``) and its messages
    (delivery_mode 1) are gone after a broker restart: faster, for tasks that may be lost.
    ``quorum``: a replicated quorum queue; always durable, and **without priorities**
    (RabbitMQ quorum queues ignore message priority: everything comes out oldest first).
    ``delivery_limit``: on a quorum queue, the deliveries RabbitMQ itself makes before
    it dead-letters a message (``task_delivery_limit``); None leaves it to the worker.
    """

    name: str
    durable: bool = True
    quorum: bool = False
    delivery_limit: int | None = None

    @property
    def delivery_mode(self) -> int:
        return 2 if self.durable else 1


@dataclass(frozen=True, slots=True)
class AMQPOptions:
    """The broker's transport options (``broker_transport_options``), checked once."""

    namespace: str = ""
    heartbeat: int = DEFAULT_HEARTBEAT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT
    default_queue_type: str = CLASSIC
    # task_delivery_limit, and whether quorum queues are declared to enforce it themselves
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT
    quorum_delivery_limit: bool = True
    queues: Mapping[str, QueueSpec] = field(default_factory=dict)
    # broker_use_ssl (the ``ssl`` transport option), as celeriac.tls.normalize gives it
    tls: Mapping[str, Any] | None = None
    _defaults: dict[str, QueueSpec] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, options: Mapping[str, Any], url_namespace: str = "") -> AMQPOptions:
        """Build from ``broker_transport_options``; unknown keys are errors.

        Per-queue policy: ``transient_queues`` and ``quorum_queues`` (lists of names), or
        ``queues`` (``{name: {"durable": bool, "type": "classic" | "quorum"}}``).
        ``delivery_limit`` (the app fills it from ``task_delivery_limit``) and
        ``quorum_delivery_limit`` (False: quorum queues are declared without RabbitMQ's
        delivery limit, as before celeriac set it; see ``Topology.work_queue_arguments``).
        """
        unknown = set(options) - _OPTION_NAMES
        if unknown:
            bad = sorted(unknown)[0]
            raise ConfigurationError(
                f"unknown AMQP transport option {bad!r}{suggest(bad, _OPTION_NAMES)}")
        default_type = str(options.get("default_queue_type", CLASSIC))
        _check_type(default_type, "default_queue_type")
        specs: dict[str, dict[str, Any]] = {}
        for name in _names(options.get("transient_queues", ()), "transient_queues"):
            specs.setdefault(name, {})["durable"] = False
        for name in _names(options.get("quorum_queues", ()), "quorum_queues"):
            specs.setdefault(name, {})["type"] = QUORUM
        for name, spec in dict(options.get("queues") or {}).items():
            if not isinstance(spec, Mapping) or set(spec) - {"durable", "type"}:
                raise ConfigurationError(
                    f"transport option queues[{name!r}] must be a mapping with the keys "
                    f"'durable' and/or 'type', not {spec!r}")
            specs.setdefault(str(name), {}).update(spec)
        limit = _delivery_limit(options.get("delivery_limit", DEFAULT_DELIVERY_LIMIT))
        on_quorum = options.get("quorum_delivery_limit", True)
        if not isinstance(on_quorum, bool):
            raise ConfigurationError(f"transport option quorum_delivery_limit must be true or "
                                     f"false, not {on_quorum!r}")
        quorum_limit = limit if on_quorum else None
        queues = {name: _spec(name, values, default_type, quorum_limit)
                  for name, values in specs.items()}
        namespace = str(options.get("namespace", url_namespace))
        return cls(namespace=namespace,
                   heartbeat=int(options.get("heartbeat", DEFAULT_HEARTBEAT)),
                   # connection_timeout: the generic name (App passes the setting
                   # broker_connection_timeout under it); connect_timeout, the older
                   # AMQP-only name, wins when both are given: it is the more specific.
                   connect_timeout=_seconds(options.get(
                       "connect_timeout", options.get("connection_timeout",
                                                      DEFAULT_CONNECT_TIMEOUT)),
                       "connect_timeout" if "connect_timeout" in options
                       else "connection_timeout"),
                   publish_timeout=float(options.get("publish_timeout",
                                                     DEFAULT_PUBLISH_TIMEOUT)),
                   default_queue_type=default_type, delivery_limit=limit,
                   quorum_delivery_limit=on_quorum, queues=queues,
                   tls=normalize(options.get("ssl"), "broker_use_ssl"))

    def spec(self, queue: str) -> QueueSpec:
        found = self.queues.get(queue) or self._defaults.get(queue)
        if found is None:  # the default policy; remembered, as this runs per message
            quorum = self.default_queue_type == QUORUM
            found = QueueSpec(queue, durable=True, quorum=quorum,
                              delivery_limit=self.delivery_limit
                              if quorum and self.quorum_delivery_limit else None)
            self._defaults[queue] = found
        return found


_OPTION_NAMES = frozenset({
    "lease_seconds", "namespace", "heartbeat", "connect_timeout", "connection_timeout",
    "publish_timeout",
    "default_queue_type", "transient_queues", "quorum_queues", "queues", "ssl",
    "delivery_limit", "quorum_delivery_limit",
})


def _delivery_limit(value: Any) -> int:
    """task_delivery_limit as the broker takes it: a whole number of at least 1."""
    if type(value) is not int or value < 1:  # (bool: not int)
        raise ConfigurationError(f"transport option delivery_limit (task_delivery_limit) "
                                 f"must be a whole number of at least 1, not {value!r}")
    return value


def _seconds(value: Any, option: str) -> float:
    """A positive number of seconds, or a ConfigurationError naming the option."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise ConfigurationError(f"transport option {option} must be a positive number of "
                                 f"seconds, not {value!r}")
    return seconds


def _names(value: Any, option: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence | set | frozenset):
        raise ConfigurationError(f"transport option {option} must be a list of queue names, "
                                 f"not {value!r}")
    return [str(name) for name in value]


def _check_type(queue_type: str, what: str) -> None:
    if queue_type not in QUEUE_TYPES:
        raise ConfigurationError(f"{what} must be one of {', '.join(QUEUE_TYPES)}, "
                                 f"not {queue_type!r}")


def _spec(name: str, values: Mapping[str, Any], default_type: str,
          quorum_limit: int | None) -> QueueSpec:
    queue_type = str(values.get("type", default_type))
    _check_type(queue_type, f"the type of queue {name!r}")
    durable = values.get("durable", True)
    if not isinstance(durable, bool):
        raise ConfigurationError(f"durable for queue {name!r} must be true or false")
    if queue_type == QUORUM and not durable:
        raise ConfigurationError(f"queue {name!r} cannot be both transient and a quorum "
                                 "queue: quorum queues are always durable")
    quorum = queue_type == QUORUM
    return QueueSpec(name, durable=durable, quorum=quorum,
                     delivery_limit=quorum_limit if quorum else None)


class Topology:
    """Every name, argument and routing key, for one namespace."""

    def __init__(self, namespace: str = "") -> None:
        self.namespace = namespace
        prefix = namespace + "celeriac."
        self.delivery_exchange = prefix + "delivery"
        self.dead_exchange = prefix + "dead"
        self.dead_queue = prefix + "dead"
        self.registry_queue = prefix + "queues"
        self._delay_prefix = prefix + "delay."

    # -- names ----------------------------------------------------------------------------

    def queue(self, name: str) -> str:
        """The RabbitMQ name of a celeriac queue."""
        return self.namespace + name

    def delay_queue(self, name: str, level: int) -> str:
        return f"{self._delay_prefix}{name}.{level:02d}"

    def delay_exchange(self, level: int) -> str:
        """The exchange that reads bit ``level``; -1 is the delivery exchange."""
        return self.delivery_exchange if level < 0 else f"{self._delay_prefix}{level:02d}"

    # -- arguments ------------------------------------------------------------------------

    def work_queue_arguments(self, spec: QueueSpec) -> dict[str, Any]:
        """The arguments of a work queue.

        Anything RabbitMQ itself drops from a work queue (a quorum queue's own delivery
        limit, a reject without requeue) lands in the dead letters, never in the void.

        A quorum queue with a ``delivery_limit`` enforces it itself: RabbitMQ counts
        every return (a consumer that died or lost its connection, a nack with requeue)
        in ``x-delivery-count`` and, once a return makes that count exceed
        ``x-delivery-limit``, dead-letters the message instead of delivering it again. So
        ``x-delivery-limit`` is the limit minus one: a message is delivered at most
        ``delivery_limit`` times, as the worker's own check allows (it refuses a delivery
        counted above the limit, so a message is dead-lettered by exactly one of the two).
        ``at-least-once`` dead-lettering keeps the message in the quorum queue until the
        dead-letter queue has confirmed it (the default, at-most-once, can lose it); RabbitMQ
        honours it only with ``x-overflow=reject-publish`` (else it falls back to
        at-most-once, with a warning in its log), under which a publish to a queue at a
        length limit (``max-length`` from a policy) is refused (nacked) rather than
        dropping the oldest message.
        """
        arguments: dict[str, Any] = {"x-dead-letter-exchange": self.dead_exchange}
        if spec.quorum:
            arguments["x-queue-type"] = QUORUM
            if spec.delivery_limit is not None:
                arguments.update({
                    "x-delivery-limit": spec.delivery_limit - 1,
                    "x-dead-letter-routing-key": spec.name,  # as the worker's dead letters
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish"})
        else:
            arguments["x-max-priority"] = X_MAX_PRIORITY
            arguments["x-queue-version"] = CLASSIC_QUEUE_VERSION
        return arguments

    def delay_queue_arguments(self, level: int) -> dict[str, Any]:
        return {"x-message-ttl": (2 ** level) * DELAY_UNIT_MS,
                "x-dead-letter-exchange": self.delay_exchange(level - 1),
                "x-queue-version": CLASSIC_QUEUE_VERSION}

    # -- routing --------------------------------------------------------------------------

    def token(self, name: str) -> str:
        """One routing-key word naming a queue whatever characters its name has."""
        return hashlib.blake2b(self.queue(name).encode(), digest_size=8).hexdigest()

    def delay_route(self, name: str, delay_ms: float) -> tuple[str, str]:
        """The exchange and routing key that deliver to ``name`` after ``delay_ms``."""
        units = min(MAX_DELAY_UNITS, max(1, math.ceil(delay_ms / DELAY_UNIT_MS)))
        bits = [str((units >> level) & 1) for level in reversed(range(DELAY_LEVELS))]
        key = ".".join([*bits, self.token(name)])
        return self.delay_exchange(units.bit_length() - 1), key

    def delay_binding(self, name: str, level: int) -> str:
        """Pattern on exchange ``level`` for the keys that wait in ``name``'s queue there."""
        words = ["*"] * DELAY_LEVELS
        words[DELAY_LEVELS - 1 - level] = "1"
        return ".".join([*words, self.token(name)])

    def pass_binding(self, level: int) -> str:
        """Pattern on exchange ``level`` for the keys that go on to the level below."""
        return ".".join(["*"] * (DELAY_LEVELS - 1 - level) + ["0", "#"])

    def delivery_binding(self, name: str) -> str:
        return ".".join(["*"] * DELAY_LEVELS + [self.token(name)])
