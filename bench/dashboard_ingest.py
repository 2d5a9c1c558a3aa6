"""Whether the dashboard keeps up: its ingest under 2,000 events/s, on Redis and SQLite.

    python -m bench.dashboard_ingest                      # both brokers, 2,000 events/s, 45 s
    python -m bench.dashboard_ingest --brokers redis --rate 4000 --seconds 60

A publisher process plays a busy cluster: four workers' hostnames, each publishing a
batch record every 50 ms on the broker's real bus (``celeriac.bus``, as a worker's
event emitter does), in all ``--rate`` events/s of task-received, task-started and
task-succeeded (a third of that in tasks/s; a task's started and succeeded come in the
batch after its received, so records are merged across writes), plus heartbeats.

This process is the dashboard: a ``HistoryIngest`` writing the broker's own history
store (``open_history``), and a "page" every second: the queries the overview and the
tasks page make (``counts``, ``throughput`` over 30 minutes, the newest 50 tasks), and
a text search. Reported per broker:

- *lag*: for every task event, from its timestamp to the end of the store write that
  applied it, p50/p99/max (the Done-when line: pages under 1 s behind);
- *page*: the time of an overview's and the tasks page's queries, p50/max, while the
  ingest writes; *text search*: the same for a search of the arguments' text;
- *store*: records at the end (``--max-tasks``, trimmed every ``--trim-interval``
  seconds, so a run longer than max_tasks/tasks-per-second shows trims under load), and
  its size (the SQLite file with its WAL; Redis: ``MEMORY USAGE`` of its keys);
- *RSS*: this process at the start (ingest running, before the first event), middle,
  end, and the highest per-second sample (psutil): flat means memory is bounded.

Redis DB 8 as the rest of the bench, under a key prefix of this run's own (removed at the
end); the SQLite file is made in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import tempfile
import threading
import time
import uuid
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from celeriac import App
from celeriac.bus.base import EVENTS
from celeriac.dashboard.history import HistoryStore, TaskQuery, is_task_event
from celeriac.dashboard.history_open import open_history
from celeriac.dashboard.history_redis import RedisHistory
from celeriac.dashboard.history_sqlite import SQLiteHistory
from celeriac.dashboard.ingest import HistoryIngest
from celeriac.events.event import FIELDS, encode

BROKERS = ("redis", "sqlite")
REDIS_URL = "redis://127.0.0.1:6379/8"
WORKERS = 4
TICK = 0.05  # seconds between a worker's batch records
DRAIN_WAIT = 30.0  # seconds the ingest may take to catch up after the publisher stops


# -- the publisher (a process of its own: a cluster's workers) -----------------------------


def _compact(kind: str, at: float, **fields: Any) -> tuple[Any, ...]:
    return (kind, at, *(fields.get(name) for name in FIELDS[kind]))


class Cluster:
    """The workers' event records, tick by tick: each tick, every worker's tasks of the
    last tick start and succeed, and its share of the tasks due is received."""

    def __init__(self) -> None:
        self.hosts = [f"bench{n}@load" for n in range(WORKERS)]
        self.seqs = dict.fromkeys(self.hosts, 0)
        self.running: dict[str, list[str]] = {host: [] for host in self.hosts}
        self.tasks = 0  # tasks received so far
        self.events = 0  # task events made so far
        self.beat_at = 0.0

    def tick(self, now: float, due: int) -> list[bytes]:
        """The records of one tick in which ``due`` new tasks are received."""
        beat = now - self.beat_at >= 2.0
        if beat:
            self.beat_at = now
        records = []
        for n, host in enumerate(self.hosts):
            events = self._finish(host, now)
            share = due // WORKERS + (1 if n < due % WORKERS else 0)
            self.running[host] = [str(uuid.uuid4()) for _ in range(share)]
            for task_id in self.running[host]:
                events.append(_compact(
                    "task-received", now, uuid=task_id, name="bench.add", queue="celery",
                    args=f"({self.tasks}, 'payload')", kwargs="{'tenant': 'bench'}",
                    retries=0))
                self.tasks += 1
            self.events += len(events)
            if beat:
                events.append(_compact("worker-heartbeat", now, freq=2.0, active=1,
                                       processed=self.tasks))
            records.extend(self._record(host, events))
        return records

    def last(self, now: float) -> list[bytes]:
        """The records that finish the last tick's tasks."""
        records = []
        for host in self.hosts:
            events = self._finish(host, now)
            self.events += len(events)
            records.extend(self._record(host, events))
        return records

    def _finish(self, host: str, now: float) -> list[tuple[Any, ...]]:
        events = []
        for task_id in self.running.pop(host, []):
            task = {"uuid": task_id, "name": "bench.add", "queue": "celery"}
            events.append(_compact("task-started", now, **task))
            events.append(_compact("task-succeeded", now, runtime=0.001, result_size=2,
                                   **task))
        return events

    def _record(self, host: str, events: list[tuple[Any, ...]]) -> list[bytes]:
        if not events:
            return []
        record = encode(host, os.getpid(), self.seqs[host], events)
        self.seqs[host] += len(events)
        return [record]


