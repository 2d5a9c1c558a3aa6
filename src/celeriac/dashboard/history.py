"""The dashboard's task history: what one task looked like, how to ask for tasks, and the
rule that folds a task event into a task's record.

Every dashboard process follows the same event stream and writes the same store, and a
dashboard that restarts reads back part of the stream it already applied (``since``), so
the fold (``merge``) must not care about order or repetition: applying the same events
twice, in another order, or from two processes at once ends in the same record. It is
made of order-free parts:

- the timeline is the set of ``(type, timestamp, hostname)`` seen, oldest first, of
  which the newest ``EVENTS_MAX`` are kept (a union, then a cut: order-free);
- the state is the one of the event with the greatest ``state_key``: terminal states
  (SUCCESS, FAILURE, REVOKED, REJECTED) above the running ones (RECEIVED, STARTED,
  RETRY) above SENT, then the newest, then Celery's precedence. A task-received that
  arrives late therefore never turns a SUCCESS back, and a retried task's next attempt
  (a newer task-received) does replace its RETRY;
- "the newest says" fields (worker, exception and traceback, runtime, reason, eta) are
  taken from an event only when no newer event of the kinds that carry them is in the
  timeline; fields every event of a task agrees on (name, queue, root, args) are filled
  once; times are the newest (the latest attempt's); ``retries`` only grows.

Stores keep ``TaskRecord`` values and run ``merge`` on them (in a transaction, or with a
compare-and-set), so there is one merge rule for every store.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from celeriac import states
from celeriac.errors import CeleriacError

# The states a record can be in: celeriac.states, with the two Celery has only in events.
RECEIVED = "RECEIVED"
REJECTED = "REJECTED"
STATES = (states.PENDING, states.SENT, RECEIVED, states.STARTED, states.RETRY,
          states.SUCCESS, states.FAILURE, REJECTED, states.REVOKED)

# Which state each task event puts a task in.
EVENT_STATES: dict[str, str] = {
    "task-sent": states.SENT,
    "task-received": RECEIVED,
    "task-started": states.STARTED,
    "task-retried": states.RETRY,
    "task-succeeded": states.SUCCESS,
    "task-failed": states.FAILURE,
    "task-rejected": REJECTED,
    "task-revoked": states.REVOKED,
}

# (group, rank) of each state: the group first (see the module), the rank breaks ties
# between events of one timestamp (Celery's precedence among the final states; the order
# things happen in among the running ones, a retry coming after the start).
_STATE_ORDER: dict[str, tuple[int, int]] = {
    states.PENDING: (0, 0),
    states.SENT: (0, 1),
    RECEIVED: (1, 1),
    states.STARTED: (1, 2),
    states.RETRY: (1, 3),
    REJECTED: (2, 1),
    states.REVOKED: (2, 2),
    states.FAILURE: (2, 3),
    states.SUCCESS: (2, 4),
}

FINISHED_EVENTS = frozenset({"task-succeeded", "task-failed", "task-rejected",
                             "task-revoked"})
EVENTS_MAX = 50  # timeline entries kept per task (the newest)

GRAIN = 10  # seconds: the unit throughput is counted in
DONE_STATES = (states.SUCCESS, states.FAILURE)  # what throughput counts
BUCKETS_MAX = 10_000  # throughput buckets one call may ask for

SORTS = ("updated_at", "received_at", "started_at", "name", "state", "runtime")
LIMIT_MAX = 500


class HistoryError(CeleriacError):
    """The history's store failed (its file or server); the message says which."""


# One timeline entry: (event type, its timestamp, the hostname that sent it).
Entry = tuple[str, float, str]


