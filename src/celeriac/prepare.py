"""Building the message for one call of a task: ``App.prepare`` (``prepare_message``).

Every task sent goes through here (``delay``, ``apply_async``, ``send_task``,
``send_many``, canvas): the call's options are checked, each value is taken from the
call, else the task's options (with ``task_annotations``), else ``task_routes``, else
the settings, and the message is encoded for the broker. Apart from the App because it
is one concept of its own, and the producer's hot path: it is written for speed (no
closures; the common case reads each setting once), and ``App.prepare`` is this very
function, not a wrapper around it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

from celeriac import signals
from celeriac.brokers import Outgoing, broker_class
from celeriac.brokers.base import PARTITION_KEY_HEADER
from celeriac.canvas_run import link_payloads
from celeriac.config import suggest
from celeriac.errors import ConfigurationError, ContentDisallowed
from celeriac.limits import check_time_limit
from celeriac.message import Message
from celeriac.priorities import priority_level
from celeriac.routing import Router, check_declared, queue_for_key
from celeriac.task import SEND_OPTION_NAMES, TaskOptions
from celeriac.task import Task as TaskBase
from celeriac.timezones import aware
from celeriac.uniqueness.keys import resolve as resolve_unique
from celeriac.urls import safe_url

if TYPE_CHECKING:
    from celeriac.app import App

_NO_TASK_OPTIONS = TaskOptions()  # for a task not registered in this process
# The call options prepare_message reads, in the order it unpacks them.
_CALL_OPTIONS = ("queue", "priority", "serializer", "compression", "ignore_result",
                 "expires", "headers", "countdown", "eta", "time_limit", "soft_time_limit",
                 "link", "link_error", "task_id", "retries", "root_id", "parent_id",
                 "group_id", "unique_key", "unique_for", "partition_key")
_NO_CALL_OPTIONS = (None,) * len(_CALL_OPTIONS)
# What a route (task_routes) may set, in the order prepare_message unpacks it.
_ROUTED_OPTIONS = ("queue", "priority", "serializer", "compression", "ignore_result",
                   "expires")


def _pick(call: Any, task: Any, routed: Any, default: Any) -> Any:
    """The first of the call's, the task's and the route's value that is set, else default."""
    if call is not None:
        return call
    if task is not None:
        return task
    return default if routed is None else routed


def _task_id() -> str:
    """A random (version 4) UUID as text: what ``str(uuid.uuid4())`` gives, a few times
    faster (this runs for every task sent)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _checked_call(task: TaskBase[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
                  ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's arguments checked against the task's signature, and with
    ``validate=True`` validated and put in their JSON form (models as dicts)."""
    task.check_arguments(args, kwargs)
    validator = task.validator if task.options.validate else None
    return (args, kwargs) if validator is None else validator.for_message(args, kwargs)


