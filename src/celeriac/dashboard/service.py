"""``DashboardService``: everything the dashboard shows, as plain JSON-ready dicts.

The API (``api.py``) and the pages (``pages.py``) render the same dicts, so the two
never disagree. Where each part comes from:

- tasks: the history store (``history.py``), filled by the ingest from the events;
- workers: the ingest's ``ClusterView`` (heartbeats: up or down, active, processed),
  joined with what the live workers answer over remote control (pool, processes,
  active and reserved tasks, queues), asked at most every ``INSPECT_CACHE`` seconds;
- queues: the broker's counts (``monitor.queues``), sampled every few seconds
  by ``sampler.QueueSampler`` into a bounded ring per queue (the sparklines), which also feeds
  the queue alerts' state (``monitor.alerts``: shown, not announced: ``celeriac
  monitor`` or the exporter post them) and ``/metrics``;
- dead letters and scheduled messages: read from the broker when asked.

Broker, backend and control calls run on the app's own loop (its bridge thread, where
its connections live: ``on_app``), never on the web server's; the history store is
called on the web server's loop. The actions are in ``actions.py``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from celeriac import dead_letters as letters_module
from celeriac.dashboard.sampler import QueueSampler
from celeriac.errors import describe
from celeriac.events.event import bounded_repr
from celeriac.monitor.probe import QueuesSnapshot

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.brokers.base import Broker, DeadLetter
    from celeriac.dashboard.history import HistoryStore, TaskQuery, TaskRecord
    from celeriac.monitor.cluster import ClusterView
    from celeriac.outcome import Outcome

logger = logging.getLogger("celeriac.dashboard")

T = TypeVar("T")

HIDDEN = "(hidden)"  # what a dashboard_hide_args task's args, kwargs and result show
INSPECT_TIMEOUT = 1.0  # seconds the workers get to answer an inspect
INSPECT_CACHE = 2.0  # seconds an inspect's answers are reused
THROUGHPUT_SPAN = 1800.0  # the overview's charts: the last 30 minutes ...
THROUGHPUT_STEP = 30.0  # ... in 30 s buckets
PREVIEW_BYTES = 300  # of a dead letter's body shown
SCHEDULED_MAX = 500
SCHEDULED_GRACE = 60.0  # seconds past its ETA a task from the history is still listed


class Ingest(Protocol):
    """What the service reads of ``ingest.HistoryIngest``."""

    @property
    def view(self) -> ClusterView: ...
    @property
    def version(self) -> int: ...
    @property
    def lag(self) -> float: ...


class NotFound(LookupError):
    """404: the task, worker, queue or task name asked for is unknown."""


class Conflict(RuntimeError):
    """409: the action cannot be done in the present state (say why)."""


class BadInput(ValueError):
    """400: a field of the request is wrong (``field`` names it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class DashboardService:
    def __init__(self, app: App, store: HistoryStore, ingest: Ingest) -> None:
        self.app = app
        self.store = store
        self.ingest = ingest
        self.sampler = QueueSampler(self)
        self._inspected: tuple[float, dict[str, dict[str, Any]]] | None = None
        self._inspect_lock = asyncio.Lock()
        self.started_at = time.time()

    # -- plumbing -------------------------------------------------------------------------

    async def on_app(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the app's loop (its broker, backend and bus live there)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.app._bridge.loop)
        return await asyncio.wrap_future(future)

    async def broker(self) -> Broker:
        return await self.on_app(self.app._connected_broker())

    def hidden(self, name: str | None) -> bool:
        """Whether the task ``name`` asked the dashboard to hide its arguments."""
        task = self.app.tasks.get(name) if name else None
        return bool(task is not None and task.dashboard_hide_args)

    async def start(self) -> None:
        await self.sampler.start()

    async def close(self) -> None:
        await self.sampler.close()

    # -- reads ----------------------------------------------------------------------------

    async def overview(self) -> dict[str, Any]:
        now = time.time()
        workers = self.ingest.view.workers()
        online = sum(worker.up(now) for worker in workers)
        buckets = await self.store.throughput(now - THROUGHPUT_SPAN, THROUGHPUT_STEP)
        return {
            "now": now,
            "workers": {"online": online, "offline": len(workers) - online},
            "tasks": await self.store.counts(),
            "throughput": [{"t": start, "succeeded": ok, "failed": failed}
                           for start, ok, failed in buckets],
            "queues": await self.queues(),
            "alerts": self.sampler.alerts(),
            "lag": self.ingest.lag,
        }

    async def workers(self) -> list[dict[str, Any]]:
        now = time.time()
        seen = {worker.hostname: worker for worker in self.ingest.view.workers()}
        answers = await self._inspect([name for name, w in seen.items() if w.up(now)])
        found = []
        for hostname in sorted(set(seen) | set(answers)):
            worker, info = seen.get(hostname), answers.get(hostname, {})
            stats = info.get("stats") or {}
            pool = stats.get("pool") or {}
            found.append({
                "hostname": hostname,
                "online": worker.up(now) if worker is not None else True,
                "heard_at": worker.heard_at if worker is not None else None,
                "uptime": stats.get("uptime"),
                "pool": pool.get("implementation"),
                "processes": list(pool.get("processes") or []),
                "concurrency": pool.get("max-concurrency"),
                "loadavg": list(worker.loadavg) if worker and worker.loadavg else None,
                "processed": stats.get("processed",
                                       worker.processed if worker is not None else 0),
                "active": [self._summary(task) for task in info.get("active") or []],
                "reserved": [self._summary(task) for task in info.get("reserved") or []],
                "queues": [str(queue.get("name")) for queue in info.get("queues") or []],
            })
        return found

    async def _inspect(self, expected: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Each live worker's stats, active, reserved and queues, cached briefly."""
        async with self._inspect_lock:  # concurrent pages share one round of questions
            cached = self._inspected
            if cached is not None and time.monotonic() - cached[0] < INSPECT_CACHE:
                return cached[1]
            # Asking the live ones by name ends as soon as each answered in full; with
            # none heard of yet, whoever answers within the timeout.
            destination = list(expected) or None
            commands = ("stats", "active", "reserved", "active_queues")
            try:
                replies = await asyncio.gather(*(
                    self.on_app(self.app.control.abroadcast(
                        command, reply=True, timeout=INSPECT_TIMEOUT,
                        destination=destination))
                    for command in commands))
            except Exception as exc:  # the page still shows what the heartbeats said
                logger.warning("dashboard: cannot ask the workers: %s", describe(exc))
                replies = [[] for _ in commands]
            merged: dict[str, dict[str, Any]] = collections.defaultdict(dict)
            for command, answer in zip(("stats", "active", "reserved", "queues"), replies,
                                       strict=True):
                for item in answer or []:
                    for node, value in item.items():
                        merged[node][command] = value
            answers = dict(merged)
            if all("stats" in answers.get(name, {}) for name in expected):
                self._inspected = (time.monotonic(), answers)  # else: ask again next time
            return answers

    def forget_inspect(self) -> None:
        """After an action on a worker, the next read asks again."""
        self._inspected = None

    def _summary(self, task: dict[str, Any]) -> dict[str, Any]:
        hidden = self.hidden(task.get("name"))
        return {"id": task.get("id"), "name": task.get("name"),
                "args": HIDDEN if hidden else task.get("args"),
                "kwargs": HIDDEN if hidden else task.get("kwargs"),
                "started": task.get("time_start"),
                "queue": (task.get("delivery_info") or {}).get("queue"),
                "pid": task.get("worker_pid")}

    async def queues(self) -> list[dict[str, Any]]:
        readings = await self.sampler.latest()
        return [{"name": r.queue, "ready": r.ready, "scheduled": r.scheduled,
                 "in_flight": r.in_flight, "dead_letters": r.dead_letters,
                 "oldest_age": r.oldest_age,
                 "history": [list(point) for point in self.sampler.history(r.queue)]}
                for r in readings]

    async def tasks(self, query: TaskQuery) -> dict[str, Any]:
        records, total = await self.store.search(query)
        return {"tasks": [self._record_json(record) for record in records], "total": total,
                "offset": query.offset, "limit": query.limit}

    async def task(self, task_id: str) -> dict[str, Any] | None:
        record = await self.store.get(task_id)
        if record is None:
            return None
        data = self._record_json(record)
        data["hidden"] = self.hidden(record.name)
        data["result"] = HIDDEN if data["hidden"] else await self._result(task_id)
        family = await self.store.family(record.root_id or record.id)
        ids = {member.id for member in family}
        data["family"] = {
            "nodes": [{"id": m.id, "name": m.name, "state": m.state} for m in family],
            "edges": [[m.parent_id, m.id] for m in family
                      if m.parent_id is not None and m.parent_id in ids and m.parent_id != m.id],
        }
        return data

    def _record_json(self, record: TaskRecord) -> dict[str, Any]:
        data = record.to_json()
        if self.hidden(record.name):
            data["args"] = data["kwargs"] = HIDDEN
        return data

    async def _result(self, task_id: str) -> Any:
        """The stored result's value, as JSON can carry it; None if none is stored."""
        try:
            outcome = await self.stored_outcome(task_id)
        except ValueError as exc:
            return f"(unreadable result: {exc})"
        return None if outcome is None else _jsonable(outcome.result)

    async def stored_outcome(self, task_id: str) -> Outcome | None:
        """What the result backend holds for ``task_id``: None when nothing (or it cannot
        be reached, logged); ``ValueError`` when it cannot be decoded."""
        async def load() -> bytes | None:
            backend = await self.app._connected_backend()
            return await backend.load(task_id)

        try:
            data = await self.on_app(load())
        except Exception as exc:
            logger.warning("dashboard: cannot read the result of %s: %s", task_id,
                           describe(exc))
            return None
        if data is None:
            return None
        try:
            return self.app.decode_outcome(data)
        except Exception as exc:
            raise ValueError(describe(exc)) from None

    async def dead_letters(self, task: str | None = None, queue: str | None = None,
                           limit: int = 100) -> list[dict[str, Any]]:
        if not 1 <= limit <= letters_module.DEAD_LETTER_SCAN:
            raise BadInput("limit", f"must be from 1 to {letters_module.DEAD_LETTER_SCAN}")
        broker = await self.broker()
        scan = limit if task is None and queue is None else letters_module.DEAD_LETTER_SCAN
        found = await self.on_app(broker.dead_letters(scan))
        shown = []
        for letter in found:
            name = letters_module.task_name(self.app, letter)
            if (task is not None and name != task) or (queue is not None
                                                       and letter.queue != queue):
                continue
            shown.append(self._letter_json(letter, name))
            if len(shown) >= limit:
                break
        return shown

    def _letter_json(self, letter: DeadLetter, name: str) -> dict[str, Any]:
        preview = HIDDEN if self.hidden(name) else self._preview(letter.body)
        return {"id": letter.id, "queue": letter.queue, "task": name,
                "reason": letter.reason, "dead_at": letter.dead_at, "preview": preview,
                "size": len(letter.body),
                "delivery_count": letter.delivery_count}

    def _preview(self, body: bytes) -> str:
        """The call a dead letter carries, as ``args, kwargs`` reprs when it decodes;
        else the start of its bytes (it was dead-lettered for not decoding, often)."""
        try:
            message = self.app.decode_message(body)
        except Exception:
            text = body[:PREVIEW_BYTES].decode("utf-8", "backslashreplace")
            return text + ("..." if len(body) > PREVIEW_BYTES else "")
        return bounded_repr(tuple(message.args), PREVIEW_BYTES) + " " + bounded_repr(
            message.kwargs, PREVIEW_BYTES)

    async def scheduled(self, limit: int = SCHEDULED_MAX) -> list[dict[str, Any]]:
        """Messages waiting for their countdown or ETA: the broker's own list where it
        can peek at it (SQLite, Redis: ``Broker.scheduled``); else (RabbitMQ: messages
        wait in delay queues that cannot be read without taking them) the history's
        tasks sent with an ETA that no worker has reported on yet."""
        from celeriac.dashboard.history import TaskQuery

        broker = await self.broker()
        try:
            peeked = await self.on_app(broker.scheduled(limit))
        except NotImplementedError:
            peeked = None
        if peeked is not None:
            found = []
            for item in peeked:
                name, args = None, None
                try:
                    message = self.app.decode_message(item.body)
                    name, args = message.task, repr(message.args)
                except Exception:
                    name = letters_module.UNDECODABLE
                found.append({"id": item.id, "name": name, "queue": item.queue,
                              "eta": item.eta,
                              "args": HIDDEN if self.hidden(name) else args,
                              "source": "broker"})
            return found
        # Sent with an ETA (producers with task_send_sent_event) or retried with a
        # countdown, and not heard of since: waiting in a delay queue.
        records: list[TaskRecord] = []
        for state in ("SENT", "RETRY"):
            page, _ = await self.store.search(TaskQuery(state=state, limit=min(limit, 500)))
            records += page
        now = time.time()
        waiting = [(eta, r) for r in records
                   if (eta := _unix(r.eta)) is not None and eta > now - SCHEDULED_GRACE]
        return [{"id": r.id, "name": r.name, "queue": r.queue, "eta": eta,
                 "args": HIDDEN if self.hidden(r.name) else r.args, "source": "history"}
                for eta, r in sorted(waiting, key=lambda pair: pair[0])[:limit]]

    async def metrics_snapshot(self) -> QueuesSnapshot:
        readings = await self.sampler.latest()
        return QueuesSnapshot(tuple(readings), self.sampler.broker_up, time.monotonic())


def _unix(iso_time: str | None) -> float | None:
    from datetime import datetime

    if iso_time is None:
        return None
    try:
        return datetime.fromisoformat(iso_time).timestamp()
    except ValueError:
        return None


def _jsonable(value: Any) -> Any:
    """``value`` if JSON carries it as it is, else its repr (a result of another type)."""
    import json

    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value
