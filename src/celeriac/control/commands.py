"""The remote-control commands a worker answers, with Celery's names and reply shapes.

Two kinds, because a worker node is a supervisor and its processes (``celeriac.node``):

- *process* commands are answered by every worker process with its own data (what it
  runs, what it fetched, its counters) or carried out in it (``time_limit``,
  ``add_consumer``); the client merges one node's answers into one (``replies``);
- *node* commands are answered once per node by the node's control service:
  ``pool_grow``/``pool_shrink`` of a prefork pool (the supervisor starts or stops
  processes), ``shutdown``. The threads and async pools change their slots inside their
  one process, so there the process answers ``pool_grow``/``pool_shrink``.

``ping`` is answered by both (the merge keeps one ``pong``), so a node answers it while
its processes are still starting, and a bare ``Consumer`` (``ThreadedWorker``) answers it
too.

``scheduled`` is always empty: celeriac keeps tasks with an eta or countdown in the
broker until they are due (``celeriac queues`` counts them), never in a worker.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from celeriac.control.mailbox import error
from celeriac.control.secrets import masked_settings
from celeriac.limits import check_time_limit
from celeriac.urls import safe_url

if TYPE_CHECKING:
    from celeriac.brokers.base import Delivery
    from celeriac.message import Message
    from celeriac.node.base import NodeContext
    from celeriac.worker.consumer import Consumer

logger = logging.getLogger("celeriac.control")

# Pools whose size is the number of slots in their one process.
SLOT_POOLS = frozenset({"threads", "async"})


@dataclass
class ProcessInfo:
    """What a worker process's control handlers work on."""

    consumer: Consumer
    node: str  # the node's name (``-n``)
    index: int  # this process's index in its node
    pool: str
    own_node: bool = False  # no node service runs beside it: it answers shutdown itself
    node_pid: int = field(default_factory=os.getpid)  # the supervisor's, if supervised
    started_at: float = field(default_factory=time.time)
    # Set once the listener reads requests (or knows it never will): a request sent
    # before that is not seen by this process.
    listening: threading.Event = field(default_factory=threading.Event)


ProcessHandler = Callable[..., Awaitable[Any]]
NodeHandler = Callable[..., Awaitable[Any]]

PROCESS_COMMANDS: dict[str, ProcessHandler] = {}
NODE_COMMANDS: dict[str, NodeHandler] = {}


def _process(name: str) -> Callable[[ProcessHandler], ProcessHandler]:
    def register(handler: ProcessHandler) -> ProcessHandler:
        PROCESS_COMMANDS[name] = handler
        return handler
    return register


def _node(name: str) -> Callable[[NodeHandler], NodeHandler]:
    def register(handler: NodeHandler) -> NodeHandler:
        NODE_COMMANDS[name] = handler
        return handler
    return register


def known(command: str) -> bool:
    return command in PROCESS_COMMANDS or command in NODE_COMMANDS


def answered_by_process(command: str, info: ProcessInfo) -> bool:
    """Whether this process answers ``command`` (else its node service does, or nobody)."""
    return answered_by_processes(command, info.pool, info.own_node)


def answered_by_processes(command: str, pool: str, own_node: bool = False) -> bool:
    """Whether the processes of a ``pool`` node answer ``command`` (an unknown one with
    an error)."""
    if not known(command):
        return True
    if command in ("pool_grow", "pool_shrink"):
        return pool in SLOT_POOLS
    if command == "shutdown":
        return own_node
    return command in PROCESS_COMMANDS


def answered_by_node(command: str, pool: str) -> bool:
    if command in ("pool_grow", "pool_shrink"):
        return pool not in SLOT_POOLS
    return command in NODE_COMMANDS


# -- both -------------------------------------------------------------------------------


@_process("ping")
async def ping(info: ProcessInfo) -> Any:
    return {"ok": "pong"}


@_node("ping")
async def node_ping(context: NodeContext) -> Any:
    return {"ok": "pong"}


# -- inspect ----------------------------------------------------------------------------


def _request_info(message: Message, info: ProcessInfo, *, time_start: float | None,
                  acknowledged: bool) -> dict[str, Any]:
    """A task as Celery's ``inspect().active()`` shows it."""
    return {
        "id": message.id, "name": message.task, "type": message.task,
        "args": repr(message.args), "kwargs": repr(message.kwargs),
        "hostname": info.node, "time_start": time_start, "acknowledged": acknowledged,
        "delivery_info": {"exchange": "", "routing_key": message.queue,
                          "queue": message.queue, "priority": message.priority,
                          "redelivered": False},
        "worker_pid": os.getpid(), "process_index": info.index,
        "retries": message.retries, "eta": message.eta, "expires": message.expires,
        "root_id": message.root_id, "parent_id": message.parent_id,
    }


@_process("active")
async def active(info: ProcessInfo) -> Any:
    return [_request_info(message, info, time_start=started, acknowledged=True)
            for message, started in info.consumer.executor.guard.running()]


@_process("reserved")
async def reserved(info: ProcessInfo) -> Any:
    found = []
    for delivery in info.consumer.reserved_deliveries():
        message = _decoded(info, delivery)
        if message is not None:
            found.append(_request_info(message, info, time_start=None, acknowledged=False))
    return found


def _decoded(info: ProcessInfo, delivery: Delivery) -> Message | None:
    try:
        return info.consumer.app.decode_message(delivery.body)
    except Exception:  # it will be dead-lettered with the reason when a slot takes it
        return None


@_process("scheduled")
async def scheduled(info: ProcessInfo) -> Any:
    return []  # eta tasks wait in the broker, not in workers (see the module's docstring)