def publish(url: str, options: dict[str, Any], rate: float, seconds: float,
            published: Any, took: Any) -> None:
    """Publish ``rate`` events/s for ``seconds``; ``published``: the task events sent,
    ``took``: the seconds it took."""
    asyncio.run(_publish(url, options, rate, seconds, published, took))


async def _publish(url: str, options: dict[str, Any], rate: float, seconds: float,
                   published: Any, took: Any) -> None:
    app = App("bench", broker=url, broker_transport_options=options)
    bus = await app.open_bus()
    cluster = Cluster()
    start = time.monotonic()
    try:
        while (elapsed := time.monotonic() - start) < seconds:
            records = cluster.tick(time.time(), int(rate / 3 * elapsed) - cluster.tasks)
            if records:
                await bus.publish(EVENTS, records)
            await asyncio.sleep(max(0.0, TICK - (time.monotonic() - start - elapsed)))
        records = cluster.last(time.time())
        if records:
            await bus.publish(EVENTS, records)
    finally:
        took.value = time.monotonic() - start
        published.value = cluster.events
        await bus.close()
        app.close()


# -- the dashboard side ----------------------------------------------------------------------


class TimedIngest(HistoryIngest):
    """The ingest, noting each task event's lag (timestamp to the end of its write)."""

    def __init__(self, app: App, store: HistoryStore, trim_interval: float) -> None:
        super().__init__(app, store, trim_interval)
        self.lags = array("d")  # 8 bytes an event: about 1 MB a minute at 2,000/s
        self.lags_lock = threading.Lock()

    async def handle(self, events: list[dict[str, Any]]) -> None:
        await super().handle(events)
        done = time.time()
        with self.lags_lock:
            self.lags.extend(done - event["timestamp"] for event in events
                             if is_task_event(event))


@dataclass
class Result:
    broker: str
    published: int = 0
    seconds: float = 0.0
    applied: int = 0
    lags: list[float] = field(default_factory=list)
    pages: list[float] = field(default_factory=list)
    searches: list[float] = field(default_factory=list)
    tasks: int = 0
    store_bytes: int = 0
    rss: list[float] = field(default_factory=list)  # MiB, one a second
    trimmed: int = 0

    def row(self) -> str:
        lags = sorted(self.lags) or [float("nan")]
        pages = sorted(self.pages) or [float("nan")]
        searches = sorted(self.searches) or [float("nan")]
        rss = self.rss or [float("nan")]
        middle = rss[len(rss) // 2]
        return (f"| {self.broker} | {self.published / self.seconds:,.0f} | "
                f"{self.applied:,} | {_pct(lags, 50):.3f} / {_pct(lags, 99):.3f} / "
                f"{lags[-1]:.3f} | {_pct(pages, 50) * 1000:.0f} / {pages[-1] * 1000:.0f} | "
                f"{_pct(searches, 50) * 1000:.0f} / {searches[-1] * 1000:.0f} | "
                f"{self.tasks:,} | {self.store_bytes / 2 ** 20:.1f} | "
                f"{rss[0]:.0f} / {middle:.0f} / {rss[-1]:.0f} / {max(rss):.0f} |")


def _pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p / 100))]


async def page(store: HistoryStore) -> tuple[float, float]:
    """The seconds of the queries of an overview and the tasks page (counts, 30 minutes
    of throughput, the newest 50 tasks), and of a text search."""
    started = time.perf_counter()
    await store.counts()
    await store.throughput(time.time() - 1800, 30)
    await store.search(TaskQuery(limit=50))
    searched = time.perf_counter()
    await store.search(TaskQuery(text="payload", limit=50))
    return searched - started, time.perf_counter() - searched


