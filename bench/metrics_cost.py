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
import statistics
import tempfile
import threading
import urllib.request
from pathlib import Path

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
              interval: float) -> tuple[float, float]:
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
        return drained.rate, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="drains of each kind (5)")
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per drain (20000)")
    parser.add_argument("--scrape-interval", type=float, default=1.0,
                        help="seconds between scrapes of the metrics worker (1)")
    args = parser.parse_args()
    target = MetricsRedis()
    target.setup()
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpus: dict[bool, list[float]] = {False: [], True: []}
    try:
        for run in range(args.runs):
            order = (False, True) if run % 2 == 0 else (True, False)
            for metrics in order:
                rate, cpu = one_drain(target, args.tasks, metrics, args.scrape_interval)
                rates[metrics].append(rate)
                cpus[metrics].append(cpu)
                print(f"  run {run + 1}: W2 {'with' if metrics else 'without'} "
                      f"--metrics-port: {rate:,.0f} tasks/s, worker CPU {cpu:.2f} s",
                      flush=True)
    finally:
        target.teardown()
    plain, measured = statistics.median(rates[False]), statistics.median(rates[True])
    cost = (plain - measured) / plain * 100
    print(f"W2 drain, Redis, median of {args.runs}: without {plain:,.0f} tasks/s, with "
          f"--metrics-port {measured:,.0f} tasks/s: cost {cost:+.1f}% "
          f"(goal <= {GOAL_PERCENT:.0f}%: {'met' if cost <= GOAL_PERCENT else 'MISSED'})")
    best_plain, best_measured = max(rates[False]), max(rates[True])
    print(f"  best runs (least disturbed by other load): without {best_plain:,.0f}, with "
          f"{best_measured:,.0f}: cost {(best_plain - best_measured) / best_plain * 100:+.1f}%")
    # CPU is what other load on the machine disturbs least: the worker's CPU seconds from
    # start to exit (start-up included, the same in both), and what metrics add per task.
    cpu_plain, cpu_measured = statistics.median(cpus[False]), statistics.median(cpus[True])
    print(f"  worker CPU per drain (median): without {cpu_plain:.2f} s, with "
          f"{cpu_measured:.2f} s: {(cpu_measured - cpu_plain) / args.tasks * 1e6:+.1f} us "
          f"per task ({(cpu_measured - cpu_plain) / cpu_plain * 100:+.1f}%)")
    print("  without:", ", ".join(f"{r:,.0f}" for r in rates[False]))
    print("  with:   ", ", ".join(f"{r:,.0f}" for r in rates[True]))


if __name__ == "__main__":
    main()
