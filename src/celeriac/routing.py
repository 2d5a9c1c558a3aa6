"""Which queue (and priority) a task goes to: Celery's ``task_routes`` and ``task_queues``.

**Routes** (``task_routes``) are tried in order; the first that answers wins:

- a mapping from task name or pattern to a route: ``{"proj.mail": "mail"}``. Exact
  names are looked up first, then patterns in the mapping's order: globs
  (``"proj.email.*"``) and compiled regular expressions (``re.compile(r"video\\..*")``);
- a list of ``(pattern, route)`` pairs, tried in that order (Celery's form for when
  the order of patterns matters);
- a callable ``(name, args, kwargs, options, task=None, **kw) -> route | None``;
- a list or tuple of any of these.

A route is a queue name, a ``Queue``, or a mapping of options: ``{"queue": "io",
"priority": 5}``. A route may name a ``routing_key`` instead of a queue: the first
queue of ``task_queues`` whose routing key (an AMQP topic pattern: ``*`` one word,
``#`` any) matches it is used. Exchanges (``exchange``, ``exchange_type``, kombu's
``Exchange``) are accepted and do not change where a message goes: celeriac routes by
queue name only. Any other option name in a route is an error.

What a call and the task itself say wins over routes: the queue is the call's
``queue=`` (or the queue bound to its ``routing_key=``), else the task's
(``@app.task(queue=...)`` or ``task_annotations``), else the route's, else
``task_default_queue``.

**Queues** (``task_queues``) declares the queues, with their options, as a list of names
or ``Queue`` objects, or a mapping from name to options (``{"bulk": {"durable":
False}}``). A worker started without ``-Q`` consumes them all, in the given order. With
``task_create_missing_queues=False``, sending to a queue not declared there raises
``QueueNotFound``. Brokers that can (RabbitMQ) declare each queue durable or transient,
classic or quorum, as it says; the others keep every queue as durably as their server.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from celeriac.config import suggest
from celeriac.errors import ConfigurationError, QueueNotFound

RouteResult = dict[str, Any]
Matcher = Callable[[str], Any]

QUORUM = "quorum"


DELIVERY_MODES = {1: 1, 2: 2, "transient": 1, "persistent": 2}


def delivery_mode(value: Any, where: str) -> int:
    """kombu's delivery mode: 1 or "transient", 2 or "persistent"."""
    if isinstance(value, bool) or value not in DELIVERY_MODES:
        raise ConfigurationError(f"{where}: delivery_mode must be 1 or 'transient', 2 or "
                                 f"'persistent', not {value!r}")
    return DELIVERY_MODES[value]


@dataclass(frozen=True)
class Exchange:
    """kombu's ``Exchange``, accepted so that Celery's queue declarations keep working.

    celeriac routes by queue name, so the exchange's name and type do not change where
    a message goes; its ``delivery_mode`` does count: ``Exchange(..., delivery_mode=1)``
    on a queue declared ``durable=False`` is Celery's transient queue, and on a durable
    queue it is an error (celeriac makes messages transient with their queue).
    """

    name: str = ""
    type: str = "direct"
    durable: bool = True
    auto_delete: bool = False
    delivery_mode: int | str | None = None
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in ("direct", "topic", "fanout", "headers"):
            raise ConfigurationError(f"exchange {self.name!r}: type must be direct, topic, "
                                     f"fanout or headers, not {self.type!r}")
        if self.delivery_mode is not None:
            delivery_mode(self.delivery_mode, f"exchange {self.name!r}")


