"""``worker --metrics-port`` on the embedded SQLite broker (scenarios: metrics_cases)."""

from __future__ import annotations

import signal
import subprocess
import sys

import metrics_cases
from worker_harness import Deployment, wait_until


def test_counts_are_exact_across_recycled_processes(deployment: Deployment) -> None:
    metrics_cases.exact_counts_across_recycled_processes(deployment)


def test_queue_gauges_show_a_backlog(deployment: Deployment) -> None:
    metrics_cases.queue_gauges_show_a_backlog(deployment)


def test_not_ready_while_stopping(deployment: Deployment) -> None:
    metrics_cases.not_ready_while_stopping(deployment)


def test_the_exporter_serves_every_queue(deployment: Deployment) -> None:
    """``celeriac exporter``: the queues of the whole broker, the declared one included,
    read when scraped; the queue alerts it checks, firing; SIGTERM stops it cleanly."""
    for i in range(3):
        deployment.tasks.add.delay(i, i)
    deployment.tasks.add.apply_async((1, 1), queue="reports")
    port = metrics_cases.free_port()
    log = deployment.root / "exporter.log"
    with log.open("wb") as out:
        exporter = subprocess.Popen(
            [sys.executable, "-m", "celeriac", "-A", "ledger_app", "exporter",
             "--port", str(port), "--host", "127.0.0.1"],
            env=deployment.env(queue_alerts={"celeriac": {"max_length": 2}},
                               queue_alerts_interval=0.2),
            cwd=deployment.root, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: metrics_cases.value(port, "celeriac_queue_ready",
                                               queue="reports") == 1, 20, "the exporter")
        assert metrics_cases.value(port, "celeriac_queue_ready", queue="celeriac") == 3
        assert metrics_cases.value(port, "celeriac_broker_up") == 1
        assert metrics_cases.get(port, "/healthz")[0] == 200
        wait_until(lambda: metrics_cases.value(port, "celeriac_queue_alert_firing",
                                               queue="celeriac", metric="length") == 1,
                   10, "the queue alert as a metric")
        assert "ALERT queue 'celeriac' length 3 is above its max_length 2" in log.read_text()
        exporter.send_signal(signal.SIGTERM)
        assert exporter.wait(10) == 0, log.read_text()
    finally:
        exporter.kill()
        exporter.wait()


def test_a_solo_worker_serves_its_own_metrics(deployment: Deployment) -> None:
    metrics_cases.solo_worker_serves_its_own_metrics(deployment)


def test_a_metrics_port_in_use_is_one_line(deployment: Deployment) -> None:
    metrics_cases.a_port_in_use_is_one_line(deployment)


def test_the_exporter_serves_workers_and_outcomes_from_the_events(
        deployment: Deployment) -> None:
    """``celeriac exporter`` follows the events: the node is up while it sends heartbeats
    and down once it said goodbye; task outcomes are counted by name."""
    port = metrics_cases.free_port()
    log = deployment.root / "exporter.log"
    with log.open("wb") as out:
        exporter = subprocess.Popen(
            [sys.executable, "-m", "celeriac", "-A", "ledger_app", "exporter",
             "--port", str(port), "--host", "127.0.0.1"],
            env=deployment.env(), cwd=deployment.root, stdout=out, stderr=subprocess.STDOUT)
    worker = None
    try:
        wait_until(lambda: metrics_cases.value(port, "celeriac_workers_online") == 0, 20,
                   "the exporter, with no worker yet")
        worker = deployment.start_worker("-n", "exported@%h", "-c", "1").wait_ready()
        for i in range(5):
            deployment.tasks.add.delay(i, i)
        deployment.tasks.add.delay("a", 1)  # TypeError: failed

        def outcomes() -> tuple[float | None, float | None]:
            return (metrics_cases.value(port, "celeriac_cluster_tasks_total",
                                        task="ledger.add", outcome="succeeded"),
                    metrics_cases.value(port, "celeriac_cluster_tasks_total",
                                        task="ledger.add", outcome="failed"))

        wait_until(lambda: outcomes() == (5, 1), 20, "5 succeeded and 1 failed")
        samples = metrics_cases.samples(port)
        up = {dict(labels)["worker"]: v for (name, labels), v in samples.items()
              if name == "celeriac_worker_up"}
        assert list(up.values()) == [1]
        assert next(iter(up)).startswith("exported@")
        assert samples[("celeriac_workers_online", frozenset())] == 1
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        wait_until(lambda: metrics_cases.value(port, "celeriac_workers_online") == 0, 10,
                   "the node down after its worker-offline")
        exporter.send_signal(signal.SIGTERM)
        assert exporter.wait(10) == 0, log.read_text()
    finally:
        if worker is not None:
            worker.kill_all()
        exporter.kill()
        exporter.wait()
