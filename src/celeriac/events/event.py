"""The events: their types, their fields, and how a batch of them travels on the bus.

Events have Celery's names and shape, so that what a Celery monitor reads keeps working:
every event is a dict with ``type``, ``timestamp`` (Unix time), ``hostname`` (the node
name, e.g. ``celeriac@host``; a producer's is ``gen<pid>@host``), ``pid`` and ``seq``;
task events add ``uuid`` (the task id), ``name``, ``queue``, ``root_id`` and
``parent_id``, and each type its own fields (``FIELDS``).

``seq`` numbers the events of one emitting process from 0: ``(hostname, pid, seq)`` is
unique, and a monitor receives the events of one ``(hostname, pid)`` in ``seq`` order.
Numbers are given when a batch is published: events a worker had to drop (the bus was
unreachable and its buffer full) are dropped before they are numbered, and counted in
its log instead; a gap means a batch whose publish failed was sent again (renumbered).

On the wire, an emitting process sends its events in batches, one bus record per batch
(``encode``): the hostname, pid and first ``seq`` once, then each event as a compact
array: its type, timestamp and values in the order ``FIELDS`` gives for its type (a
task that is its own root is sent with ``root_id`` null, filled in on reading). No
dict per event is built where events are made (the worker's hot path); ``expand`` makes
them where they are read.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson

logger = logging.getLogger("celeriac.events")

FORMAT_VERSION = 1

# How much of a task's arguments and traceback an event carries (characters).
ARGS_REPR_MAX = 256
TRACEBACK_MAX = 4096
REASON_MAX = 1024

TASK_FIELDS = ("uuid", "name", "queue", "root_id", "parent_id")
WORKER_FIELDS = ("freq", "active", "processed", "loadavg", "processes", "sw_ident",
                 "sw_ver", "sw_sys")

# The fields of each type after ``type`` and ``timestamp``, in their order on the wire.
FIELDS: dict[str, tuple[str, ...]] = {
    "task-sent": (*TASK_FIELDS, "args", "kwargs", "retries", "eta", "expires"),
    "task-received": (*TASK_FIELDS, "args", "kwargs", "retries", "eta", "expires"),
    "task-started": TASK_FIELDS,
    "task-succeeded": (*TASK_FIELDS, "runtime", "result_size"),
    "task-failed": (*TASK_FIELDS, "exception", "traceback", "runtime"),
    "task-retried": (*TASK_FIELDS, "exception", "eta", "countdown"),
    "task-rejected": (*TASK_FIELDS, "reason", "dead_lettered", "requeue"),
    "task-revoked": (*TASK_FIELDS, "terminated", "expired"),
    "worker-online": WORKER_FIELDS,
    "worker-heartbeat": WORKER_FIELDS,
    "worker-offline": WORKER_FIELDS,
}

TASK_EVENTS = tuple(name for name in FIELDS if name.startswith("task-"))
WORKER_EVENTS = tuple(name for name in FIELDS if name.startswith("worker-"))

# One event as it is buffered: (type, timestamp, *values in FIELDS[type] order).
Compact = tuple[Any, ...]


def bounded_repr(value: Any, limit: int = ARGS_REPR_MAX) -> str:
    """``repr(value)`` cut to ``limit`` characters; never raises (a bad __repr__)."""
    try:
        text = repr(value)
    except Exception as exc:  # a user's object whose repr fails must not fail the task
        return f"<unrepresentable {type(value).__name__}: {exc.__class__.__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def bounded(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit - 3] + "..."


def iso(timestamp: float | None) -> str | None:
    """A Unix time as Celery's events carry eta and expires (ISO 8601, UTC)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


# -- sequence numbers ---------------------------------------------------------------------

_sequence_lock = threading.Lock()
_sequences: dict[str, int] = {}


def reserve(hostname: str, count: int) -> int:
    """The first of ``count`` sequence numbers for ``hostname`` in this process.

    Numbers are taken when a batch is published, so every emitter of one hostname in
    this process (a solo worker's consumer and its node service share one anyway) draws
    from one counter, and a batch's events are numbered consecutively."""
    with _sequence_lock:
        first = _sequences.get(hostname, 0)
        _sequences[hostname] = first + count
    return first


def producer_hostname() -> str:
    """A producer's name in events, as Celery's (``gen<pid>@host``)."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


# -- on the wire --------------------------------------------------------------------------


def encode(hostname: str, pid: int, seq: int, events: list[Compact]) -> bytes:
    """One bus record for a batch of compact events."""
    return orjson.dumps({"v": FORMAT_VERSION, "hostname": hostname, "pid": pid, "seq": seq,
                         "events": events})


def expand(payload: bytes, received_at: float | None = None) -> Iterator[dict[str, Any]]:
    """The events of one bus record, as Celery-shaped dicts, in their order.

    A record this version cannot read (another format, a corrupt one) yields nothing
    and is logged: one bad record must not stop a monitor."""
    try:
        record = orjson.loads(payload)
        hostname, pid, seq = record["hostname"], record["pid"], record["seq"]
        events = record["events"]
        if record.get("v") != FORMAT_VERSION or not isinstance(events, list):
            raise ValueError(f"format {record.get('v')!r}")
    except Exception as exc:
        logger.warning("skipped an event record this version cannot read (%s)", exc)
        return
    for offset, item in enumerate(events):
        try:
            kind, timestamp, *values = item
            names = FIELDS[kind]
        except (ValueError, TypeError, KeyError):
            logger.warning("skipped an event this version cannot read: %.100r", item)
            continue
        event: dict[str, Any] = {"type": kind, "timestamp": timestamp,
                                 "hostname": hostname, "pid": pid, "seq": seq + offset,
                                 "clock": seq + offset}
        event.update(zip(names, values, strict=False))
        if "root_id" in event and event["root_id"] is None:
            event["root_id"] = event["uuid"]  # sent as None: the task is its own root
        if received_at is not None:
            event["local_received"] = received_at
        yield event