@dataclass(slots=True)
class TaskRecord:
    """What the history knows of one task (``to_json`` is the API's shape of it)."""

    id: str
    name: str | None = None
    state: str = states.PENDING
    queue: str | None = None
    worker: str | None = None  # the hostname of the worker that last reported on it
    args: str | None = None  # the events' bounded repr; None when hidden or unknown
    kwargs: str | None = None
    retries: int = 0
    eta: str | None = None
    expires: str | None = None
    sent_at: float | None = None
    received_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None  # succeeded/failed/rejected/revoked
    updated_at: float = 0.0  # the timestamp of the newest event applied
    runtime: float | None = None
    exception: str | None = None
    traceback: str | None = None
    reason: str | None = None  # task-rejected's
    parent_id: str | None = None
    root_id: str | None = None
    state_at: float = 0.0  # the timestamp of the event that set ``state``
    events: list[Entry] = field(default_factory=list)  # oldest first, the newest kept

    def to_json(self) -> dict[str, Any]:
        """Every field by name; the timeline as ``[type, timestamp, hostname]`` lists."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["events"] = [list(entry) for entry in self.events]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskRecord:
        """The inverse of ``to_json`` (unknown keys, from a newer version, are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["events"] = [(str(t), float(ts), str(h)) for t, ts, h in
                            values.get("events") or ()]
        return cls(**values)

    def copy(self) -> TaskRecord:
        return dataclasses.replace(self, events=list(self.events))


@dataclass(frozen=True, slots=True)
class TaskQuery:
    """A search of the history; checked when made (a bad one raises ``ValueError``)."""

    id: str | None = None
    name: str | None = None
    state: str | None = None
    queue: str | None = None
    worker: str | None = None
    since: float | None = None  # on updated_at, inclusive
    until: float | None = None  # on updated_at, inclusive
    text: str | None = None  # a substring of args or kwargs, case-insensitive
    sort: str = "updated_at"  # one of SORTS
    descending: bool = True
    offset: int = 0
    limit: int = 50  # 1..LIMIT_MAX

    def __post_init__(self) -> None:
        if self.sort not in SORTS:
            raise ValueError(f"unknown sort {self.sort!r}; choose one of: "
                             f"{', '.join(SORTS)}")
        if self.state is not None and self.state not in STATES:
            raise ValueError(f"unknown state {self.state!r}; choose one of: "
                             f"{', '.join(STATES)}")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) \
                or not 1 <= self.limit <= LIMIT_MAX:
            raise ValueError(f"limit must be an integer from 1 to {LIMIT_MAX}, "
                             f"not {self.limit!r}")
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) \
                or self.offset < 0:
            raise ValueError(f"offset must be an integer of 0 or more, not {self.offset!r}")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, int | float)
                                      or not math.isfinite(value)):
                raise ValueError(f"{name} must be a Unix time, not {value!r}")

    def matches(self, record: TaskRecord) -> bool:
        """Whether ``record`` passes this query's filters (the stores that filter in
        Python use it, so that every store agrees on what a filter means)."""
        if self.id is not None and record.id != self.id:
            return False
        for name in ("name", "state", "queue", "worker"):
            wanted = getattr(self, name)
            if wanted is not None and getattr(record, name) != wanted:
                return False
        if self.since is not None and record.updated_at < self.since:
            return False
        if self.until is not None and record.updated_at > self.until:
            return False
        if self.text:
            needle = self.text.lower()
            return needle in (record.args or "").lower() \
                or needle in (record.kwargs or "").lower()
        return True

    def order(self, records: list[TaskRecord]) -> list[TaskRecord]:
        """``records`` in this query's order: ``sort``, then id, missing values last."""
        def key(record: TaskRecord) -> tuple[bool, Any, str]:
            value = getattr(record, self.sort)
            missing = value is None
            # Missing values sort last both ways: flip the flag for descending.
            return (missing != self.descending, "" if missing else value, record.id)

        return sorted(records, key=key, reverse=self.descending)


