"""The workloads, each measured on one target session.

- W1 send: ``N`` no-op tasks sent one by one with ``.delay()`` from this process.
- W2 drain: a 2-process worker, started once the ``N`` tasks of W1 are queued, runs
  them all; executions are counted exactly from the ledger the task writes.
- W3 round trip: sequential ``delay().get()`` against a running 2-process worker.
- W4 sleep: ``N`` tasks that each wait 10 ms, queued, then drained by one I/O worker
  process with 100 slots (celeriac ``-P async``, Celery ``-P gevent``).
- W5 CPU: ``N`` tasks that each burn 5 ms of CPU, queued, then drained by 2 processes;
  compared with ``bare_loop``, two plain processes doing the same work with no queue.
- Batch send: ``N`` no-op tasks sent with the framework's fastest many-at-once API.

Every drain (W2, W4, W5) is timed the same way: from the first task's start (the
ledger's earliest line) until the ledger shows every task run and the session says the
queue is empty with every result stored (``Session.settled``). Worker start-up is left
out of that rate and reported on its own.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.ledger import LedgerCounter, read_ledger
from bench.targets import Session, WorkerSpec
from bench.tasks import NOOP
from bench.work import burn

ROOT = Path(__file__).resolve().parent.parent  # the worker imports bench.* from here
# While a drain runs, the runner counts the ledger's new lines every POLL_MIN..POLL_MAX
# seconds: the fewer tasks remain, the more often, so the end is seen within about 2 ms
# while polling costs little CPU.
POLL_MIN = 0.002
POLL_MAX = 0.05
POLL_PER_TASK = 2e-6  # before the first task is seen
POLL_SHARE = 50  # ... then 1/50th of the time the remaining tasks should take
STARTUP_TIMEOUT = 60.0  # seconds a worker may take to run its first task
STOP_TIMEOUT = 60.0  # seconds a worker may take to stop after SIGTERM
GET_TIMEOUT = 30.0
QUEUED_TIMEOUT = 10.0  # seconds a batch's messages may take to show in the queue length


class BenchError(RuntimeError):
    """A workload did not do what it must (lost or duplicated tasks, a dead worker)."""


@dataclass(frozen=True, slots=True)
class SendResult:
    tasks: int
    seconds: float
    task_ids: tuple[str, ...]

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


@dataclass(frozen=True, slots=True)
class DrainResult:
    tasks: int
    executions: int
    startup: float  # worker started -> first execution
    first_to_done: float  # first execution -> all run, queue empty, results stored
    first_to_last: float  # first execution -> last execution (ledger times only)

    @property
    def rate(self) -> float:
        """Tasks/s from the first execution until all were done with results stored."""
        return self.tasks / self.first_to_done

    @property
    def rate_with_startup(self) -> float:
        """Tasks/s from starting the worker command until all were done."""
        return self.tasks / (self.startup + self.first_to_done)


@dataclass(frozen=True, slots=True)
class RoundTripResult:
    samples_ms: tuple[float, ...]

    @property
    def p50(self) -> float:
        return percentile(self.samples_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.samples_ms, 99)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples_ms)


def percentile(samples: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile: the smallest sample with ``pct``% of samples at or below."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil(n * pct / 100)
    return ordered[int(rank) - 1]


class WorkerProcess:
    """A worker command in a process of its own; stopped with SIGTERM (a warm shutdown)."""

    def __init__(self, session: Session, spec: WorkerSpec, log: Path) -> None:
        self.command = session.worker_command(spec)
        self.env = {**os.environ, **session.worker_env()}
        self.log = log
        self.started_at = 0.0
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WorkerProcess:
        with self.log.open("wb") as out:
            self.started_at = time.time()
            # A session of its own: a Ctrl-C meant for the runner does not reach the
            # worker (the runner stops it), and a worker that will not stop can be
            # killed with every process it started, and nothing else.
            self._process = subprocess.Popen(self.command, env=self.env, cwd=ROOT,
                                             stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop(check=kind is None)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def check_alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise BenchError(f"the worker exited early with code {self._process.returncode}:"
                             f"\n{self.log_tail()}")

    def stop(self, check: bool = True) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise BenchError(f"the worker did not stop within {STOP_TIMEOUT:.0f}s of SIGTERM:"
                             f"\n{self.log_tail()}") from None
        if check and code != 0:
            raise BenchError(f"the worker exited with code {code}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def send(session: Session, tasks: int) -> SendResult:
    """W1: send ``tasks`` no-op tasks one by one; the producer is connected beforehand."""
    session.warm_up()
    ids: list[str] = []
    started = time.perf_counter()
    for _ in range(tasks):
        ids.append(session.send(NOOP).id)
    elapsed = time.perf_counter() - started
    return SendResult(tasks, elapsed, tuple(ids))


def batch_send(session: Session, tasks: int) -> SendResult:
    """Batch send: ``tasks`` no-op tasks with one call of the framework's batch API."""
    session.warm_up()
    started = time.perf_counter()
    ids = session.send_batch(NOOP, (), tasks)
    elapsed = time.perf_counter() - started
    wait_until_queued(session, tasks)
    if len(ids) != tasks:
        raise BenchError(f"batch send of {tasks} tasks returned {len(ids)} ids")
    return SendResult(tasks, elapsed, tuple(ids))


