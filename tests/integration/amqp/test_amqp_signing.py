"""Signed and encrypted messages on RabbitMQ (``signing_cases``), in this test's own
vhost: refusals, rotation, re-signed retries, a payload unreadable in the queue; the
nonces are kept in the result backend's SQLite file."""

from __future__ import annotations

from rabbit_harness import RabbitDeployment
from signing_cases import check_signing, worker_settings


def test_signed_worker_refuses_forgeries_and_runs_signed_and_encrypted_tasks(
        deployment: RabbitDeployment) -> None:
    deployment.start_worker("-c", "2", **worker_settings()).wait_ready()
    check_signing(deployment)
