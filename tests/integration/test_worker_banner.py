"""The worker says what it is about to do before it does it, as Celery's banner does."""

from __future__ import annotations

import socket

from worker_harness import Deployment


def test_the_worker_banner_names_node_stores_pool_queues_and_tasks(
        deployment: Deployment) -> None:
    # When a worker starts with a node name template
    worker = deployment.start_worker("-c", "2", "-n", "banner@%h").wait_ready(2)

    # Then its log says who it is, where its stores are (the SQLite path absolute), how
    # it runs, what it consumes and which tasks it knows, then that each process is ready
    log = worker.log()
    assert f"worker banner@{socket.gethostname()}" in log
    assert f"broker:   sqlite:///{deployment.root}" in log
    assert "pool:     prefork, 2 process(es)" in log
    assert "queues:   celeriac" in log
    assert "    . ledger.sleepy" in log
    assert log.count(" ready: consuming ") == 2