@contextmanager
def app_for(kind: str, directory: Path, max_tasks: int
            ) -> Iterator[tuple[App, str, dict[str, Any]]]:
    if kind == "sqlite":
        url = f"sqlite:///{directory / 'bench.db'}"
        app = App("bench", broker=url, dashboard_history_max_tasks=max_tasks)
        try:
            yield app, url, {}
        finally:
            app.close()
        return
    import redis

    options = {"key_prefix": f"bench-dash:{uuid.uuid4().hex[:8]}:"}
    app = App("bench", broker=REDIS_URL, broker_transport_options=options,
              dashboard_history_max_tasks=max_tasks)
    try:
        yield app, REDIS_URL, options
    finally:
        app.close()
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{options['key_prefix']}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start:start + 1000])
        client.close()


def store_bytes(store: HistoryStore) -> int:
    if isinstance(store, SQLiteHistory):
        return sum(os.path.getsize(path) for path in (store.path, store.path + "-wal")
                   if os.path.exists(path))
    assert isinstance(store, RedisHistory)
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{store.prefix}*", count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
        return sum(n or 0 for n in pipe.execute())
    finally:
        client.close()


def run(kind: str, rate: float, seconds: float, max_tasks: int, trim_interval: float
        ) -> Result:
    result = Result(kind)
    me = psutil.Process()
    with tempfile.TemporaryDirectory() as directory, \
            app_for(kind, Path(directory), max_tasks) as (app, url, options):
        store = open_history(app)
        ingest = TimedIngest(app, store, trim_interval)
        ingest.start()
        result.rss.append(me.memory_info().rss / 2 ** 20)
        spawn = multiprocessing.get_context("spawn")
        published, took = spawn.Value("q", 0), spawn.Value("d", 0.0)
        publisher = spawn.Process(target=publish, daemon=True,
                                  args=(url, options, rate, seconds, published, took))
        publisher.start()

        async def watch() -> None:
            next_at = time.monotonic() + 1.0
            while publisher.is_alive():
                overview, search = await page(store)
                result.pages.append(overview)
                result.searches.append(search)
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at += 1.0
                result.rss.append(me.memory_info().rss / 2 ** 20)

        asyncio.run(watch())
        publisher.join()
        result.seconds = took.value
        result.published = published.value
        deadline = time.monotonic() + DRAIN_WAIT
        while ingest.applied < result.published and time.monotonic() < deadline:
            time.sleep(0.1)
        ingest.close()
        result.applied = ingest.applied
        result.trimmed = ingest.trimmed
        result.rss.append(me.memory_info().rss / 2 ** 20)
        with ingest.lags_lock:
            result.lags = list(ingest.lags)

        async def measure() -> None:
            result.tasks = (await store.search(TaskQuery(limit=1)))[1]
            await store.close()

        asyncio.run(measure())
        result.store_bytes = store_bytes(store)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", nargs="+", choices=BROKERS, default=list(BROKERS))
    parser.add_argument("--rate", type=float, default=2000.0, help="events/s published")
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--max-tasks", type=int, default=20_000,
                        help="dashboard_history_max_tasks for the run")
    parser.add_argument("--trim-interval", type=float, default=10.0)
    args = parser.parse_args()
    print(f"{args.rate:,.0f} events/s for {args.seconds:.0f} s; max_tasks "
          f"{args.max_tasks:,}, trimmed every {args.trim_interval:.0f} s; "
          f"{os.cpu_count()} CPUs")
    print("| broker | published ev/s | applied | lag p50 / p99 / max s | "
          "page p50 / max ms | text search p50 / max ms | store tasks | store MiB | "
          "RSS MiB start / mid / end / max |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in args.brokers:
        result = run(kind, args.rate, args.seconds, args.max_tasks, args.trim_interval)
        print(result.row(), flush=True)
        print(f"  RSS MiB every 10 s: {' '.join(f'{m:.0f}' for m in result.rss[::10])}; "
              f"trims removed {result.trimmed:,} tasks", flush=True)
        if result.applied < result.published:
            print(f"  ({result.published - result.applied:,} events not applied within "
                  f"{DRAIN_WAIT:.0f} s of the end)")


if __name__ == "__main__":
    main()