@_process("registered")
async def registered(info: ProcessInfo, taskinfoitems: Any = None) -> Any:
    del taskinfoitems  # Celery's option to show task attributes; names only here
    return sorted(info.consumer.app.tasks)


@_process("active_queues")
async def active_queues(info: ProcessInfo) -> Any:
    return [{"name": queue, "exchange": {"name": "", "type": "direct"},
             "routing_key": queue, "durable": True, "exclusive": False,
             "auto_delete": False, "no_ack": False}
            for queue in info.consumer.queues]


@_process("revoked")
async def revoked(info: ProcessInfo) -> Any:
    return sorted(info.consumer.executor.guard.revoked_ids())


@_process("conf")
async def conf(info: ProcessInfo, with_defaults: bool = False) -> Any:
    return masked_settings(info.consumer.app.conf, bool(with_defaults))


@_process("stats")
async def stats(info: ProcessInfo) -> Any:
    consumer = info.consumer
    usage = resource.getrusage(resource.RUSAGE_SELF)
    broker = consumer.app.broker
    return {
        "pid": info.node_pid,
        "process_index": info.index,
        "uptime": round(time.time() - info.started_at, 3),
        "pool": {"implementation": info.pool, "max-concurrency": consumer.slots,
                 "processes": [os.getpid()],
                 "max-tasks-per-child": consumer.max_tasks},
        "prefetch_count": consumer.budget,
        "total": dict(consumer.stats.total),
        "processed": consumer.stats.processed,
        "succeeded": consumer.stats.succeeded, "failed": consumer.stats.failed,
        "retried": consumer.stats.retried, "dead_lettered": consumer.stats.dead_lettered,
        "rusage": {"utime": usage.ru_utime, "stime": usage.ru_stime,
                   "maxrss": usage.ru_maxrss, "nvcsw": usage.ru_nvcsw,
                   "nivcsw": usage.ru_nivcsw},
        "broker": {"transport": broker.scheme,
                   "url": safe_url(consumer.app.conf.effective_broker_url)},
    }


# -- control ----------------------------------------------------------------------------


@_process("rate_limit")
async def rate_limit(info: ProcessInfo, task_name: str, rate_limit: Any) -> Any:
    from celeriac.ratelimit import canonical

    if task_name not in info.consumer.app.tasks:
        return error("unknown task")
    try:
        rate = canonical(rate_limit)
    except ValueError as exc:
        return error(f"Invalid rate limit string: {exc}")
    await info.consumer.rate_limits.override(task_name, rate)
    if rate == "0":
        return {"ok": "rate limit disabled successfully"}
    return {"ok": "new rate limit set successfully"}


@_process("time_limit")
async def time_limit(info: ProcessInfo, task_name: str, soft: Any = None,
                     hard: Any = None) -> Any:
    task = info.consumer.app.tasks.get(task_name)
    if task is None:
        return error("unknown task")
    try:
        soft_limit = check_time_limit("soft", soft)
        hard_limit = check_time_limit("hard", hard)
    except ValueError as exc:
        return error(str(exc))
    task.options = replace(task.options, soft_time_limit=soft_limit, time_limit=hard_limit)
    logger.info("new time limits for tasks of type %s: soft=%s hard=%s", task_name,
                soft_limit, hard_limit)
    return {"ok": "time limits set successfully"}


@_process("add_consumer")
async def add_consumer(info: ProcessInfo, queue: str, **options: Any) -> Any:
    del options  # Celery's exchange/routing-key options: celeriac consumes queues by name
    if not isinstance(queue, str) or not queue:
        return error(f"a queue name is a non-empty string, not {queue!r}")
    if queue in info.consumer.queues:
        return {"ok": f"already consuming from {queue!r}"}
    info.consumer.add_queue(queue)
    logger.info("started consuming from %r (remote control)", queue)
    return {"ok": f"add consumer {queue}"}


@_process("cancel_consumer")
async def cancel_consumer(info: ProcessInfo, queue: str, **options: Any) -> Any:
    del options
    if queue not in info.consumer.queues:
        return error(f"not consuming from {queue!r}")
    if len(info.consumer.queues) == 1:
        return error(f"{queue!r} is the last queue this worker consumes; stop the worker "
                     "instead (shutdown)")
    await info.consumer.cancel_queue(queue)
    logger.info("stopped consuming from %r (remote control)", queue)
    return {"ok": f"no longer consuming from {queue}"}


@_process("pool_grow")
async def grow_slots(info: ProcessInfo, n: int = 1) -> Any:
    size = info.consumer.resize(_count(n))
    return {"ok": f"pool will grow to {size}"}


@_process("pool_shrink")
async def shrink_slots(info: ProcessInfo, n: int = 1) -> Any:
    size = info.consumer.resize(-_count(n))
    return {"ok": f"pool will shrink to {size}"}


@_process("shutdown")
async def shutdown_process(info: ProcessInfo) -> Any:
    logger.warning("shutting down: asked by remote control")
    info.consumer.stop()
    return {"ok": "shutting down"}


@_node("pool_grow")
async def pool_grow(context: NodeContext, n: int = 1) -> Any:
    size = context.node.resize(_count(n))
    logger.info("pool grows to %d process(es) (remote control)", size)
    return {"ok": f"pool will grow to {size}"}


@_node("pool_shrink")
async def pool_shrink(context: NodeContext, n: int = 1) -> Any:
    size = context.node.resize(-_count(n))
    logger.info("pool shrinks to %d process(es) (remote control)", size)
    return {"ok": f"pool will shrink to {size}"}


@_node("shutdown")
async def shutdown(context: NodeContext) -> Any:
    logger.warning("node %s shutting down: asked by remote control", context.name)
    context.node.shutdown()
    return {"ok": "shutting down"}


def _count(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n is a number of processes or slots >= 1, not {n!r}")
    return n