@dataclass(frozen=True)
class Queue:
    """A declared queue, in the shape of kombu's ``Queue`` for the parts celeriac uses.

    ``durable=False``: a transient queue on brokers that have them (RabbitMQ: the queue
    and its messages are lost when the server restarts). ``queue_arguments={"x-queue-type":
    "quorum"}``: a RabbitMQ quorum queue. ``exchange``, ``routing_key``, ``auto_delete``
    and ``max_priority`` are accepted for Celery compatibility; only ``routing_key`` is
    used, to find the queue of a route that names a routing key instead of a queue.
    """

    name: str
    exchange: Any = None
    routing_key: str | None = None
    durable: bool = True
    auto_delete: bool = False
    queue_arguments: Mapping[str, Any] = field(default_factory=dict)
    max_priority: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError(f"a queue needs a non-empty name, not {self.name!r}")
        if not isinstance(self.durable, bool):
            raise ConfigurationError(f"durable of queue {self.name!r} must be true or false")
        queue_type = self.queue_arguments.get("x-queue-type", "classic")
        if queue_type not in ("classic", QUORUM):
            raise ConfigurationError(f"queue {self.name!r}: x-queue-type must be classic or "
                                     f"quorum, not {queue_type!r}")
        mode = getattr(self.exchange, "delivery_mode", None)
        if mode is not None and delivery_mode(mode, f"queue {self.name!r}") == 1 \
                and self.durable:
            raise ConfigurationError(
                f"queue {self.name!r}: its exchange sends transient messages "
                "(delivery_mode=1) but the queue is durable; celeriac makes messages "
                "transient with their queue: declare it with durable=False")

    @property
    def quorum(self) -> bool:
        return self.queue_arguments.get("x-queue-type") == QUORUM

    def transport_spec(self) -> dict[str, Any]:
        """What the AMQP broker's ``queues`` transport option says of this queue."""
        return {"durable": self.durable, "type": QUORUM if self.quorum else "classic"}


_QUEUE_OPTIONS = frozenset(f.name for f in fields(Queue)) - {"name"}


def declared_queues(value: Any) -> tuple[Queue, ...] | None:
    """``task_queues`` as Queue objects, checked (the setting's validator)."""
    if value is None:
        return None
    if isinstance(value, Queue | str):
        value = [value]
    if isinstance(value, Mapping):
        items = [_queue_from(name, options) for name, options in value.items()]
    elif isinstance(value, Sequence):
        items = [_queue_from(item, None) for item in value]
    else:
        raise ConfigurationError(f"task_queues must be a list of queues or a mapping from "
                                 f"queue name to options, not {value!r}")
    names = [queue.name for queue in items]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigurationError(f"task_queues declares {duplicates[0]!r} more than once")
    return tuple(items)


def _queue_from(item: Any, options: Any) -> Queue:
    if isinstance(item, Queue):
        return item
    if isinstance(item, Mapping) and options is None:  # {"name": "q", "durable": False}
        item, options = item.get("name"), {k: v for k, v in item.items() if k != "name"}
    options = dict(options or {})
    unknown = sorted(set(options) - _QUEUE_OPTIONS)
    if unknown:
        raise ConfigurationError(f"unknown option {unknown[0]!r} of queue {item!r}"
                                 f"{suggest(unknown[0], _QUEUE_OPTIONS)}")
    return Queue(item, **options)


def default_queues(queues: tuple[Queue, ...] | None, default_queue: str) -> tuple[str, ...]:
    """What a worker started without ``-Q`` consumes: every declared queue, in order."""
    if queues:
        return tuple(queue.name for queue in queues)
    return (default_queue,)


def check_declared(queue: str, queues: tuple[Queue, ...] | None) -> None:
    """Raise QueueNotFound unless ``queue`` is declared (``task_create_missing_queues=False``)."""
    names = [q.name for q in queues or ()]
    if queue not in names:
        raise QueueNotFound(f"queue {queue!r} is not in task_queues{suggest(queue, names)} "
                            f"and task_create_missing_queues is False")


def transport_queue_options(queues: tuple[Queue, ...] | None,
                            options: Mapping[str, Any]) -> dict[str, Any]:
    """Broker transport options with the declared queues' ``queues`` specs merged in.

    For brokers that declare queues durable or transient (``supports_queue_options``);
    specs given in ``broker_transport_options`` itself win.
    """
    if not queues:
        return dict(options)
    specs = {queue.name: queue.transport_spec() for queue in queues}
    for name, spec in dict(options.get("queues") or {}).items():
        specs[name] = {**specs.get(name, {}), **spec}
    return {**options, "queues": specs}


def check_routes(routes: Any) -> Any:
    """Validate ``task_routes`` (the setting's check); return it unchanged."""
    Router(routes)
    return routes


