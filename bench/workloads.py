"""The workloads, each measured on one target session.

- W1 send: ``N`` no-op tasks sent one by one with ``.delay()`` from this process.
- W2 drain: a 2-process worker, started once the ``N`` tasks of W1 are queued, runs
  them all; executions are counted exactly from the ledger the task writes.
- W3 round trip: sequential ``delay().get()`` against a running 2-process worker.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from bench.ledger import read_ledger
from bench.targets import Session

ROOT = Path(__file__).resolve().parent.parent  # the worker imports bench.tasks from here
# While W2 drains, the runner looks at the queue length every POLL_MIN..POLL_MAX seconds:
# the fewer tasks remain, the more often. Counting costs in proportion to what remains
# (about 1.3 ms for 20,000 on SQLite), so polling stays near 3% of one CPU throughout
# and the end is seen within about 2 ms.
POLL_MIN = 0.002
POLL_MAX = 0.05
POLL_PER_TASK = 2e-6
STARTUP_TIMEOUT = 60.0  # seconds a worker may take to run its first task
STOP_TIMEOUT = 60.0  # seconds a worker may take to stop after SIGTERM
GET_TIMEOUT = 30.0


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
    first_to_done: float  # first execution -> queue empty and every result stored
    first_to_last: float  # first execution -> last execution (ledger times only)

    @property
    def rate(self) -> float:
        """Tasks/s from the first execution until all were acked with results stored."""
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

    def __init__(self, session: Session, concurrency: int, log: Path) -> None:
        self.command = session.worker_command(concurrency)
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
        ids.append(session.send_noop().id)
    elapsed = time.perf_counter() - started
    return SendResult(tasks, elapsed, tuple(ids))


def drain(session: Session, sent: SendResult, workdir: Path, ledger: Path,
          concurrency: int, timeout: float) -> DrainResult:
    """W2: start a worker on the queued tasks and time it until every one is done.

    Done means the queue holds none of them (all acked) and every one has a SUCCESS
    result; the ledger must then show each task executed exactly once.
    """
    if session.remaining() != sent.tasks:
        raise BenchError(f"expected {sent.tasks} queued tasks, found {session.remaining()}")
    with WorkerProcess(session, concurrency, workdir / "worker-drain.log") as worker:
        deadline = time.monotonic() + timeout
        while remaining := session.remaining():
            worker.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{remaining} tasks still queued after {timeout}s:"
                                 f"\n{worker.log_tail()}")
            time.sleep(min(POLL_MAX, max(POLL_MIN, remaining * POLL_PER_TASK)))
        done_at = time.time()
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


def round_trip(session: Session, workdir: Path, ledger: Path, concurrency: int,
               calls: int, warmup: int) -> RoundTripResult:
    """W3: ``calls`` sequential ``delay().get()`` after ``warmup`` untimed ones."""
    with WorkerProcess(session, concurrency, workdir / "worker-roundtrip.log") as worker:
        session.send_noop().get(timeout=STARTUP_TIMEOUT)  # a worker process is up
        worker.check_alive()
        for _ in range(warmup):
            session.send_noop().get(timeout=GET_TIMEOUT)
        samples: list[float] = []
        ids: set[str] = set()
        for _ in range(calls):
            started = time.perf_counter()
            handle = session.send_noop()
            handle.get(timeout=GET_TIMEOUT)
            samples.append((time.perf_counter() - started) * 1000)
            ids.add(handle.id)
    executed = read_ledger(ledger, ids)
    if executed.executions != calls or executed.distinct != calls:
        raise BenchError(f"{calls} round trips: the ledger shows {executed.executions} "
                         f"executions of {executed.distinct} distinct tasks")
    return RoundTripResult(tuple(samples))
