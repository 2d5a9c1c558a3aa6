"""What task events cost: W2 drain on Redis with events on and off, in one run.

    python -m bench.events_cost                   # 3 pairs of 20,000 tasks
    python -m bench.events_cost --runs 5 --tasks 30000

Each pair queues the same number of no-op tasks twice and drains them with a 2-process
prefork worker, once with events on (the default) and once with ``--without-events``,
the order alternating from pair to pair so that a drift of the machine's speed does not
favour one side. While the events-on worker drains, a monitor (``app.events.iter``)
reads the stream in this process, as a dashboard would, and counts the task events it
receives. The medians and the cost (``1 - on/off``, in %) are printed; the goal is at most
10% (issue 12).

Redis DB 8 as the rest of the bench, but under a key prefix of this run's own (removed
at the end), so nothing else on DB 8 is flushed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from bench.targets import CELERIAC_REDIS_DB, REDIS_HOST, CeleriacSession, WorkerSpec
from bench.tasks import NOOP
from bench.workloads import drain, queue_tasks

GOAL = 0.10  # events may cost at most this share of the drain rate


class EventsSession(CeleriacSession):
    """A celeriac session on Redis whose worker runs with events on or off."""

    def __init__(self, url: str, ledger: Path, events: bool) -> None:
        super().__init__(url, url, ledger)
        self.events = events

    def worker_command(self, spec: WorkerSpec) -> list[str]:
        return [*super().worker_command(spec), "-E" if self.events else "--without-events"]


class Monitor:
    """Counts the task-succeeded events of the drain, on a thread, as a dashboard would."""

    def __init__(self, session: CeleriacSession) -> None:
        self.succeeded = 0
        self.events = 0
        self._stop = threading.Event()
        self._stream = session.app.events.iter(timeout=None)  # subscribed now
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for event in self._stream:
            self.events += 1
            if event["type"] == "task-succeeded":
                self.succeeded += 1
            if self._stop.is_set():
                break

    def stop(self, expected: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.succeeded < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(timeout)


def one_drain(url: str, tasks: int, events: bool) -> tuple[float, int | None]:
    """The drain rate, and (events on) how many task-succeeded events a monitor saw."""
    with tempfile.TemporaryDirectory(prefix="celeriac-bench-events-") as tmp:
        workdir = Path(tmp)
        ledger = workdir / "ledger"
        ledger.mkdir()
        session = EventsSession(url, ledger, events)
        try:
            sent = queue_tasks(session, NOOP, (), tasks)
            monitor = Monitor(session) if events else None
            drained = drain(session, sent, WorkerSpec("prefork", 2), workdir, ledger,
                            300.0, "worker.log")
            seen = None
            if monitor is not None:
                monitor.stop(tasks)
                seen = monitor.succeeded
            return drained.rate, seen
        finally:
            session.close()


def clean(prefix: str) -> None:
    client: Any = redis.Redis.from_url(f"redis://{REDIS_HOST}/{CELERIAC_REDIS_DB}")
    try:
        keys = list(client.scan_iter(f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.events_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="pairs of drains (3)")
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per drain (20000)")
    args = parser.parse_args(argv)
    rates: dict[bool, list[float]] = {True: [], False: []}
    prefix = f"bench-events-{uuid.uuid4().hex[:8]}:"
    try:
        for run in range(args.runs):
            for events in ((True, False) if run % 2 == 0 else (False, True)):
                url = f"redis://{REDIS_HOST}/{CELERIAC_REDIS_DB}?key_prefix={prefix}r{run}:"
                rate, seen = one_drain(url, args.tasks, events)
                rates[events].append(rate)
                note = f", monitor saw {seen} task-succeeded" if seen is not None else ""
                print(f"run {run + 1}: events {'on ' if events else 'off'} "
                      f"{rate:,.0f} tasks/s{note}", flush=True)
    finally:
        clean(prefix)
    on, off = statistics.median(rates[True]), statistics.median(rates[False])
    cost = 1 - on / off
    print(f"W2 drain on Redis, {args.tasks:,} tasks, median of {args.runs}: "
          f"events off {off:,.0f} tasks/s, events on {on:,.0f} tasks/s, "
          f"cost {cost:.1%} (goal at most {GOAL:.0%}: {'met' if cost <= GOAL else 'MISSED'})")
    return 0 if cost <= GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