class Router:
    """``task_routes``, compiled once: ``route()`` gives the options of the first match."""

    def __init__(self, routes: Any, queues: tuple[Queue, ...] | None = None) -> None:
        self._queues = queues or ()
        self._routes: list[Callable[..., Any]] = [_compile(route) for route in _items(routes)]

    def route(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
              options: Mapping[str, Any], task: Any = None) -> RouteResult:
        for route in self._routes:
            found = route(name, args, kwargs, options, task)
            if found is not None:
                return self._expand(name, found)
        return {}

    def _expand(self, name: str, found: Any) -> RouteResult:
        if isinstance(found, str | Queue):
            found = {"queue": found}
        if not isinstance(found, Mapping):
            raise ConfigurationError(f"the route of {name} must be a queue name, a Queue or a "
                                     f"mapping of options, not {found!r}")
        check_route_options(found, f"the route of {name}")
        result = dict(found)
        queue = result.get("queue")
        if isinstance(queue, Queue):
            result["queue"] = queue.name
        elif queue is None and result.get("routing_key") is not None:
            result["queue"] = queue_for_key(name, str(result["routing_key"]), self._queues)
        return result


def queue_for_key(name: str, routing_key: str, queues: tuple[Queue, ...] | None) -> str:
    """The first declared queue bound to ``routing_key`` (for a route or call naming one)."""
    for queue in queues or ():
        if queue.routing_key is not None and topic_matches(queue.routing_key, routing_key):
            return queue.name
    raise ConfigurationError(f"{name} is sent with routing key {routing_key!r}, which no "
                             "queue in task_queues is bound to; celeriac routes by queue: "
                             "give a queue")


def _items(routes: Any) -> list[Any]:
    if routes is None:
        return []
    if isinstance(routes, Mapping) or callable(routes) or _is_pairs(routes):
        return [routes]
    if isinstance(routes, str) or not isinstance(routes, Sequence):
        raise ConfigurationError(
            f"task_routes must be a mapping, a callable or a list of them, not {routes!r}"
            + ("; pass the router function itself, not its import path"
               if isinstance(routes, str) else ""))
    return list(routes)


def _is_pairs(value: Any) -> bool:
    """A list of (pattern, route) pairs, Celery's ordered form of a mapping."""
    return (isinstance(value, list | tuple) and bool(value)
            and all(isinstance(p, list | tuple) and len(p) == 2
                    and isinstance(p[0], str | re.Pattern) for p in value))


def _compile(route: Any) -> Callable[..., Any]:
    if isinstance(route, str):
        raise ConfigurationError(f"router {route!r} is a string: pass the router function "
                                 "itself, not its import path")
    if callable(route) and not isinstance(route, Mapping):
        router: Callable[..., Any] = route
        return router
    if isinstance(route, Mapping):
        pairs = list(route.items())
    elif _is_pairs(route):
        pairs = [tuple(pair) for pair in route]
    else:
        raise ConfigurationError(f"a route table must be a mapping, a list of (pattern, "
                                 f"route) pairs or a callable, not {route!r}")
    return _table(pairs)


def _table(pairs: list[Any]) -> Callable[..., Any]:
    exact = {key: target for key, target in pairs if isinstance(key, str) and not _glob(key)}
    patterns: list[tuple[Matcher, Any]] = []
    for key, target in pairs:
        if isinstance(key, re.Pattern):
            patterns.append((key.match, target))
        elif not isinstance(key, str):
            raise ConfigurationError(f"a route key must be a task name, a glob or a compiled "
                                     f"regular expression, not {key!r}")
        elif _glob(key):
            patterns.append((re.compile(fnmatch.translate(key)).match, target))
        if isinstance(target, Mapping):  # checked now, not when the first task is sent
            check_route_options(target, f"the route of {key!r}")

    def lookup(name: str, *_: Any) -> Any:
        if name in exact:
            return exact[name]
        for matches, target in patterns:
            if matches(name):
                return target
        return None

    return lookup


# What a route may say. exchange and exchange_type are kombu's, accepted and not used
# (celeriac routes by queue name; see the module docstring).
ROUTE_OPTIONS = frozenset({"queue", "routing_key", "priority", "serializer", "compression",
                           "ignore_result", "expires", "exchange", "exchange_type"})


def check_route_options(route: Mapping[str, Any], where: str) -> None:
    """A typo in a route's options (``queu``) is an error, as in a task's options."""
    unknown = sorted(set(map(str, route)) - ROUTE_OPTIONS)
    if unknown:
        raise ConfigurationError(f"unknown option {unknown[0]!r} in {where}"
                                 f"{suggest(unknown[0], ROUTE_OPTIONS)}")


def _glob(key: str) -> bool:
    return any(ch in key for ch in "*?[")


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: words split on ``.``; ``*`` is one word, ``#`` zero or more."""
    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and p[0] in ("*", k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))
