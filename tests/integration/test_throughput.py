"""Many producers, two workers, 20,000 tasks: every one executed exactly once."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

from worker_harness import APPS_DIR, Deployment

PRODUCERS = 4
PER_PRODUCER = 5_000
TOTAL = PRODUCERS * PER_PRODUCER


def test_20000_tasks_from_4_producers_are_each_executed_exactly_once(
    deployment: Deployment,
) -> None:
    # Given two workers of one process each, draining
    workers = [deployment.start_worker("-c", "1") for _ in range(2)]
    for worker in workers:
        worker.wait_ready()

    # When 4 producer processes send 5,000 tasks each, one delay() at a time
    producers = [
        subprocess.Popen([sys.executable, str(APPS_DIR / "producer.py"), f"p{k}",
                          str(PER_PRODUCER)], env=deployment.env(), cwd=deployment.root,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for k in range(PRODUCERS)
    ]
    outputs = [producer.communicate(timeout=90)[0].decode() for producer in producers]
    assert [p.returncode for p in producers] == [0] * PRODUCERS, outputs
    assert all(f"sent {PER_PRODUCER}" in output for output in outputs), outputs

    # Then every task is executed, none lost, and none twice (no worker died)
    deployment.ledger.wait_for_count(TOTAL, timeout=90)
    deployment.wait_for_queue(ready=0, scheduled=0, in_flight=0, timeout=30)
    entries = deployment.ledger.entries()
    executions = Counter(entry.tag for entry in entries)
    expected = {f"p{k}-{n}" for k in range(PRODUCERS) for n in range(PER_PRODUCER)}
    assert set(executions) == expected
    assert {tag: n for tag, n in executions.items() if n > 1} == {}
    assert deployment.probe.dead_letters() == []
    # And both workers took part, and the results are stored
    assert len({entry.pid for entry in entries}) == 2
    for entry in entries[:: TOTAL // 50]:
        assert deployment.app.AsyncResult(entry.id).get(timeout=10) == entry.tag
    assert all(worker.running for worker in workers)

