"""Revoke with a RabbitMQ broker: revocations live in the result backend's store.

With SQLite results (the deployments' default) a revoke sent before any worker runs is
honoured; with rpc:// results there is no server-side store, and revoking says so.
"""

from __future__ import annotations

import pytest
from rabbit_harness import Deploy, RabbitDeployment

from celeriac import ConfigurationError, TaskRevokedError, states


def test_a_revoke_sent_before_a_worker_starts_is_honoured(
    deployment: RabbitDeployment,
) -> None:
    # Given tasks queued on RabbitMQ while no worker runs, half of them revoked
    sent = [deployment.tasks.record.delay(f"task-{n}") for n in range(4)]
    deployment.app.control.revoke([sent[0].id, sent[2].id])

    # When a worker starts
    deployment.start_worker("-c", "2").wait_ready(2)

    # Then the revoked ones are REVOKED without running, and the others run
    assert [sent[1].get(timeout=20), sent[3].get(timeout=20)] == ["task-1", "task-3"]
    for result in (sent[0], sent[2]):
        with pytest.raises(TaskRevokedError, match="revoked before it ran"):
            result.get(timeout=20)
        assert result.state == states.REVOKED
    deployment.wait_for_queue()
    assert sorted(deployment.ledger.tags()) == ["task-1", "task-3"]


def test_revoking_with_rpc_results_is_refused(deploy: Deploy) -> None:
    world = deploy(backend="rpc://")
    with pytest.raises(ConfigurationError, match="keeps no state on a server"):
        world.app.control.revoke("any-id")
