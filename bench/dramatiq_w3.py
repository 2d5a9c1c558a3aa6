"""W3 for Dramatiq on RabbitMQ, the peer issue 4 quotes (0.73 ms), with and without confirms.

``pip install 'dramatiq[rabbitmq,redis]'``, then ``python -m bench.dramatiq_w3``. It
runs 1,000 sequential ``send().get_result(block=True)`` against a Dramatiq worker with
2 processes of 1 thread, RabbitMQ broker (127.0.0.1:5672, guest) and Redis results
(database 7, flushed before and after), once with Dramatiq's default (no publisher
confirms) and once with ``confirm_delivery=True``, and prints the p50 and p99.

The same module is the worker's app: ``python -m dramatiq bench.dramatiq_w3``
imports it and reads ``DRAMATIQ_CONFIRM`` from the environment.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import dramatiq  # type: ignore[import-not-found]
from dramatiq.brokers.rabbitmq import RabbitmqBroker  # type: ignore[import-not-found]
from dramatiq.results import Results  # type: ignore[import-not-found]
from dramatiq.results.backends import RedisBackend  # type: ignore[import-not-found]

RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = "redis://127.0.0.1:6379/7"
QUEUE = "bench_dramatiq_w3"
CONFIRM_ENV = "DRAMATIQ_CONFIRM"
CALLS, WARMUP = 1000, 200

broker = RabbitmqBroker(url=RABBIT_URL, confirm_delivery=os.environ.get(CONFIRM_ENV) == "1")
broker.add_middleware(Results(backend=RedisBackend(url=REDIS_URL)))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, queue_name=QUEUE)
def noop() -> None:
    """Does nothing: the round trip is all framework and server."""


def flush_results() -> None:
    subprocess.run(["redis-cli", "-n", REDIS_URL.rsplit("/", 1)[1], "flushdb"],
                   check=True, capture_output=True)


def round_trips() -> list[float]:
    """Start the worker and time the calls, both with this process's confirm setting."""
    root = Path(__file__).resolve().parent.parent
    worker = subprocess.Popen([sys.executable, "-m", "dramatiq", "bench.dramatiq_w3",
                               "-p", "2", "-t", "1"], cwd=root, env=dict(os.environ),
                              stderr=subprocess.DEVNULL)
    try:
        noop.send().get_result(block=True, timeout=60_000)  # the worker is up
        samples = []
        for index in range(WARMUP + CALLS):
            started = time.perf_counter()
            noop.send().get_result(block=True, timeout=10_000)
            if index >= WARMUP:
                samples.append((time.perf_counter() - started) * 1000)
        return samples
    finally:
        worker.terminate()
        worker.wait(30)


def run_one() -> None:
    flush_results()
    try:
        samples = sorted(round_trips())
    finally:
        flush_results()
        for name in (QUEUE, f"{QUEUE}.DQ", f"{QUEUE}.XQ"):  # with its delay and dead queues
            broker.channel.queue_delete(name)
    print(f"Dramatiq {dramatiq.__version__}, confirm_delivery={broker.confirm_delivery}: "
          f"W3 p50 {statistics.median(samples):.2f} ms, "
          f"p99 {samples[len(samples) * 99 // 100]:.2f} ms", flush=True)


def main() -> None:
    if sys.argv[1:] == ["--one"]:
        run_one()
        return
    for confirm in ("0", "1"):  # each in a process of its own: the broker reads it once
        subprocess.run([sys.executable, "-m", "bench.dramatiq_w3", "--one"], check=True,
                       env=dict(os.environ, **{CONFIRM_ENV: confirm}))


if __name__ == "__main__":
    main()
