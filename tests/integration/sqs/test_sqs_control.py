"""Inspect, control and events on real worker processes with an SQS broker.

SQS has no broadcast log, so requests, replies and events travel on the result
backend's server (here its SQLite file: ``App.bus`` falls back to
``ResultBackend.bus``), while the tasks themselves go through SQS.
"""

from __future__ import annotations

import control_cases
from sqs_harness import SqsDeployment


def test_two_nodes_answer_inspect_and_obey_control(deployment: SqsDeployment) -> None:
    control_cases.two_nodes_answer_and_obey(deployment)


def test_task_events_reach_a_monitor(deployment: SqsDeployment) -> None:
    app = deployment.app
    stream = app.events.iter(timeout=30)  # subscribed before anything is sent
    worker = deployment.start_worker("-c", "1")
    worker.wait_ready()
    result = deployment.tasks.record.delay("evented")
    result.get(timeout=30)
    seen = []
    for event in stream:
        if event.get("uuid") == result.id:
            seen.append(event["type"])
            if event["type"] == "task-succeeded":
                break
    assert seen == ["task-received", "task-started", "task-succeeded"]