class HistoryStore(ABC):
    """Where the task records are kept (memory, an SQLite file, a Redis server).

    Records older than ``ttl`` seconds (by ``updated_at``) and beyond the newest
    ``max_tasks`` are removed by ``trim``, which the ingest calls every minute or so.
    """

    def __init__(self, max_tasks: int, ttl: float) -> None:
        if max_tasks < 1:
            raise ValueError(f"max_tasks must be 1 or more, not {max_tasks!r}")
        if ttl <= 0:
            raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
        self.max_tasks = max_tasks
        self.ttl = ttl

    @property
    @abstractmethod
    def where(self) -> str:
        """Where the records are, for a log line (no credentials)."""

    @abstractmethod
    async def apply(self, events: Sequence[dict[str, Any]]) -> None:
        """Fold a batch of expanded task events (``celeriac.events.event.expand``) into
        the records, in one write; other event types are ignored. Merge-safe: the same
        events twice, out of order, or from two dashboards at once end the same."""

    @abstractmethod
    async def get(self, task_id: str) -> TaskRecord | None:
        """The record of ``task_id``, or None when the history has none."""

    @abstractmethod
    async def search(self, query: TaskQuery) -> tuple[list[TaskRecord], int]:
        """One page of the records ``query`` matches, and how many match in all."""

    @abstractmethod
    async def family(self, root_id: str, limit: int = 200) -> list[TaskRecord]:
        """The records whose root is ``root_id`` (the root's own included), oldest
        first (by ``received_at`` or ``updated_at``), at most ``limit``."""

    @abstractmethod
    async def counts(self) -> dict[str, int]:
        """How many tasks the history holds in each state (states with none left out)."""

    @abstractmethod
    async def throughput(self, since: float, step: float) -> list[tuple[float, int, int]]:
        """``(bucket start, succeeded, failed)`` for each ``step`` seconds from ``since``
        to now: the tasks that finished then and are in that state now, counted in
        ``GRAIN``-second grains as records change (``grain_changes``), so that the
        counts outlive the trimmed records (up to ``ttl``). A grain is counted in the
        bucket its start falls in."""

    @abstractmethod
    async def trim(self) -> int:
        """Remove what ``ttl`` and ``max_tasks`` exclude; returns how many were removed."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; the store is not used after."""


# -- throughput -------------------------------------------------------------------------

# One change of a throughput count: (grain number, state, +1 or -1).
GrainChange = tuple[int, str, int]


