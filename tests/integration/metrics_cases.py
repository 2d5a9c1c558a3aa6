"""``worker --metrics-port`` scenarios, run on every broker (SQLite, Redis, RabbitMQ).

Each takes a ``Deployment`` of ``worker_harness`` (or its Redis/RabbitMQ variant), starts
real worker processes with ``--metrics-port`` on a free port, and reads ``/metrics``,
``/healthz`` and ``/readyz`` over HTTP, polling against a deadline: counts reach the node
about once a second (``monitor.tally``).
"""

from __future__ import annotations

import signal
import socket
import urllib.error
import urllib.request
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families
from worker_harness import QUEUE, Deployment, WorkerProcess, wait_until

COUNT_TIMEOUT = 30.0


def free_port() -> int:
    """A port nothing listens on now (the CLI takes no port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    """(HTTP status, body); (0, "") while nothing listens yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


def samples(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, text = get(port, "/metrics")
    if status != 200:
        return {}
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def task_counts(port: int) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for (name, labels), value in samples(port).items():
        if name == "celeriac_tasks_total":
            label = dict(labels)
            counts[(label["task"], label["outcome"])] = int(value)
    return counts


def value(port: int, name: str, **labels: str) -> float | None:
    return samples(port).get((name, frozenset(labels.items())))


def start(world: Deployment, *args: str, **settings: object) -> tuple[WorkerProcess, int]:
    port = free_port()
    worker = world.start_worker("-c", "2", "--metrics-port", str(port),
                                "--metrics-host", "127.0.0.1", *args, **settings)
    return worker, port


def stop(worker: WorkerProcess) -> None:
    """A warm shutdown, which also removes the node's counts directory (a SIGKILL, the
    harness's cleanup, would leave it behind in the temporary directory)."""
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def exact_counts_across_recycled_processes(world: Deployment) -> None:
    """Counts by name and outcome are exact over two processes replaced every 5 tasks."""
    tasks = world.tasks
    for i in range(20):
        tasks.add.delay(i, i)
    for _ in range(4):
        tasks.add.delay("a", 1)  # TypeError: failed
    for i in range(2):
        tasks.flaky.delay(f"f{i}", 1)  # retried once, then succeeded
    for _ in range(3):
        world.app.send_task("metrics.missing")  # no such task: dead-lettered (rejected)
    for i in range(2):
        tasks.add.apply_async((i, i), expires=0.05)  # expired before any worker runs it
    expected = Counter({("ledger.add", "succeeded"): 20, ("ledger.add", "failed"): 4,
                        ("ledger.flaky", "retried"): 2, ("ledger.flaky", "succeeded"): 2,
                        ("metrics.missing", "rejected"): 3, ("ledger.add", "revoked"): 2})
    worker, port = start(world, "--max-tasks-per-child", "5")
    try:
        wait_until(lambda: task_counts(port) == expected, COUNT_TIMEOUT,
                   f"exact counts {dict(expected)}")
    except AssertionError as exc:
        # A task run twice (its lease lost under load) is counted twice, rightly: say so.
        runs = Counter(entry.task for entry in world.ledger.entries())
        raise AssertionError(f"{exc}; /metrics shows {dict(task_counts(port))}; the ledger "
                             f"shows these executions: {dict(runs)}") from None
    assert worker.log().count("recycled after") >= 3  # 33 tasks, 5 per process
    # Nothing is counted twice once the replaced processes' files are folded in.
    assert task_counts(port) == expected
    assert value(port, "celeriac_task_runtime_seconds_count", task="ledger.add") == 24
    assert value(port, "celeriac_worker_processes") == 2
    assert get(port, "/healthz")[0] == 200
    stop(worker)


def queue_gauges_show_a_backlog(world: Deployment, amqp: bool = False) -> None:
    """Two busy processes with prefetch 1: what is sent behind them is ready, theirs in
    flight, and both show as running; the oldest ready message's age grows. (RabbitMQ
    reports neither unacked messages nor the age of its head over AMQP: another process's
    in-flight messages are not seen there, and there is no age.)"""
    worker, port = start(world, "--prefetch-multiplier", "1")
    worker.wait_ready(2)
    wait_until(lambda: get(port, "/readyz")[0] == 200, 10, "/readyz 200")
    for i in range(2):
        world.tasks.sleepy.delay(f"busy{i}", 3.0)
    world.ledger.wait_for_count(2)
    for i in range(3):
        world.tasks.add.delay(i, i)
    world.tasks.add.apply_async((0, 0), countdown=300)
    wait_until(lambda: (value(port, "celeriac_queue_ready", queue=QUEUE) == 3
                        and value(port, "celeriac_queue_in_flight", queue=QUEUE)
                        == (0 if amqp else 2)
                        and value(port, "celeriac_queue_scheduled", queue=QUEUE) == 1
                        and value(port, "celeriac_tasks_running") == 2),
               10, "the backlog in the queue gauges")
    assert value(port, "celeriac_broker_up") == 1
    age = value(port, "celeriac_queue_oldest_age_seconds", queue=QUEUE)
    if amqp:
        assert age is None
    else:
        assert age is not None
        assert age > 0
    # Drained: the ready backlog runs once the sleeps end.
    wait_until(lambda: task_counts(port)[("ledger.add", "succeeded")] == 3, COUNT_TIMEOUT,
               "the backlog drained")
    wait_until(lambda: value(port, "celeriac_queue_ready", queue=QUEUE) == 0, 10,
               "an empty queue")
    stop(worker)


def not_ready_while_stopping(world: Deployment) -> None:
    """/readyz 200 while consuming, 503 during a warm shutdown; /healthz stays 200."""
    worker, port = start(world)
    worker.wait_ready(2)
    wait_until(lambda: get(port, "/readyz") == (200, "ready: 2 process(es) consuming\n"),
               10, "/readyz 200")
    assert get(port, "/healthz") == (200, "live: 2 process(es)\n")
    world.tasks.sleepy.delay("long", 4.0)
    world.ledger.wait_for_count(1)
    worker.signal(signal.SIGTERM)
    _, body = wait_until(lambda: (r := get(port, "/readyz"))[0] == 503 and r, 10,
                         "/readyz 503 during the warm shutdown")
    assert "not consuming" in body
    assert get(port, "/healthz")[0] == 200
    assert worker.wait(30) == 0


def not_ready_without_broker(world: Deployment, closed_broker_url: str) -> None:
    """A broker that cannot be reached: /readyz 503 with the reason, /healthz 200 (a
    restart would not help), ``celeriac_broker_up`` 0."""
    worker, port = start(world, broker_url=closed_broker_url)
    status, body = wait_until(lambda: (r := get(port, "/readyz"))[0] and r, 20,
                              "the metrics endpoint")
    assert status == 503, body
    assert "not consuming" in body
    assert get(port, "/healthz")[0] == 200
    assert value(port, "celeriac_broker_up") == 0
    assert value(port, "celeriac_worker_ready") == 0
    assert worker.running
    stop(worker)


def solo_worker_serves_its_own_metrics(world: Deployment) -> None:
    """``-P solo``: the one process is its node and serves the endpoint itself."""
    port = free_port()
    worker = world.start_worker("-P", "solo", "--metrics-port", str(port),
                                "--metrics-host", "127.0.0.1")
    worker.wait_ready(1)
    for i in range(5):
        world.tasks.add.delay(i, i)
    world.tasks.add.delay("a", 1)
    expected = Counter({("ledger.add", "succeeded"): 5, ("ledger.add", "failed"): 1})
    wait_until(lambda: task_counts(port) == expected, COUNT_TIMEOUT, f"counts {expected}")
    assert get(port, "/readyz") == (200, "ready: 1 process(es) consuming\n")
    assert value(port, "celeriac_worker_processes") == 1
    stop(worker)


def a_port_in_use_is_one_line(world: Deployment) -> None:
    """The metrics port is taken: the worker says so in one line and exits 2 (a usage
    error), before starting any process."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = world.start_worker("-c", "2", "--metrics-port", str(port),
                                    "--metrics-host", "127.0.0.1")
        assert worker.wait(30) == 2
    assert f"Error: cannot serve metrics on 127.0.0.1:{port}: Address already in use" \
        in worker.log()
    assert "starting 2 worker process(es)" not in worker.log()
