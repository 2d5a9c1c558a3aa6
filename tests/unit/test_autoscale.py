"""Autoscaling's parts in one process: Consumer.resize, the decision policy, the bounds.

Consumer.resize runs on a real consumer (celeriac.testing.ThreadedWorker on the
in-memory broker): its tasks block on events the test releases, so "running" and
"finished" are facts the test controls, not timings.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest

from celeriac import App
from celeriac.config import ConfigurationError
from celeriac.supervisor.supervisor import Child, Supervisor
from celeriac.testing import ThreadedWorker
from celeriac.worker.autoscale import ConsumerPool, Load, Policy, autoscale, parse_autoscale
from celeriac.worker.consumer import Consumer
from celeriac.worker.options import WorkerOptions
from celeriac.worker.pools import ThreadRunner
from celeriac.worker.status import StatusBoard

WAIT = 10.0


class Gate:
    """Tasks that block until released, counting how many run at once."""

    def __init__(self, app: App) -> None:
        self.release = threading.Event()
        self.running = 0
        self.most = 0
        self.cancelled = 0
        self._lock = threading.Lock()

        @app.task
        def blocked(n: int) -> int:
            with self._lock:
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                if not self.release.wait(WAIT):
                    raise TimeoutError("never released")
                return n
            finally:
                with self._lock:
                    self.running -= 1

        self.task = blocked

    def wait_running(self, count: int) -> None:
        deadline = time.monotonic() + WAIT
        while self.running != count:
            assert time.monotonic() < deadline, f"{self.running} running, not {count}"
            time.sleep(0.01)


def stop_if_running(worker: ThreadedWorker) -> None:
    if worker._thread is not None and worker._thread.is_alive():
        worker.stop()


def consumer_of(worker: ThreadedWorker) -> Consumer:
    assert worker.consumer is not None
    return worker.consumer


def test_growing_adds_slots_threads_and_prefetch_at_once(celeriac_app: App) -> None:
    gate = Gate(celeriac_app)
    with ThreadedWorker(celeriac_app, slots=1, pool="threads") as worker:
        consumer = consumer_of(worker)
        results = [gate.task.delay(n) for n in range(3)]
        gate.wait_running(1)
        assert worker.call(lambda: consumer.resize(2)) == 3
        gate.wait_running(3)  # the two queued tasks started on the new slots
        runner = consumer.executor.guard.runner
        assert isinstance(runner, ThreadRunner)
        assert runner.threads == 3
        assert consumer.budget == 3 * celeriac_app.conf.worker_prefetch_multiplier
        gate.release.set()
        assert [r.get(timeout=WAIT) for r in results] == [0, 1, 2]


def test_shrinking_lets_busy_slots_finish_their_task(celeriac_app: App) -> None:
    gate = Gate(celeriac_app)
    with ThreadedWorker(celeriac_app, slots=3, pool="threads") as worker:
        consumer = consumer_of(worker)
        first = [gate.task.delay(n) for n in range(3)]
        gate.wait_running(3)
        assert worker.call(lambda: consumer.resize(-2)) == 1
        assert gate.running == 3  # nothing running was cut short
        gate.release.set()
        assert [r.get(timeout=WAIT) for r in first] == [0, 1, 2]
        # From now on one task at a time: the two busy slots ended after their task.
        gate.release.clear()
        gate.most = 0
        later = [gate.task.delay(n) for n in range(3, 6)]
        gate.wait_running(1)
        time.sleep(0.2)  # room for a wrongly kept slot to start a second task
        assert gate.most == 1
        gate.release.set()
        assert [r.get(timeout=WAIT) for r in later] == [3, 4, 5]


def test_shrinking_retires_idle_slots_first(celeriac_app: App) -> None:
    gate = Gate(celeriac_app)
    with ThreadedWorker(celeriac_app, slots=3, pool="threads") as worker:
        consumer = consumer_of(worker)
        running = gate.task.delay(0)
        gate.wait_running(1)
        assert worker.call(lambda: consumer.resize(-2)) == 1
        assert worker.call(lambda: len(consumer._slots.tasks)) == 1  # the two idle went
        assert worker.call(lambda: consumer._slots.retiring) == 0  # the busy one stays
        queued = gate.task.delay(1)
        time.sleep(0.2)
        assert gate.running == 1  # the one slot left is busy: the new task waits
        gate.release.set()
        assert running.get(timeout=WAIT) == 0
        assert queued.get(timeout=WAIT) == 1


def test_a_shrink_then_a_grow_keeps_the_busy_slot(celeriac_app: App) -> None:
    gate = Gate(celeriac_app)
    with ThreadedWorker(celeriac_app, slots=2, pool="threads") as worker:
        consumer = consumer_of(worker)
        results = [gate.task.delay(n) for n in range(2)]
        gate.wait_running(2)
        assert worker.call(lambda: consumer.resize(-1)) == 1  # a busy slot will retire
        assert worker.call(lambda: consumer.resize(1)) == 2  # ... and now stays instead
        assert worker.call(lambda: (len(consumer._slots.tasks), consumer._slots.retiring)) == (2, 0)
        gate.release.set()
        assert [r.get(timeout=WAIT) for r in results] == [0, 1]


def test_resize_refuses_below_one_slot_and_publishes_the_new_size(
        celeriac_app: App) -> None:
    with ThreadedWorker(celeriac_app, slots=2, pool="async") as worker:
        consumer = consumer_of(worker)
        consumer.status = StatusBoard(None, 1).slot(0)
        with pytest.raises(ValueError, match="cannot shrink by 2"):
            worker.call(lambda: consumer.resize(-2))
        assert consumer.slots == 2
        assert worker.call(lambda: consumer.resize(10)) == 12
        assert consumer.status.read().slots == 12  # the node's status board sees it
        runner = consumer.executor.guard.runner
        assert isinstance(runner, ThreadRunner)
        assert runner.threads == 8  # -P async: sync tasks get 8 threads at most


# -- the policy ------------------------------------------------------------------------


def test_the_policy_grows_by_the_backlog_up_to_max_only_when_all_slots_are_busy() -> None:
    policy = Policy(maximum=4, minimum=1, keepalive=30)
    assert policy.decide(Load(1, 1, 1, 0), waiting=10, now=0).delta == 3  # type: ignore[union-attr]
    assert policy.decide(Load(2, 2, 2, 1), waiting=0, now=0).delta == 1  # type: ignore[union-attr]
    assert policy.decide(Load(2, 2, 1, 0), waiting=5, now=0) is None  # a slot is free
    assert policy.decide(Load(4, 4, 4, 0), waiting=5, now=0) is None  # at max
    assert policy.decide(Load(2, 1, 1, 0), waiting=5, now=0) is None  # one still starting
    change = policy.decide(Load(1, 1, 1, 0), waiting=2, now=0)
    assert change is not None
    assert change.reason == "queue backlog 2, all 1 slot(s) busy"


def test_the_policy_shrinks_one_at_a_time_after_the_keepalive_of_idleness() -> None:
    policy = Policy(maximum=4, minimum=1, keepalive=2)
    idle = Load(4, 4, 0, 0)
    assert policy.decide(idle, 0, now=10) is None  # idle from now
    assert policy.decide(idle, 0, now=11.9) is None
    change = policy.decide(idle, 0, now=12)
    assert change is not None
    assert change.delta == -1
    assert change.reason == "4 of 4 slot(s) idle for 2.0s, nothing queued"
    assert policy.decide(Load(3, 3, 0, 0), 0, now=13).delta == -1  # type: ignore[union-attr]
    assert policy.decide(Load(1, 1, 0, 0), 0, now=20) is None  # at min


def test_work_resets_the_idle_timer() -> None:
    policy = Policy(maximum=4, minimum=1, keepalive=2)
    assert policy.decide(Load(2, 2, 0, 0), 0, now=0) is None
    assert policy.decide(Load(2, 2, 2, 0), 0, now=1) is None  # all busy: not idle
    assert policy.decide(Load(2, 2, 0, 0), 0, now=2.5) is None  # idle again from 2.5
    assert policy.decide(Load(2, 2, 0, 0), 0, now=4.5) is not None


# -- the bounds ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "bounds"), [("4,1", (4, 1)), ("10", (10, 1)),
                                              ("10,0", (10, 1)), (" 3 , 3 ", (3, 3))])
def test_autoscale_takes_celerys_max_comma_min(text: str, bounds: tuple[int, int]) -> None:
    assert parse_autoscale(text) == bounds


@pytest.mark.parametrize(("text", "error"), [("1,4", r"MAX \(1\) must be at least MIN"),
                                             ("a,b", "two whole numbers")])
def test_autoscale_refuses_bad_bounds(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_autoscale(text)


def test_the_worker_autoscale_setting_starts_the_pool_at_min() -> None:
    app = App("tests", broker="memory://", worker_autoscale="6,2",
              worker_autoscale_keepalive=1.5)
    options = WorkerOptions.from_settings("proj", app.conf, pool="threads")
    assert (options.autoscale, options.concurrency, options.autoscale_keepalive) == (
        (6, 2), 2, 1.5)
    app.conf.worker_autoscale = [8, 3]  # JSON from the environment gives a list
    assert app.conf.worker_autoscale == (8, 3)
    with pytest.raises(ConfigurationError, match="worker_autoscale: MAX"):
        app.conf.worker_autoscale = (1, 2)
    with pytest.raises(ConfigurationError, match="worker_autoscaler"):
        app.conf.update(worker_autoscaler="celery.worker.autoscale:Autoscaler")


# -- prefork: which processes a shrink stops ----------------------------------------------


def test_a_prefork_shrink_stops_idle_processes_before_busy_ones() -> None:
    supervisor = Supervisor(WorkerOptions("proj", ("celeriac",), concurrency=4))
    try:
        for index, active in enumerate([0, 1, 0, 1]):  # 1 and 3 run a task
            supervisor._board.slot(index).publish(pid=100 + index, slots=1, active=active,
                                                  reserved=0, processed=0, consuming=True)
        live = [0, 1, 2, 3]
        assert supervisor._to_stop(live, 1) == [2]  # the highest idle one
        assert supervisor._to_stop(live, 2) == [2, 0]
        assert supervisor._to_stop(live, 3) == [2, 0, 3]  # then busy ones (they drain)
        assert supervisor._to_stop(live, 0) == []
    finally:
        supervisor._deadlines.close()


def test_resize_by_zero_tells_the_size_without_changing_it() -> None:
    supervisor = Supervisor(WorkerOptions("proj", ("celeriac",), concurrency=2,
                                          autoscale=(80, 2)))
    try:
        assert supervisor.capacity == 80  # room for MAX processes
        assert supervisor.resize(0) == 2
        assert supervisor._requests.empty()
        assert supervisor.resize(3) == 5
        assert supervisor.resize(0) == 5
    finally:
        supervisor._deadlines.close()


# -- a process shrunk away: Consumer.retire ------------------------------------------------


def test_a_retired_consumer_lets_its_task_run_past_the_grace_period(celeriac_app: App) -> None:
    gate = Gate(celeriac_app)
    worker = ThreadedWorker(celeriac_app, slots=1, pool="threads", grace=0.1).start()
    try:
        consumer = consumer_of(worker)
        result = gate.task.delay(1)
        queued = gate.task.delay(2)
        gate.wait_running(1)
        worker.call(consumer.retire)
        with pytest.raises(ValueError, match="stopping"):
            worker.call(lambda: consumer.resize(1))
        time.sleep(0.5)  # five grace periods: a plain stop would have given up by now
        assert gate.running == 1
        assert worker._thread is not None
        assert worker._thread.is_alive()
        gate.release.set()
        assert result.get(timeout=WAIT) == 1  # finished and stored, not cut short
        worker._thread.join(WAIT)
        assert not worker._thread.is_alive()  # then the consumer ended
        assert consumer.stats.processed == 1  # the queued task was handed back, not run
        assert not queued.ready()
    finally:
        gate.release.set()
        stop_if_running(worker)


def test_a_stop_after_retire_brings_the_grace_period_back(celeriac_app: App) -> None:
    gate = Gate(celeriac_app)
    worker = ThreadedWorker(celeriac_app, slots=1, pool="threads", grace=0.2).start()
    try:
        consumer = consumer_of(worker)
        gate.task.delay(1)
        gate.wait_running(1)
        worker.call(consumer.retire)
        time.sleep(0.3)
        started = time.monotonic()
        worker.call(consumer.stop)  # a shutdown while it drains: 0.2 s from now
        assert worker._thread is not None
        worker._thread.join(WAIT)
        assert not worker._thread.is_alive()
        assert 0.15 < time.monotonic() - started < 2.0
        assert gate.running == 1  # cut short (it will be delivered again)
    finally:
        gate.release.set()
        stop_if_running(worker)


def test_a_process_shrunk_away_is_not_replaced_and_its_count_is_kept() -> None:
    supervisor = Supervisor(WorkerOptions("proj", ("celeriac",), concurrency=3))
    try:
        process = supervisor._context.Process(target=sys.exit, args=(0,))
        process.start()
        supervisor._children[2] = Child(2, process, time.monotonic())
        supervisor._board.slot(2).publish(pid=process.pid or 0, slots=1, active=0,
                                          reserved=0, processed=7, consuming=False)
        supervisor._retiring.add(2)  # as _apply_size does when the pool shrinks
        supervisor._reap(supervisor._children[2])
        assert 2 not in supervisor._children  # not replaced
        assert supervisor.snapshot().processed == 7  # its tasks still count
        assert supervisor.snapshot().processes == ()
    finally:
        supervisor._deadlines.close()


# -- the loop, on a real consumer -----------------------------------------------------------


def test_the_autoscaler_grows_and_shrinks_a_consumers_slots(
        celeriac_app: App) -> None:
    gate = Gate(celeriac_app)
    worker = ThreadedWorker(celeriac_app, slots=1, pool="threads").start()
    try:
        consumer = consumer_of(worker)
        policy = Policy(maximum=4, minimum=1, keepalive=0.3)
        scaler = worker.call(lambda: asyncio.ensure_future(autoscale(
            ConsumerPool(consumer), celeriac_app.broker, worker.queues, policy,
            interval=0.05)))
        results = [gate.task.delay(n) for n in range(6)]
        gate.wait_running(4)  # grown by the backlog, up to MAX
        assert consumer.slots == 4
        gate.release.set()
        assert sorted(r.get(timeout=WAIT) for r in results) == list(range(6))
        deadline = time.monotonic() + WAIT
        while consumer.slots > 1:  # one slot given back per check after the keepalive
            assert time.monotonic() < deadline, f"{consumer.slots} slots left"
            time.sleep(0.02)
        worker.call(scaler.cancel)
    finally:
        gate.release.set()
        stop_if_running(worker)


def test_a_draining_process_is_marked_and_the_node_still_counts_as_consuming() -> None:
    supervisor = Supervisor(WorkerOptions("proj", ("celeriac",), concurrency=2))
    try:
        for index, consuming in enumerate([True, False]):  # 1 stopped consuming: it drains
            supervisor._board.slot(index).publish(pid=100 + index, slots=1, active=1,
                                                  reserved=0, processed=3,
                                                  consuming=consuming)
        supervisor._indices = (0, 1)
        supervisor._retiring.add(1)
        snapshot = supervisor.snapshot()
        assert [p.retiring for p in snapshot.processes] == [False, True]
        assert snapshot.consuming  # the node still consumes (readiness)
        assert (snapshot.active, snapshot.processed) == (2, 6)  # its work still counts
        supervisor._retiring.clear()
        assert not supervisor.snapshot().consuming  # a process not consuming, not drained
    finally:
        supervisor._deadlines.close()