def prepare_message(app: App, name: str, args: Sequence[Any] | None,
                    kwargs: Mapping[str, Any] | None, options: Mapping[str, Any],
                    task: TaskBase[Any, Any] | None = None) -> tuple[Message, Outgoing]:
    """Check and build the message for a call, and encode it for the broker.

    Each value comes from the call's options, else the task's (with
    ``task_annotations``), else ``task_routes``, else the settings. This runs for
    every task sent, so it is written for speed: no closures, and the common case
    (no options, no routes) reads each setting once.
    """
    args = tuple(args) if args is not None else ()
    kwargs = dict(kwargs) if kwargs is not None else {}
    if options and not SEND_OPTION_NAMES.issuperset(options):
        bad = sorted(set(options) - SEND_OPTION_NAMES)[0]
        raise TypeError(f"unknown apply_async option {bad!r}"
                        f"{suggest(bad, SEND_OPTION_NAMES)}")
    if task is not None:
        task_opts = task.options
        args, kwargs = _checked_call(task, args, kwargs)
    else:
        task_opts = _NO_TASK_OPTIONS
    conf = app.conf
    if conf.task_routes is None:
        r_queue = r_priority = r_serializer = r_compression = r_ignore = r_expires = None
    else:
        (r_queue, r_priority, r_serializer, r_compression, r_ignore, r_expires) = map(
            _route(app, name, args, kwargs, options, task).get, _ROUTED_OPTIONS)
    if options.get("routing_key") is not None and options.get("queue") is None:
        options = {**options, "queue": queue_for_key(name, options["routing_key"],
                                                     conf.task_queues)}
    # Each option of the call, None where not given (all None, at no cost, for delay()).
    (queue, priority, serializer, compression, ignore_result, expires, headers,
     countdown, eta, time_limit, soft_time_limit, link, link_error, task_id, retries,
     root_id, parent_id, group_id, unique_key, unique_for, partition_key) = \
        tuple(map(options.get, _CALL_OPTIONS)) if options else _NO_CALL_OPTIONS

    queue = _pick(queue, task_opts.queue, r_queue, conf.task_default_queue)
    if not conf.task_create_missing_queues:
        check_declared(queue, conf.task_queues)
    priority = priority_level(_pick(priority, task_opts.priority, r_priority,
                                     conf.task_default_priority),
                               conf.task_queue_max_priority)
    serializer = _pick(serializer, task_opts.serializer, r_serializer,
                       conf.task_serializer)
    if serializer not in conf.accept_content:
        raise ContentDisallowed(
            f"cannot send with serializer {serializer!r}: it is not in accept_content "
            f"({', '.join(conf.accept_content)}), so no worker of this app would run it")
    compression = _pick(compression, task_opts.compression, r_compression,
                        conf.task_compression)
    ignore_result = bool(_pick(ignore_result, task_opts.ignore_result, r_ignore,
                               conf.task_ignore_result))
    headers = _headers(app, headers, ignore_result, partition_key)
    now = time.time()
    expires = _pick(expires, task_opts.expires, r_expires, None)
    if unique_for is None:
        unique_for = task_opts.unique_for
    unique = None if unique_for is None and unique_key is None else \
        resolve_unique(name, args, kwargs, task, unique_key, unique_for)
    message = Message(
        id=task_id or _task_id(),
        task=name, args=args, kwargs=kwargs, queue=queue, priority=priority,
        eta=None if countdown is None and eta is None
        else _eta(countdown, eta, now, app.naive_zone),
        expires=None if expires is None else _expires(expires, now, app.naive_zone),
        # Only this call's limits travel; the worker falls back to the task's and its own.
        time_limit=None if time_limit is None
        else check_time_limit("time_limit", time_limit),
        soft_time_limit=None if soft_time_limit is None
        else check_time_limit("soft_time_limit", soft_time_limit),
        retries=retries or 0, root_id=root_id, parent_id=parent_id, group_id=group_id,
        # link / link_error: signatures frozen into payloads (celeriac.canvas_run)
        callbacks=link_payloads(link) if link else (),
        errbacks=link_payloads(link_error) if link_error else (),
        ignore_result=ignore_result, headers=headers,
        unique_key=None if unique is None else unique[0],
        unique_for=None if unique is None else unique[1],
        sent_at=now,
    )
    payload = message.to_payload()
    if signals.before_task_publish.receivers:  # before encoding: headers may be added
        signals.before_task_publish.send(
            sender=name, body=payload, exchange="", routing_key=queue, headers=headers,
            properties={"correlation_id": message.id, "priority": priority},
            declare=[], retry_policy=None)
        payload = message.to_payload()  # (a receiver may have added headers)
    body = app.codec.encode(payload, serializer, compression)
    security = app.security
    if security is not None:  # signed and/or encrypted (celeriac.security)
        encrypt = task_opts.encrypt
        body = security.seal(body, queue, message.eta,
                             security.encrypt_tasks if encrypt is None else encrypt)
    return message, Outgoing(message.id, queue, body, priority, message.eta,
                             partition_key)


def _headers(app: App, given: Mapping[str, Any] | None, ignore_result: bool,
             partition_key: object) -> dict[str, Any]:
    headers = dict(given) if given else {}
    if partition_key is not None:  # in the headers too, so that a retry keeps its key
        headers[PARTITION_KEY_HEADER] = check_partition_key(app, partition_key)
    if not ignore_result:  # a backend may need to say where the result must go (rpc)
        extra = app.backend.message_headers()
        if extra:
            headers = {**extra, **headers}
    return headers


def check_partition_key(app: App, key: object) -> str:
    """``partition_key`` as given, when it is text and the app's broker honours keys."""
    if type(key) is not str or not key:
        raise TypeError(f"apply_async option partition_key must be a non-empty str, "
                        f"not {key!r}")
    url = app.conf.effective_broker_url
    if not broker_class(url).supports_partition_key:
        raise ConfigurationError(
            f"apply_async option partition_key: the broker {safe_url(url)} does not keep "
            "an order per key (kafka:// does); leave the option out")
    return key

def _route(app: App, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
           options: Mapping[str, Any], task: TaskBase[Any, Any] | None) -> dict[str, Any]:
    """What ``task_routes`` says for this call (its router is rebuilt when they change)."""
    routes, queues = app.conf.task_routes, app.conf.task_queues
    if routes is None:
        return {}
    source = app._router_source
    if source is None or source[0] is not routes or source[1] is not queues:
        app._router = Router(routes, queues)
        app._router_source = (routes, queues)
    return app._router.route(name, args, kwargs, options, task)


def _eta(countdown: float | None, eta: datetime | float | None, now: float,
         naive: tzinfo | None = UTC) -> float | None:
    if countdown is not None and eta is not None:
        raise TypeError("give countdown or eta, not both")
    if countdown is not None:
        return now + float(countdown)
    if eta is None:
        return None
    return _timestamp(eta, naive)


def _expires(expires: float | timedelta | datetime | None, now: float,
             naive: tzinfo | None = UTC) -> float | None:
    if expires is None:
        return None
    if isinstance(expires, timedelta):
        return now + expires.total_seconds()
    if isinstance(expires, int | float):
        return now + float(expires)
    return _timestamp(expires, naive)


def _timestamp(moment: datetime | float, naive: tzinfo | None = UTC) -> float:
    if isinstance(moment, int | float):
        return float(moment)
    return aware(moment, naive).timestamp()  # naive: enable_utc and timezone (timezones.py)
