"""A worker process: loads the app and runs one consumer until told to stop.

Signals: SIGTERM is a warm stop (prefetched tasks go back, running ones finish within
the grace period); SIGQUIT is a cold stop (everything held goes back now); SIGUSR1,
from the supervisor as the pool shrinks, is a warm stop whose running task finishes
however long it takes (``Consumer.retire``).

A supervised child takes every SIGTERM as the same warm stop, however many arrive: when
systemd (``KillMode=control-group``), supervisord (``stopasgroup``) or ``kill -TERM
-PGID`` signals the whole process group, each child gets the signal directly *and*
relayed by its supervisor, and that must not turn into a cold stop. Only the supervisor
decides that a stop is cold (a second signal sent to it), and says so with SIGQUIT. For
the same reason a supervised child ignores SIGINT: Ctrl-C reaches the whole group. An
unsupervised worker (``-P solo``) is its own supervisor: a second SIGTERM or SIGINT is
a cold stop there.

Before consuming, the process reaches its broker and backend patiently
(``worker.startup``), retrying a server that is down or refuses it; a configuration no
server can fix (a missing client library) ends the process with ``EXIT_REFUSED`` and one
log line, and the supervisor stops the worker instead of restarting the process forever.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from celeriac import signals
from celeriac.app import App
from celeriac.control.commands import ProcessInfo
from celeriac.errors import describe
from celeriac.loader import load_app
from celeriac.logs import configure_logging, setup_worker_logging
from celeriac.monitor.tally import TallyWriter, TaskTally
from celeriac.node.agent import run_services
from celeriac.node.services import node_services
from celeriac.node.solo import SoloNode
from celeriac.worker.autoscale import start_in_process
from celeriac.worker.consumer import Consumer, StopReason
from celeriac.worker.deadlines import DeadlineSlot
from celeriac.worker.options import WorkerOptions, logfile_path
from celeriac.worker.pools import runner_for
from celeriac.worker.startup import PERMANENT, StartupStopped, connect_patiently
from celeriac.worker.status import StatusSlot

if TYPE_CHECKING:
    from celeriac.monitor.endpoint import NodeMetrics

logger = logging.getLogger("celeriac.worker")

EXIT_OK = 0
EXIT_BROKER_LOST = 70  # EX_SOFTWARE: the supervisor restarts the process
EXIT_REFUSED = 78  # EX_CONFIG: the broker or backend refused us for good; do not restart
# From the supervisor when the pool shrinks: a warm stop whose running task finishes
# however long it takes (no grace period); a later SIGTERM brings the grace period back.
RETIRE_SIGNAL = signal.SIGUSR1
MEMORY_CHECK_INTERVAL = 0.5
PARENT_CHECK_INTERVAL = 1.0
EXIT_MARGIN = 10.0  # seconds past the grace a process replacing itself may take to exit


def child_main(options: WorkerOptions, index: int,
               deadlines: DeadlineSlot | None = None, status: StatusSlot | None = None) -> None:
    """Entry point of a supervised worker process (spawned, so it imports afresh).

    ``deadlines`` is this process's entry in the supervisor's hard-deadline array,
    ``status`` its entry in the node's status board (``worker.status``).
    """
    logfile = logfile_path(options.logfile, options.hostname, index)
    name = f"{options.hostname}/{index}"  # this process's name, as in its requests
    configure_logging(options.loglevel, options.hijack_root_logger, options.log_format,
                      options.task_log_format, logfile, name)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    app = load_app(options.app_spec)
    setup_worker_logging(options.loglevel, options.hijack_root_logger, options.log_format,
                         options.task_log_format, logfile, name)
    signals.worker_process_init.send(sender=None)
    try:
        reason = asyncio.run(serve(app, options, f"{options.hostname}/{index}",
                                   watch_parent=True, deadlines=deadlines,
                                   status=status))
    except PERMANENT as exc:
        logger.error("worker process %d cannot start: %s", index, describe(exc))
        code = EXIT_REFUSED
    else:
        code = EXIT_BROKER_LOST if reason is StopReason.BROKER_LOST else EXIT_OK
    signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter shutdown: it would join task threads still running past the grace.
    os._exit(code)


async def serve(app: App, options: WorkerOptions, hostname: str,
                stop_signals: tuple[signal.Signals, ...] = (signal.SIGTERM,),
                watch_parent: bool = False,
                deadlines: DeadlineSlot | None = None,
                status: StatusSlot | None = None, own_node: bool = False,
                metrics: NodeMetrics | None = None) -> StopReason:
    """Run a consumer for ``app`` in this process until a signal or a recycle stops it.

    With ``watch_parent``, a supervisor that dies (even by SIGKILL) makes this process
    stop warmly instead of consuming on as an orphan nobody supervises; and a task
    thread that cannot be stopped (hard time limit) makes it replace itself. With
    ``own_node`` (a solo worker) this process is its node too: the node's services
    (heartbeats, node-level control) run on this loop beside the consumer, and
    ``metrics`` (``--metrics-port``) serves it. With ``options.metrics_dir`` the consumer
    counts its tasks for the node's ``/metrics`` (``monitor.tally``).
    """
    node = SoloNode(app, options) if own_node else None
    if node is not None:
        status = node.status
    runner = runner_for(options.pool, options.slots_per_process)
    consumer = Consumer(app, options.queues, options.slots_per_process, runner,
                        prefetch_multiplier=options.prefetch_multiplier, hostname=hostname,
                        max_tasks=options.max_tasks_per_child,
                        memory_check=_memory_check(options.max_memory_per_child),
                        status=status, node_name=options.hostname,
                        events=options.send_events)
    consumer.control = ProcessInfo(consumer, options.hostname,
                                   status.index if status is not None else 0,
                                   options.pool,
                                   node_pid=os.getppid() if watch_parent else os.getpid())
    tally = _tally(consumer, options)
    if watch_parent:
        consumer.executor.guard.supervise(lambda: consumer.stop(StopReason.RECYCLE),
                                          deadlines, options.shutdown_timeout + EXIT_MARGIN)
    loop = asyncio.get_running_loop()
    for signum in stop_signals:
        loop.add_signal_handler(signum, _on_stop_signal, consumer, watch_parent)
    loop.add_signal_handler(signal.SIGQUIT, _on_quit, consumer)
    if watch_parent:
        loop.add_signal_handler(RETIRE_SIGNAL, _on_retire, consumer)
    watcher = asyncio.create_task(_watch_parent(consumer)) if watch_parent else None
    node_stop = asyncio.Event()
    node_task = None
    autoscaler = None
    if node is not None:
        node.consumer = consumer
        if metrics is not None:
            metrics.start(node)
        node_task = asyncio.create_task(
            run_services(node, node_services(app, options), node_stop), name="node")
    try:
        try:
            await connect_patiently(app, lambda: consumer.stop_reason is not None)
        except StartupStopped:
            logger.info("%s stopped before it reached its broker", hostname)
            return consumer.stop_reason or StopReason.SHUTDOWN
        logger.info("%s ready: consuming %s with %d slot(s), prefetch %d", hostname,
                    ",".join(options.queues), options.slots_per_process, consumer.budget)
        await signals.worker_ready.asend(sender=consumer)
        autoscaler = start_in_process(consumer, options)  # -P threads/async --autoscale
        reason = await consumer.run(grace=options.shutdown_timeout)
    finally:
        if autoscaler is not None:
            autoscaler.cancel()
        if tally is not None:
            tally.close()
        if watcher is not None:
            watcher.cancel()
        if node_task is not None:  # its goodbye (worker-offline) once the tasks are done
            node_stop.set()
            await node_task
        runner.shutdown()
        await app.aclose()
    logger.info("%s stopped (%s): %d succeeded, %d failed, %d retried, %d dead-lettered",
                hostname, reason.value, consumer.stats.succeeded, consumer.stats.failed,
                consumer.stats.retried, consumer.stats.dead_lettered)
    return reason


def _tally(consumer: Consumer, options: WorkerOptions) -> TallyWriter | None:
    """With ``--metrics-port``, count this process's tasks for its node's ``/metrics``."""
    if options.metrics_dir is None:
        return None
    consumer.tally = TaskTally()
    writer = TallyWriter(consumer.tally, options.metrics_dir)
    writer.start()
    return writer


async def _watch_parent(consumer: Consumer) -> None:
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(PARENT_CHECK_INTERVAL)
    logger.error("the supervisor (pid %d) is gone: stopping this orphaned worker process",
                 parent)
    consumer.stop()


def _on_stop_signal(consumer: Consumer, supervised: bool) -> None:
    if consumer.stop_reason is None:
        logger.info("warm shutdown: finishing running tasks, handing back the rest")
        consumer.stop()
    elif supervised:
        # The process group was signalled: this is the same request arriving twice.
        logger.info("SIGTERM again: already shutting down warmly (a cold stop is the "
                    "supervisor's call, sent as SIGQUIT)")
    else:
        logger.warning("cold shutdown (a second stop signal): handing back every task now")
        consumer.stop_cold()


def _on_retire(consumer: Consumer) -> None:
    if consumer.stop_reason is None:
        logger.info("the pool shrinks: this process finishes its running task, hands back "
                    "the rest and exits")
        consumer.retire()


def _on_quit(consumer: Consumer) -> None:
    logger.warning("cold shutdown (SIGQUIT): handing back every task now")
    consumer.stop_cold()


def _memory_check(limit_kib: int | None) -> Callable[[], bool] | None:
    if limit_kib is None:
        return None
    import psutil

    process = psutil.Process()
    last = [0.0]

    def over_limit() -> bool:
        now = time.monotonic()
        if now - last[0] < MEMORY_CHECK_INTERVAL:
            return False
        last[0] = now
        return bool(process.memory_info().rss > limit_kib * 1024)

    return over_limit