def counted(record: TaskRecord | None) -> tuple[int, str] | None:
    """The (grain, state) ``record`` counts in, if it counts."""
    if record is None or record.state not in DONE_STATES or record.finished_at is None:
        return None
    return int(record.finished_at // GRAIN), record.state


def grain_changes(old: TaskRecord | None, new: TaskRecord) -> list[GrainChange]:
    """How the throughput counts change when ``old`` becomes ``new``: none when both
    count in the same place, so that a repeated event changes nothing."""
    before, after = counted(old), counted(new)
    if before == after:
        return []
    changes = [(*before, -1)] if before is not None else []
    return changes + ([(*after, 1)] if after is not None else [])


def throughput_buckets(since: float, step: float, now: float,
                       grains: Iterable[tuple[int, str, int]]
                       ) -> list[tuple[float, int, int]]:
    """``HistoryStore.throughput``'s answer from the counts of the grains
    ``(grain, state, count)`` (any may be outside the range: they are left out)."""
    if not step > 0 or not math.isfinite(step):
        raise ValueError(f"step must be a positive number of seconds, not {step!r}")
    if not math.isfinite(since):
        raise ValueError(f"since must be a Unix time, not {since!r}")
    count = max(1, math.floor((now - since) / step) + 1)
    if count > BUCKETS_MAX:
        raise ValueError(f"{count} buckets asked for (since {since}, step {step}); "
                         f"at most {BUCKETS_MAX}")
    buckets = [[since + i * step, 0, 0] for i in range(count)]
    for grain, state, n in grains:
        index = math.floor((grain * GRAIN - since) / step)
        if 0 <= index < count and state in DONE_STATES:
            buckets[index][1 if state == states.SUCCESS else 2] += n
    return [(float(start), int(ok), int(failed)) for start, ok, failed in buckets]


def grain_range(since: float, now: float) -> tuple[int, int]:
    """The first and last grain whose start falls between ``since`` and ``now``."""
    return math.ceil(since / GRAIN), math.floor(now / GRAIN)


# -- the merge ----------------------------------------------------------------------------


def state_key(state: str, at: float) -> tuple[int, float, int]:
    """The order in which states win (see the module): the greatest key is the state."""
    group, rank = _STATE_ORDER.get(state, (0, 0))
    return group, at, rank


def is_task_event(event: dict[str, Any]) -> bool:
    return event.get("type") in EVENT_STATES and bool(event.get("uuid"))


def merge(record: TaskRecord | None, event: dict[str, Any]) -> TaskRecord:
    """The record after ``event`` (an expanded task event); ``record`` is not changed.

    ``record`` is None for a task the history does not know yet. Raises ``ValueError``
    for an event that is not a task event (``is_task_event``)."""
    kind = event.get("type")
    task_id = event.get("uuid")
    if kind not in EVENT_STATES or not task_id:
        raise ValueError(f"not a task event: {kind!r} for task {task_id!r}")
    task_id = str(task_id)
    if record is None:
        record = TaskRecord(id=task_id)
    elif record.id != task_id:
        raise ValueError(f"an event of task {task_id} merged into task {record.id}")
    else:
        record = record.copy()
    merge_into(record, event)
    return record


def merge_all(record: TaskRecord | None, task_id: str,
              events: Iterable[dict[str, Any]]) -> TaskRecord:
    """``merge`` of several events of one task, copying the record once."""
    merged = TaskRecord(id=task_id) if record is None else record.copy()
    for event in events:
        merge_into(merged, event)
    return merged


def merge_into(record: TaskRecord, event: dict[str, Any]) -> None:
    """``merge``, changing ``record`` in place (the stores' loop; the caller checks)."""
    kind = str(event["type"])
    at = _number(event.get("timestamp")) or 0.0
    hostname = str(event.get("hostname") or "")
    entry: Entry = (kind, at, hostname)
    newer = _newer_kinds(record.events, entry)
    _add_entry(record, entry)

    state = EVENT_STATES[kind]
    if state_key(state, at) > state_key(record.state, record.state_at):
        record.state, record.state_at = state, at
    record.updated_at = max(record.updated_at, at)
    _merge_fields(record, kind, at, event)
    _merge_newest(record, kind, hostname, newer, event)


def _merge_fields(record: TaskRecord, kind: str, at: float, event: dict[str, Any]) -> None:
    """The fields every event agrees on, the times, and the retries."""
    # Filled once: every event of one task agrees on them.
    for name in ("name", "queue", "root_id", "parent_id", "args", "kwargs", "expires"):
        if getattr(record, name) is None and event.get(name) is not None:
            setattr(record, name, str(event[name]))

    # The times of the latest attempt.
    moment = {"task-sent": "sent_at", "task-received": "received_at",
              "task-started": "started_at"}.get(kind)
    if moment is None and kind in FINISHED_EVENTS:
        moment = "finished_at"
    if moment is not None:
        known = getattr(record, moment)
        setattr(record, moment, at if known is None else max(known, at))

    # Only grows: the attempt number the newest message carries, or the retries seen.
    retries = _number(event.get("retries"))
    if retries is not None:
        record.retries = max(record.retries, int(retries))
    if kind == "task-retried":
        seen = sum(1 for entry_kind, _, _ in record.events if entry_kind == "task-retried")
        record.retries = max(record.retries, seen)


def _merge_newest(record: TaskRecord, kind: str, hostname: str, newer: set[str],
                  event: dict[str, Any]) -> None:
    """What the newest event of the kinds that carry it says (``newer``: the kinds of
    the timeline's entries newer than this event)."""
    if kind != "task-sent" and not newer & _WORKER_KINDS:
        record.worker = hostname or record.worker
    if kind in ("task-failed", "task-retried") \
            and not newer & {"task-failed", "task-retried"}:
        record.exception = _text(event.get("exception"))
        record.traceback = _text(event.get("traceback"))
    if kind in ("task-succeeded", "task-failed") \
            and not newer & {"task-succeeded", "task-failed"}:
        runtime = _number(event.get("runtime"))
        record.runtime = runtime if runtime is not None else record.runtime
    if kind == "task-rejected" and not newer & {"task-rejected"}:
        record.reason = _text(event.get("reason"))
    if kind in ("task-sent", "task-received", "task-retried") \
            and event.get("eta") is not None \
            and not newer & {"task-sent", "task-received", "task-retried"}:
        record.eta = str(event["eta"])


_WORKER_KINDS = frozenset(EVENT_STATES) - {"task-sent"}


def _newer_kinds(events: list[Entry], entry: Entry) -> set[str]:
    """The kinds of the timeline's entries newer than ``entry`` (ties by the tuple)."""
    return {other[0] for other in events if (other[1], other[0], other[2])
            > (entry[1], entry[0], entry[2])}


def _add_entry(record: TaskRecord, entry: Entry) -> None:
    events = record.events
    if entry in events:
        return
    events.append(entry)
    if len(events) > 1 and (events[-2][1], events[-2][0], events[-2][2]) \
            > (entry[1], entry[0], entry[2]):
        events.sort(key=lambda e: (e[1], e[0], e[2]))
    if len(events) > EVENTS_MAX:
        del events[:len(events) - EVENTS_MAX]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
