"""What ``--metrics-port`` costs the W2 drain on Redis: ``python -m bench.metrics_cost``.

W2 (20,000 no-op tasks queued, then drained by a 2-process prefork worker, timed from
the first execution until every result is stored; ``bench.workloads.drain``) runs with
and without ``--metrics-port`` in one run, alternating which goes first, ``--runs``
times each, and the worker's CPU time from start to exit (what other load on a shared
machine disturbs least). While the metrics worker drains, a scraper reads ``/metrics`` every
``--scrape-interval`` seconds (1 s: fifteen times Prometheus's default rate), so the
scrapes' cost is counted too. Prints the medians and the cost in percent; the goal
(issue 12) is at most 5%.

It uses Redis database 11 (flushed before and after each session), not the main
bench's 8, so that it can run beside it.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import tempfile
import threading
import urllib.request
from pathlib import Path

from bench.paired import Drain, alternate, report
from bench.run import wait_for_idle_cpus
from bench.targets import REDIS_HOST, CeleriacRedis, WorkerSpec, flush_redis
from bench.workloads import drain, send

METRICS_DB = 11
GOAL_PERCENT = 5.0
IDLE_PATIENCE = 5.0  # seconds to wait for idle CPUs before each drain (shared machines)


class MetricsRedis(CeleriacRedis):
    url = f"redis://{REDIS_HOST}/{METRICS_DB}"

    def setup(self) -> None:
        flush_redis(METRICS_DB)

    teardown = setup

    def open(self, workdir: Path, ledger: Path):  # type: ignore[no-untyped-def]
        from bench.targets import CeleriacSession

        flush_redis(METRICS_DB)
        return CeleriacSession(self.url, self.url, ledger,
                               on_close=lambda: flush_redis(METRICS_DB))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Scraper(threading.Thread):
    """Reads /metrics every ``interval`` seconds, as Prometheus would; counts the scrapes."""

    def __init__(self, port: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval = interval
        self.scrapes = 0
        self.last = ""
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as reply:
                    self.last = reply.read().decode()
                self.scrapes += 1
            except OSError:
                pass  # the worker is starting or stopping


def children_cpu() -> float:
    """CPU seconds of every worker process this runner started and reaped (the worker's
    supervisor reaps its own processes, so theirs are in it)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_drain(target: MetricsRedis, tasks: int, metrics: bool,
              interval: float) -> Drain:
    """(tasks/s, CPU seconds the worker used from its start to its exit)."""
    with tempfile.TemporaryDirectory(prefix="celeriac-bench-") as tmp:
        workdir = Path(tmp)
        ledger = workdir / "ledger"
        ledger.mkdir()
        session = target.open(workdir, ledger)
        scraper = None
        try:
            sent = send(session, tasks)
            if metrics:
                port = free_port()
                os.environ["CELERIAC_WORKER_METRICS_PORT"] = str(port)
                os.environ["CELERIAC_WORKER_METRICS_HOST"] = '"127.0.0.1"'
                scraper = Scraper(port, interval)
                scraper.start()
            wait_for_idle_cpus(IDLE_PATIENCE)
            cpu = children_cpu()
            drained = drain(session, sent, WorkerSpec("prefork", 2), workdir, ledger,
                            300.0, "worker-drain.log")
            cpu = children_cpu() - cpu
        finally:
            os.environ.pop("CELERIAC_WORKER_METRICS_PORT", None)
            os.environ.pop("CELERIAC_WORKER_METRICS_HOST", None)
            if scraper is not None:
                scraper.stop.set()
            session.close()
        if scraper is not None:
            counted = sum(float(line.rsplit(" ", 1)[1]) for line in scraper.last.splitlines()
                          if line.startswith("celeriac_tasks_total{"))
            print(f"    {scraper.scrapes} scrapes; the last one counted {counted:,.0f} tasks")
        return Drain(drained.rate, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="drains of each kind (5)")
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per drain (20000)")
    parser.add_argument("--scrape-interval", type=float, default=1.0,
                        help="seconds between scrapes of the metrics worker (1)")
    args = parser.parse_args()
    target = MetricsRedis()
    target.setup()
    try:
        drains = alternate(
            args.runs,
            lambda metrics: one_drain(target, args.tasks, metrics, args.scrape_interval),
            _label)
    finally:
        target.teardown()
    report(drains, _label, args.tasks, GOAL_PERCENT)


def _label(metrics: bool) -> str:
    return "with --metrics-port" if metrics else "without"


if __name__ == "__main__":
    main()