def poll_interval(left: int, done: int, elapsed: float) -> float:
    """How long the drain's poll sleeps: a small share of the time the rest should take.

    Each look at the ledger costs the runner CPU that the workers could use (the bare
    loop of W5 pays none), so the runner looks rarely while much is left and often near
    the end, where the moment matters.
    """
    if left <= 0:
        return POLL_MIN
    if done <= 0:
        return min(POLL_MAX, max(POLL_MIN, left * POLL_PER_TASK))
    remaining = left * elapsed / done  # at the rate so far
    return min(POLL_MAX, max(POLL_MIN, remaining / POLL_SHARE))


def wait_until_queued(session: Session, tasks: int) -> None:
    """Check that ``tasks`` messages are queued (a broker may count them a moment late)."""
    deadline = time.monotonic() + QUEUED_TIMEOUT
    while (queued := session.queued()) != tasks:
        if queued > tasks or time.monotonic() > deadline:
            raise BenchError(f"expected {tasks} queued tasks, found {queued}")
        time.sleep(0.05)


def queue_tasks(session: Session, task: str, args: tuple[Any, ...], tasks: int) -> SendResult:
    """Queue the tasks of W4 or W5 before their worker starts (not timed as a send)."""
    session.warm_up()
    started = time.perf_counter()
    ids = session.send_batch(task, args, tasks)
    return SendResult(tasks, time.perf_counter() - started, tuple(ids))


def drain(session: Session, sent: SendResult, spec: WorkerSpec, workdir: Path,
          ledger: Path, timeout: float, log_name: str) -> DrainResult:
    """Start a worker on the queued tasks and time it until every one is done.

    Done means the ledger shows every task run, and then the session finds the queue
    empty and every result stored (``Session.settled``); after the worker stops, the
    results and the ledger must show each task run exactly once, successfully.
    """
    wait_until_queued(session, sent.tasks)
    counter = LedgerCounter(ledger)
    with WorkerProcess(session, spec, workdir / log_name) as worker:
        deadline = time.monotonic() + timeout
        while True:
            left = sent.tasks - counter.count()
            if left <= 0:
                checked_at = time.time()
                if session.settled(sent.task_ids):
                    done_at = checked_at
                    break
            worker.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{max(0, left)} tasks still not run after {timeout}s:"
                                 f"\n{worker.log_tail()}")
            time.sleep(poll_interval(left, sent.tasks - left, time.time() - worker.started_at))
    stored = session.successes(sent.task_ids)
    executed = read_ledger(ledger, set(sent.task_ids))
    if stored != sent.tasks or executed.executions != sent.tasks \
            or executed.distinct != sent.tasks:
        raise BenchError(f"sent {sent.tasks} tasks: {stored} SUCCESS results stored, "
                         f"{executed.executions} executions of {executed.distinct} distinct "
                         f"tasks in the ledger; every count must equal {sent.tasks}")
    assert executed.first is not None
    assert executed.last is not None
    return DrainResult(tasks=sent.tasks, executions=executed.executions,
                       startup=executed.first - worker.started_at,
                       first_to_done=done_at - executed.first,
                       first_to_last=executed.last - executed.first)


def round_trip(session: Session, spec: WorkerSpec, workdir: Path, ledger: Path,
               calls: int, warmup: int) -> RoundTripResult:
    """W3: ``calls`` sequential ``delay().get()`` after ``warmup`` untimed ones."""
    with WorkerProcess(session, spec, workdir / "worker-roundtrip.log") as worker:
        session.send(NOOP).get(timeout=STARTUP_TIMEOUT)  # a worker process is up
        worker.check_alive()
        for _ in range(warmup):
            session.send(NOOP).get(timeout=GET_TIMEOUT)
        samples: list[float] = []
        ids: set[str] = set()
        for _ in range(calls):
            started = time.perf_counter()
            handle = session.send(NOOP)
            handle.get(timeout=GET_TIMEOUT)
            samples.append((time.perf_counter() - started) * 1000)
            ids.add(handle.id)
    executed = read_ledger(ledger, ids)
    if executed.executions != calls or executed.distinct != calls:
        raise BenchError(f"{calls} round trips: the ledger shows {executed.executions} "
                         f"executions of {executed.distinct} distinct tasks")
    return RoundTripResult(tuple(samples))


def bare_loop(iterations: int, tasks: int, processes: int) -> float:
    """W5's yardstick: ``processes`` plain processes share ``tasks`` burns; tasks/s.

    No queue, no framework: each process is forked before the clock starts, waits for a
    common start signal, runs its share of ``burn(iterations)`` calls and exits.
    """
    context = multiprocessing.get_context("fork")
    start = context.Event()
    shares = [tasks // processes + (1 if i < tasks % processes else 0)
              for i in range(processes)]
    workers = [context.Process(target=_burn_share, args=(start, iterations, share))
               for share in shares]
    for worker in workers:
        worker.start()
    time.sleep(0.2)  # every process is up and waiting
    started = time.perf_counter()
    start.set()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if any(worker.exitcode != 0 for worker in workers):
        raise BenchError("a bare-loop process failed")
    return tasks / elapsed


def _burn_share(start: Any, iterations: int, share: int) -> None:
    start.wait()
    for _ in range(share):
        burn(iterations)
